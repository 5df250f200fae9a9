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


def test_two_workers_decode_at_once_as_they_do_one_at_a_time(audio_dir: Path, settings) -> None:
    """WORKERS=2: two threads call one engine at once (CTranslate2's num_workers), each with its own
    encoder window (a thread-local), and get what each gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    from transcribe.conf import transcribe_settings
    from transcribe.engines.faster import FasterWhisperEngine
    from transcribe.engines.resolver import resolve_model

    settings.TRANSCRIBE = {**settings.TRANSCRIBE, "WORKERS": 2}
    path = resolve_model("tiny.en", cache=transcribe_settings.model_cache)
    engine = FasterWhisperEngine(path, cpu_threads=1)
    assert engine.model.model.num_workers == 2
    jfk = load_wav(audio_dir / "jfk.wav")
    other = load_wav(audio_dir / "librispeech_2412-153948-0000.wav")
    jobs = [(jfk[: 16000 * 5], DecodeOptions(encoder_seconds=10.0)), (other, DecodeOptions(beam_size=5))] * 2
    alone = [engine.transcribe_numpy(audio, "en", options) for audio, options in jobs]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda job: engine.transcribe_numpy(job[0], "en", job[1]), jobs))
    assert [r.text for r in together] == [r.text for r in alone]
    assert [[w.start for w in r.words] for r in together] == [[w.start for w in r.words] for r in alone]
    assert alone[0].text != alone[1].text and all(r.text for r in alone)
