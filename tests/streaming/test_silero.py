"""``transcribe.streaming.silero``: the numpy Silero VAD against onnxruntime on real speech, its
reader of ONNX weights, and the fallback to onnxruntime for a model it does not know."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import load_wav, run_python
from transcribe.streaming import silero
from transcribe.streaming.vad import CONTEXT, FRAME


def frames_of(audio: np.ndarray) -> np.ndarray:
    """Silero's input rows: each 512-sample frame after the 64 samples before it."""
    frames = audio[: len(audio) // FRAME * FRAME].reshape(-1, FRAME)
    contexts = np.vstack((np.zeros((1, CONTEXT), np.float32), frames[:-1, -CONTEXT:]))
    return np.concatenate((contexts, frames), axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def speech(audio_dir: Path) -> np.ndarray:
    """LJ Speech's 53 s reading and the noise clip: speech, pauses and non-speech."""
    audio = [load_wav(audio_dir / name) for name in ("ljspeech_LJ001-0001_to_0008.wav", "silence_noise.wav")]
    return frames_of(np.concatenate(audio))


def test_numpy_model_gives_onnxruntimes_probabilities_and_state(speech):
    numpy_model, onnx_model = silero.load_model("numpy"), silero.load_model("onnxruntime")
    assert isinstance(numpy_model, silero.NumpySilero) and isinstance(onnx_model, silero.OnnxSilero)
    state = np.zeros((1, 1, silero.HIDDEN), np.float32)
    h, c = state, state
    hx, cx = state, state
    probs = []
    for batch in np.array_split(speech, 200):  # the state carried over as in streaming
        got, h, c = numpy_model(batch, h, c)
        expected, hx, cx = onnx_model(batch, hx, cx)
        assert got.dtype == np.float32 and got.shape == (len(batch),)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        probs.append(got)
    np.testing.assert_allclose(h, hx, atol=1e-4)
    assert h.shape == c.shape == (1, 1, silero.HIDDEN)
    every = np.concatenate(probs)
    assert every.min() >= 0.0 and every.max() <= 1.0
    assert (every > 0.9).mean() > 0.3 and (every < 0.1).mean() > 0.3  # speech and non-speech both met


def test_one_frame_at_a_time_equals_a_batch(speech):
    model = silero.load_model("numpy")
    state = np.zeros((1, 1, silero.HIDDEN), np.float32)
    batch, _, _ = model(speech[:40], state, state)
    h, c, one_by_one = state, state, []
    for row in speech[:40]:
        p, h, c = model(row[None, :], h, c)
        one_by_one.append(p[0])
    np.testing.assert_allclose(one_by_one, batch, atol=1e-6)


def test_reader_finds_the_weights_and_checks_their_shapes():
    data = silero.model_path().read_bytes()
    weights = silero.read_initializers(data, silero.WEIGHTS)
    assert {name: w.shape for name, w in weights.items()} == silero.WEIGHTS
    assert all(w.dtype == np.float32 for w in weights.values())
    assert sum(w.size for w in weights.values()) > 300_000
    with pytest.raises(ValueError, match="encoder.conv_layers.0.bias is \\(128,\\), expected \\(64,\\)"):
        silero.read_initializers(data, {"encoder.conv_layers.0.bias": (64,)})
    with pytest.raises(ValueError, match="weight no.such.weight is missing"):
        silero.read_initializers(data, {"no.such.weight": (1,)})


@pytest.mark.parametrize(
    "data", [b"", b"\x07garbage bytes that are no model", b"\x3a\xff\xff\xff\x0f"], ids=repr
)
def test_reader_rejects_what_is_not_a_model(data):
    with pytest.raises(ValueError):
        silero.read_initializers(data, silero.WEIGHTS)


def test_an_unknown_model_falls_back_to_onnxruntime(monkeypatch, caplog, speech):
    monkeypatch.setitem(silero.WEIGHTS, "encoder.conv_layers.0.bias", (7,))  # not what the file holds
    with caplog.at_level(logging.WARNING, logger="transcribe.streaming.silero"):
        model = silero.load_model.__wrapped__("numpy")  # past the cache
    assert isinstance(model, silero.OnnxSilero)
    assert "runs on onnxruntime" in caplog.text and "encoder.conv_layers.0.bias is (128,)" in caplog.text
    state = np.zeros((1, 1, silero.HIDDEN), np.float32)
    probs, _, _ = model(speech[:10], state, state)
    assert probs.shape == (10,)


SERVER_IMPORTS = """
import json, os, sys
import numpy as np
sys.path.insert(0, os.getcwd())
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
import django
django.setup()
from transcribe.streaming.vad import StreamingVAD
from tests.conftest import load_wav
probs = StreamingVAD().process(load_wav(sys.argv[1]))
print(json.dumps({"onnxruntime": "onnxruntime" in sys.modules, "faster_whisper": "faster_whisper" in sys.modules,
                  "speech_frames": int((probs > 0.5).sum())}))
"""


def test_the_vad_loads_neither_onnxruntime_nor_faster_whisper(audio_dir):
    result = run_python(SERVER_IMPORTS, str(audio_dir / "jfk.wav"))
    assert result == {"onnxruntime": False, "faster_whisper": False, "speech_frames": result["speech_frames"]}
    assert result["speech_frames"] > 150  # JFK speaks for most of his 11 s (343 frames)
