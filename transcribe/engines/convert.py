"""Convert CTranslate2 Whisper weights (``model.bin``) into an openai-whisper checkpoint.

The packaged and downloadable models are CTranslate2 folders (what faster-whisper runs). The
openai-whisper engine needs a PyTorch checkpoint instead; rather than downloading a second copy of the
same weights, this module reads ``model.bin`` with a small numpy reader (no ``ctranslate2`` import)
and renames the tensors back to openai-whisper's names, undoing ctranslate2's own Whisper converter:

* self-attention ``linear_0`` is q;k;v fused along the output axis (k has no bias in openai-whisper,
  ctranslate2 stored zeros for it), ``linear_1`` is the output projection;
* cross-attention ``linear_0`` is q, ``linear_1`` is k;v fused, ``linear_2`` is the output;
* ffn ``linear_0`` / ``linear_1`` are ``mlp.0`` / ``mlp.2``; layer norm gamma / beta are weight / bias;
* ``position_encodings/encodings`` are the positional embeddings; the decoder output projection is
  an alias of the token embedding (openai-whisper ties them, so it has no key of its own).

Only float16 and float32 files convert: quantized files (int8, int16) lost precision that cannot be
recovered, and bfloat16 has no numpy type.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..exceptions import EngineError

logger = logging.getLogger(__name__)

# ctranslate2's DataType ids as written in model.bin.
DTYPES: dict[int, tuple[str, np.dtype[Any]]] = {
    0: ("float32", np.dtype("<f4")),
    1: ("int8", np.dtype("i1")),
    2: ("int16", np.dtype("<i2")),
    3: ("int32", np.dtype("<i4")),
    4: ("float16", np.dtype("<f2")),
    5: ("bfloat16", np.dtype("<u2")),  # read as raw 16-bit words; only used to report the dtype
}
FLOAT_DTYPES = {"float32", "float16"}
# The layout above is binary version 6, what every ctranslate2 with Whisper support (3.x, 4.x) writes.
SUPPORTED_VERSIONS = (6,)
WHISPER_HEAD_DIM = 64  # every Whisper size uses 64-dim heads; fallback when num_heads is not stored


@dataclass(frozen=True, slots=True)
class Ct2Variable:
    """One variable of model.bin: its dtype name (ctranslate2's) and its data."""

    dtype: str
    array: np.ndarray


@dataclass(frozen=True, slots=True)
class Ct2Model:
    """The whole of a model.bin: spec name and revision, variables by name, aliases to other variables."""

    spec: str
    revision: int
    variables: dict[str, Ct2Variable]
    aliases: dict[str, str]


def read_ct2_model(path: Path) -> Ct2Model:
    """Read every variable and alias of a CTranslate2 ``model.bin``.

    Raises ``EngineError`` on anything that is not a complete model.bin of a supported version.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            return _read(f, size)
    except EngineError as exc:
        raise EngineError(f"{path}: {exc}") from exc
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
        raise EngineError(f"{path} is not a readable CTranslate2 model.bin ({exc})") from exc


def _read(f: IO[bytes], size: int) -> Ct2Model:
    def take(n: int) -> bytes:
        data = f.read(n)
        if len(data) != n:
            raise EngineError(f"model.bin is truncated (wanted {n} bytes at offset {f.tell() - len(data)})")
        return data

    def u8() -> int:
        return int(take(1)[0])

    def u16() -> int:
        return int(struct.unpack("<H", take(2))[0])

    def u32() -> int:
        return int(struct.unpack("<I", take(4))[0])

    def string() -> str:
        # u16 length including the terminating NUL, then the bytes.
        n = u16()
        return take(n).rstrip(b"\0").decode("utf-8")

    version = u32()
    if version not in SUPPORTED_VERSIONS:
        raise EngineError(f"model.bin has binary version {version}; only version 6 can be read")
    spec, revision = string(), u32()
    variables: dict[str, Ct2Variable] = {}
    for _ in range(u32()):
        name = string()
        shape = tuple(u32() for _ in range(u8()))
        type_id, nbytes = u8(), u32()
        if type_id not in DTYPES:
            raise EngineError(f"model.bin variable {name} has unknown dtype id {type_id}")
        dtype_name, dtype = DTYPES[type_id]
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize != nbytes:
            raise EngineError(
                f"model.bin variable {name} has {nbytes} bytes for shape {shape} ({dtype_name})"
            )
        if nbytes > size - f.tell():
            raise EngineError(f"model.bin is truncated inside variable {name}")
        # np.fromfile reads straight into the array: no second copy of multi-GB models.
        array = np.fromfile(f, dtype=dtype, count=count).reshape(shape)
        variables[name] = Ct2Variable(dtype_name, array)
    aliases = {}
    for _ in range(u32()):
        alias = string()
        aliases[alias] = string()
    if f.read(1):
        raise EngineError("model.bin has trailing bytes after its aliases")
    return Ct2Model(spec, revision, variables, aliases)


class _Mapper:
    """Fetches CTranslate2 variables by name, checking they are float tensors."""

    def __init__(self, model: Ct2Model, source: Path) -> None:
        self.model = model
        self.source = source

    def get(self, name: str) -> np.ndarray:
        name = self.model.aliases.get(name, name)
        try:
            var = self.model.variables[name]
        except KeyError:
            raise EngineError(
                f"{self.source} has no variable {name}: not a Whisper model ctranslate2 wrote"
            ) from None
        if var.dtype not in FLOAT_DTYPES:
            raise EngineError(
                f"{self.source} stores {name} as {var.dtype}: only float16/float32 CTranslate2 models can be "
                "converted to openai-whisper (quantized weights cannot be restored). Use a float16 model, "
                "e.g. one converted with `ct2-transformers-converter --quantization float16`."
            )
        return var.array

    def scalar(self, name: str, default: int) -> int:
        var = self.model.variables.get(name)
        if var is None or var.array.size != 1:
            return default
        return int(var.array.reshape(()))

    def count_layers(self, prefix: str) -> int:
        pattern = re.compile(rf"^{prefix}/layer_(\d+)/")
        indices = {int(m.group(1)) for name in self.model.variables if (m := pattern.match(name))}
        if not indices or indices != set(range(len(indices))):
            raise EngineError(f"{self.source} has no contiguous {prefix} layers: not a Whisper model")
        return len(indices)


def _split(array: np.ndarray, parts: int, name: str) -> list[np.ndarray]:
    if array.shape[0] % parts:
        raise EngineError(f"Cannot split {name} of shape {array.shape} into {parts} fused projections")
    return np.split(array, parts, axis=0)


def _linear(sd: dict[str, np.ndarray], m: _Mapper, src: str, dst: str) -> None:
    sd[f"{dst}.weight"] = m.get(f"{src}/weight")
    sd[f"{dst}.bias"] = m.get(f"{src}/bias")


def _layer_norm(sd: dict[str, np.ndarray], m: _Mapper, src: str, dst: str) -> None:
    sd[f"{dst}.weight"] = m.get(f"{src}/gamma")
    sd[f"{dst}.bias"] = m.get(f"{src}/beta")


def _self_attention(sd: dict[str, np.ndarray], m: _Mapper, src: str, dst: str) -> None:
    name = f"{src}/linear_0"
    q_w, k_w, v_w = _split(m.get(f"{name}/weight"), 3, name)
    q_b, k_b, v_b = _split(m.get(f"{name}/bias"), 3, name)
    if np.any(k_b):
        # openai-whisper's key projection has no bias, so a non-zero one would be silently lost.
        logger.warning("%s: dropping a non-zero key bias (openai-whisper's key has none)", name)
    sd.update({f"{dst}.query.weight": q_w, f"{dst}.query.bias": q_b, f"{dst}.key.weight": k_w})
    sd.update({f"{dst}.value.weight": v_w, f"{dst}.value.bias": v_b})
    _linear(sd, m, f"{src}/linear_1", f"{dst}.out")
    _layer_norm(sd, m, f"{src}/layer_norm", f"{dst}_ln")


def _cross_attention(sd: dict[str, np.ndarray], m: _Mapper, src: str, dst: str) -> None:
    _linear(sd, m, f"{src}/linear_0", f"{dst}.query")
    name = f"{src}/linear_1"
    k_w, v_w = _split(m.get(f"{name}/weight"), 2, name)
    k_b, v_b = _split(m.get(f"{name}/bias"), 2, name)
    if np.any(k_b):
        logger.warning("%s: dropping a non-zero key bias (openai-whisper's key has none)", name)
    sd.update({f"{dst}.key.weight": k_w, f"{dst}.value.weight": v_w, f"{dst}.value.bias": v_b})
    _linear(sd, m, f"{src}/linear_2", f"{dst}.out")
    _layer_norm(sd, m, f"{src}/layer_norm", f"{dst}_ln")


def _ffn(sd: dict[str, np.ndarray], m: _Mapper, src: str, dst: str) -> None:
    _linear(sd, m, f"{src}/linear_0", f"{dst}.mlp.0")
    _linear(sd, m, f"{src}/linear_1", f"{dst}.mlp.2")
    _layer_norm(sd, m, f"{src}/layer_norm", f"{dst}.mlp_ln")


def ct2_to_state_dict(model: Ct2Model, source: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Map a read CTranslate2 Whisper model to openai-whisper's ``ModelDimensions`` (as a dict) and state dict."""
    if model.spec != "WhisperSpec":
        raise EngineError(f"{source} holds a {model.spec or 'unnamed'} model, not a Whisper model")
    m = _Mapper(model, source)
    n_audio_layer, n_text_layer = m.count_layers("encoder"), m.count_layers("decoder")
    conv1 = m.get("encoder/conv1/weight")
    audio_pos, text_pos = (
        m.get("encoder/position_encodings/encodings"),
        m.get("decoder/position_encodings/encodings"),
    )
    embeddings = m.get("decoder/embeddings/weight")
    n_audio_state, n_text_state = int(audio_pos.shape[1]), int(text_pos.shape[1])
    dims = {
        "n_mels": int(conv1.shape[1]),
        "n_audio_ctx": int(audio_pos.shape[0]),
        "n_audio_state": n_audio_state,
        "n_audio_head": m.scalar("encoder/num_heads", n_audio_state // WHISPER_HEAD_DIM),
        "n_audio_layer": n_audio_layer,
        "n_vocab": int(embeddings.shape[0]),
        "n_text_ctx": int(text_pos.shape[0]),
        "n_text_state": n_text_state,
        "n_text_head": m.scalar("decoder/num_heads", n_text_state // WHISPER_HEAD_DIM),
        "n_text_layer": n_text_layer,
    }

    sd: dict[str, np.ndarray] = {}
    _linear(sd, m, "encoder/conv1", "encoder.conv1")
    _linear(sd, m, "encoder/conv2", "encoder.conv2")
    sd["encoder.positional_embedding"] = audio_pos
    for i in range(n_audio_layer):
        src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        _self_attention(sd, m, f"{src}/self_attention", f"{dst}.attn")
        _ffn(sd, m, f"{src}/ffn", dst)
    _layer_norm(sd, m, "encoder/layer_norm", "encoder.ln_post")

    sd["decoder.token_embedding.weight"] = embeddings
    sd["decoder.positional_embedding"] = text_pos
    for i in range(n_text_layer):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        _self_attention(sd, m, f"{src}/self_attention", f"{dst}.attn")
        _cross_attention(sd, m, f"{src}/attention", f"{dst}.cross_attn")
        _ffn(sd, m, f"{src}/ffn", dst)
    _layer_norm(sd, m, "decoder/layer_norm", "decoder.ln")

    # openai-whisper computes logits with the token embedding; an untied projection cannot be kept.
    projection = model.aliases.get("decoder/projection/weight", "decoder/projection/weight")
    if (
        projection != "decoder/embeddings/weight"
        and projection in model.variables
        and not np.array_equal(model.variables[projection].array, embeddings)
    ):
        raise EngineError(
            f"{source} has an output projection not tied to the embeddings; openai-whisper cannot load it"
        )
    return dims, sd


def read_alignment_heads(ct2_dir: Path) -> list[list[int]] | None:
    """The ``[layer, head]`` pairs of config.json that word timestamps should align on, if any."""
    config = Path(ct2_dir) / "config.json"
    if not config.is_file():
        return None
    try:
        heads = json.loads(config.read_text()).get("alignment_heads")
        return [[int(layer), int(head)] for layer, head in heads] if heads else None
    except (ValueError, TypeError, AttributeError) as exc:
        logger.warning("Ignoring unreadable alignment_heads in %s: %s", config, exc)
        return None


def convert_ct2_to_openai(ct2_dir: Path, output: Path) -> Path:
    """Convert the CTranslate2 Whisper folder ``ct2_dir`` into the openai-whisper checkpoint ``output``.

    The checkpoint holds ``dims``, ``model_state_dict`` and ``alignment_heads`` (a list of
    ``[layer, head]`` or None); ``whisper.load_model(output)`` loads it. The file is written to a
    temporary name and renamed, so a crash or a concurrent conversion never leaves half a file.
    """
    import torch
    from whisper.model import ModelDimensions

    ct2_dir, output = Path(ct2_dir), Path(output)
    started = time.perf_counter()
    model = read_ct2_model(ct2_dir / "model.bin")
    dims_dict, arrays = ct2_to_state_dict(model, ct2_dir)
    dims = ModelDimensions(**dims_dict)
    heads = read_alignment_heads(ct2_dir)
    if heads is not None:
        bad = [h for h in heads if not (0 <= h[0] < dims.n_text_layer and 0 <= h[1] < dims.n_text_head)]
        if bad:
            raise EngineError(f"{ct2_dir}/config.json names alignment heads outside the model: {bad}")
    state_dict = {name: torch.from_numpy(array) for name, array in arrays.items()}
    checkpoint = {"dims": asdict(dims), "model_state_dict": state_dict, "alignment_heads": heads}

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, output)
    except OSError as exc:
        raise EngineError(f"Could not write the converted model to {output}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    logger.info(
        "Converted %s into openai-whisper checkpoint %s (%s) in %.1f s",
        ct2_dir,
        output,
        dims,
        time.perf_counter() - started,
    )
    return output
