"""Silero VAD (the v6 model faster-whisper ships) evaluated with numpy instead of onnxruntime.

The model is small (310k weights: an STFT as a convolution, four 1-D convolutions, one LSTM cell,
a linear read-out), but onnxruntime costs a server 23-36 MiB of resident memory to run it (its
library and a session; ``bench/concurrency.py --baseline VAD_RUNTIME=onnxruntime``).
Here the weights are read straight from the ``.onnx`` file (protobuf, of which only the
initializers are needed) and a call is a few matrix products, then one LSTM step per frame; it is
as fast as onnxruntime's call. ``tests/streaming/test_silero.py`` and ``test_vad.py`` check it
against onnxruntime, faster-whisper's own call included, on real speech.

``TRANSCRIBE["VAD_RUNTIME"] = "onnxruntime"`` runs the same file on onnxruntime instead (the
benchmarks' baseline), as does a file that does not hold the expected weights (a faster-whisper
release with another model), with a warning.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

Array = npt.NDArray[np.float32]
HIDDEN = 128
INPUT = 576  # samples per input row: 64 of context, then a 512-sample frame
# The STFT: 256-sample windows 128 apart over the input padded by 128 samples on each side
# (reflected). Silero keeps the last four of the five, which start at the input's first sample and
# end 64 samples past its last: only that much of the padding after it is ever read.
STFT_WINDOW = 256
STFT_HOP = 128
STFT_BINS = 129
STFT_STEPS = 4
READ_PAST_END = 64

# name -> shape of every weight the forward pass uses (``onnx::LSTM_*`` are the exporter's names
# for the LSTM's input weights, recurrent weights and biases, gates in ONNX order i, o, f, c).
WEIGHTS = {
    "encoder.feature_extractor.forward_basis_buffer": (2 * STFT_BINS, 1, STFT_WINDOW),
    "encoder.conv_layers.0.weight": (128, STFT_BINS, 3),
    "encoder.conv_layers.0.bias": (128,),
    "encoder.conv_layers.1.weight": (64, 128, 3),
    "encoder.conv_layers.1.bias": (64,),
    "encoder.conv_layers.2.weight": (64, 64, 3),
    "encoder.conv_layers.2.bias": (64,),
    "encoder.conv_layers.3.weight": (128, 64, 3),
    "encoder.conv_layers.3.bias": (128,),
    "onnx::LSTM_209": (1, 4 * HIDDEN, HIDDEN),
    "onnx::LSTM_210": (1, 4 * HIDDEN, HIDDEN),
    "onnx::LSTM_211": (1, 8 * HIDDEN),
    "decoder.conv1d.weight": (1, HIDDEN, 1),
    "decoder.conv1d.bias": (1,),
}
CONV_STRIDES = (1, 2, 2, 1)


class VadModel(Protocol):
    def __call__(self, frames: Array, h: Array, c: Array) -> tuple[Array, Array, Array]:
        """Speech probability of each row of ``frames`` (n, 576), and the LSTM state after them."""
        ...


def model_path() -> Path:
    """faster-whisper's copy of the model, found without importing faster-whisper (ctranslate2)."""
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("faster-whisper is not installed: it ships the Silero VAD model")
    return Path(next(iter(spec.submodule_search_locations))) / "assets" / "silero_vad_v6.onnx"


@functools.cache
def load_model(runtime: str = "numpy") -> VadModel:
    """The model on ``runtime`` (TRANSCRIBE["VAD_RUNTIME"]): "numpy", or "onnxruntime"."""
    if runtime == "numpy":
        path = model_path()
        try:
            return NumpySilero(read_initializers(path.read_bytes(), WEIGHTS))
        except ValueError as exc:
            logger.warning("Silero VAD runs on onnxruntime: %s is not the model expected: %s", path, exc)
    return OnnxSilero()


class NumpySilero:
    """Before its LSTM, Silero is linear maps and ReLUs on inputs of a fixed size (576 samples; then
    4 STFT steps of 129 bins; then 4, 2, 1 and 1 time steps through the convolutions), so each
    convolution is folded at load into one dense matrix: a call is the same six matrix products
    whatever the number of frames, and then one LSTM step per frame."""

    def __init__(self, weights: dict[str, Array]) -> None:
        basis = weights["encoder.feature_extractor.forward_basis_buffer"][:, 0, :]  # (258, 256)
        self.stft = np.ascontiguousarray(basis.T)  # real parts in columns 0-128, imaginary 129-257
        self.layers: list[tuple[Array, Array]] = []
        steps = STFT_STEPS
        for k, stride in enumerate(CONV_STRIDES):
            weight, bias = (
                weights[f"encoder.conv_layers.{k}.weight"],
                weights[f"encoder.conv_layers.{k}.bias"],
            )
            matrix, steps = _conv_matrix(weight, steps, stride)
            self.layers.append((matrix, np.tile(bias, steps)))
        self.w_input = np.ascontiguousarray(weights["onnx::LSTM_209"][0].T)  # (128, 512)
        self.w_state = np.ascontiguousarray(weights["onnx::LSTM_210"][0].T)
        bias = weights["onnx::LSTM_211"][0]
        self.lstm_bias = bias[: 4 * HIDDEN] + bias[4 * HIDDEN :]
        self.readout = weights["decoder.conv1d.weight"][0, :, 0]
        self.readout_bias = float(weights["decoder.conv1d.bias"][0])

    def __call__(self, frames: Array, h: Array, c: Array) -> tuple[Array, Array, Array]:
        gates_in = self._encode(frames) @ self.w_input + self.lstm_bias
        state, cell = h.reshape(HIDDEN), c.reshape(HIDDEN)
        outputs = np.empty((len(frames), HIDDEN), dtype=np.float32)
        for t in range(len(frames)):  # the LSTM: one step per frame, in order
            gates = gates_in[t] + state @ self.w_state
            i, o, f = _sigmoid(gates[: 3 * HIDDEN]).reshape(3, HIDDEN)
            cell = f * cell + i * np.tanh(gates[3 * HIDDEN :])
            state = o * np.tanh(cell)
            outputs[t] = state
        logits = np.maximum(outputs, 0) @ self.readout + self.readout_bias
        return _sigmoid(logits), state.reshape(1, 1, HIDDEN), cell.reshape(1, 1, HIDDEN)

    def _encode(self, frames: Array) -> Array:
        """(n, 576) samples to the (n, 128) features the LSTM reads."""
        # "reflect" padding (numpy's and ONNX's): the samples before the last, in reverse order.
        reflection = frames[:, -2 : -2 - READ_PAST_END : -1]
        padded = np.concatenate((frames, reflection), axis=1)
        # The (n, 4, 256) windows as a strided view, built in C: sliding_window_view's Python took
        # a quarter of a call after the pause between chunks (bench/chunk_overhead.py).
        windows = np.ndarray(
            (len(frames), STFT_STEPS, STFT_WINDOW),
            np.float32,
            padded,
            strides=(padded.strides[0], STFT_HOP * padded.itemsize, padded.itemsize),
        )
        spectrum = windows @ self.stft
        real, imaginary = spectrum[..., :STFT_BINS], spectrum[..., STFT_BINS:]
        x = np.sqrt(real * real + imaginary * imaginary).reshape(len(frames), -1)  # (n, steps * bins)
        for matrix, bias in self.layers:
            x = np.maximum(x @ matrix + bias, 0)
        return x


def _conv_matrix(weight: Array, steps: int, stride: int) -> tuple[Array, int]:
    """A width-3, padding-1 convolution over ``steps`` time steps as one (steps * in, out_steps * out)
    matrix, inputs and outputs laid out time step by time step; and the number of output steps."""
    out_channels, in_channels, width = weight.shape
    out_steps = (steps - 1) // stride + 1
    matrix = np.zeros((steps, in_channels, out_steps, out_channels))
    for t in range(out_steps):
        for k in range(width):
            source = t * stride + k - width // 2
            if 0 <= source < steps:
                matrix[source, :, t, :] += weight[:, :, k].T
    return matrix.reshape(steps * in_channels, -1).astype(np.float32), out_steps


class OnnxSilero:
    """faster-whisper's own onnxruntime session for the model (the same file, its options)."""

    def __init__(self) -> None:
        from faster_whisper.vad import get_vad_model

        self.session = get_vad_model().session

    def __call__(self, frames: Array, h: Array, c: Array) -> tuple[Array, Array, Array]:
        probs, h, c = self.session.run(None, {"input": frames, "h": h, "c": c})
        return np.asarray(probs, dtype=np.float32).reshape(-1), h, c


def _sigmoid(x: Array) -> Array:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32, copy=False)


# -- reading the weights from the .onnx file ------------------------------------------------------
# An ONNX model is a protobuf message: ModelProto.graph (field 7) is a GraphProto whose initializer
# (field 5) entries are TensorProtos with dims (1), data_type (2), name (8) and raw_data (9).

FLOAT = 1  # TensorProto.DataType.FLOAT


def read_initializers(data: bytes, wanted: dict[str, tuple[int, ...]]) -> dict[str, Array]:
    """The float32 initializers named in ``wanted``, checked against their shapes (ValueError)."""
    found: dict[str, Array] = {}
    try:
        graph = next(value for field, value in _fields(data) if field == 7)
        for field, value in _fields(graph):
            if field == 5:
                name, tensor = _tensor(value)
                if name in wanted:
                    found[name] = tensor
    except (StopIteration, IndexError, TypeError) as exc:
        raise ValueError(f"not an ONNX model this reader understands ({exc!r})") from exc
    for name, shape in wanted.items():
        if name not in found or found[name].shape != shape:
            got = found[name].shape if name in found else "missing"
            raise ValueError(f"weight {name} is {got}, expected {shape}")
    return found


def _tensor(message: bytes) -> tuple[str, Array]:
    dims: list[int] = []
    name, data_type, raw = "", 0, b""
    for field, value in _fields(message):
        if field == 1:
            dims.extend(_varints(value) if isinstance(value, bytes) else [value])
        elif field == 2:
            data_type = int(value)
        elif field == 8:
            name = bytes(value).decode()
        elif field == 9:
            raw = bytes(value)
    if data_type != FLOAT or len(raw) != 4 * int(np.prod(dims)):
        return name, np.zeros(0, dtype=np.float32)  # not one of the weights (constants, shapes)
    return name, np.frombuffer(raw, dtype="<f4").reshape(dims).astype(np.float32)


def _fields(message: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: an int for varints, bytes otherwise."""
    view = memoryview(message)
    i = 0
    while i < len(view):
        key, i = _varint(view, i)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, i = _varint(view, i)
            yield field, value
        elif wire_type == 2:
            length, i = _varint(view, i)
            yield field, bytes(view[i : i + length])
            i += length
        elif wire_type in (1, 5):  # fixed 64 / 32 bits
            size = 8 if wire_type == 1 else 4
            yield field, bytes(view[i : i + size])
            i += size
        else:
            raise TypeError(f"protobuf wire type {wire_type} at byte {i}")


def _varint(view: memoryview, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = view[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def _varints(packed: bytes) -> list[int]:
    view, i, out = memoryview(packed), 0, []
    while i < len(view):
        value, i = _varint(view, i)
        out.append(value)
    return out
