"""The default engine on the packaged tiny.en: shortened encoder windows for partials."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import load_wav, wer
from transcribe.engines import DecodeOptions, get_engine
from transcribe.engines.faster import encoder_frames


def test_encoder_frames() -> None:
    assert encoder_frames(None, 5.0) is None  # Whisper's full window
    assert encoder_frames(10.0, 2.0) == 1000
    assert encoder_frames(10.0, 12.3) == 1330  # at least the audio plus a second
    assert encoder_frames(10.0, 29.5) is None
    assert all(encoder_frames(10.0, s / 7) % 2 == 0 for s in range(200))  # stride-2 convolution


def test_short_encoder_window_keeps_the_words(audio_dir: Path) -> None:
    engine = get_engine()
    audio = load_wav(audio_dir / "jfk.wav")[: 16000 * 5]
    full = engine.transcribe_numpy(audio, "en", DecodeOptions())
    short = engine.transcribe_numpy(audio, "en", DecodeOptions(encoder_seconds=10.0))
    assert full.text and wer(full.text, short.text) == 0.0  # measured identical on this clip
    assert short.words and short.words[-1].end <= 5.5
