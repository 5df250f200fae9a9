"""The default engine on the packaged tiny.en: shortened encoder windows, skipped silent windows."""

from __future__ import annotations

from dataclasses import replace
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


class GenerateCounter:
    """CTranslate2's Whisper with its ``generate`` calls counted (one per window decoded)."""

    def __init__(self, model) -> None:
        self.model, self.calls = model, 0

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def generate(self, *args, **kwargs):
        self.calls += 1
        return self.model.generate(*args, **kwargs)


def test_a_window_after_the_last_word_is_decoded_only_while_speech_is_left(audio_dir: Path) -> None:
    """faster-whisper decodes the audio after a window's last word as one more window; with
    ``speech_until`` the engine skips it when less than SPEECH_LEFT of speech remains."""
    from transcribe.engines.faster import SPEECH_LEFT

    engine = get_engine()
    # 4 s of LibriSpeech 1272 and its trailing padding: this window's words end before the audio.
    audio = load_wav(audio_dir / "librispeech_1272-128104-0000.wav")[4800 : 4800 + 16000 * 4]
    options = DecodeOptions(beam_size=5, encoder_seconds=15.0, max_new_tokens=44)
    counter = GenerateCounter(engine.model.model)
    engine.model.model = counter
    try:

        def decode(speech_until: float | None):
            counter.calls = 0
            result = engine.transcribe_numpy(audio, "en", replace(options, speech_until=speech_until))
            return result, counter.calls

        first, first_windows = decode(0.0)  # no speech anywhere: the first window only
        unbounded, windows = decode(None)  # faster-whisper's own rule
        assert first_windows == 1 and first.words
        assert windows >= 2  # the tail after the first window's last word was decoded too
        assert unbounded.text.startswith(first.text)
        heard = first.words[-1].end
        quiet, quiet_windows = decode(heard + SPEECH_LEFT / 2)
        assert quiet_windows == 1 and quiet.text == first.text
        talking, talking_windows = decode(heard + 2 * SPEECH_LEFT)
        assert talking_windows == windows and talking.text == unbounded.text
    finally:
        engine.model.model = counter.model
