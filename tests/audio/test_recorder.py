"""``AudioRecorder`` and ``join_recordings``: real ffmpeg, real speech, checked by decoding the result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import load_wav, wer
from transcribe.audio.decoder import AsyncAudioDecoder
from transcribe.audio.recorder import AudioRecorder, join_recordings
from transcribe.engines import get_engine


async def record(samples: np.ndarray, frame: int = 4000) -> Path:
    recorder = AudioRecorder()
    for i in range(0, len(samples), frame):
        await recorder.write(samples[i : i + frame])
    assert recorder.duration == pytest.approx(len(samples) / 16000)
    path = await recorder.finish()
    assert path is not None
    return path


def seconds(samples: np.ndarray) -> float:
    return len(samples) / 16000


async def test_recording_is_small_ogg_opus_that_still_transcribes(
    audio_dir: Path, refs: dict[str, str]
) -> None:
    speech = load_wav(audio_dir / "jfk.wav")
    path = await record(speech)
    try:
        assert path.read_bytes()[:4] == b"OggS"
        # 24 kbit/s: about 3 KB per second, a tenth of the PCM.
        assert path.stat().st_size < len(speech) * 2 / 8
        decoded = await AsyncAudioDecoder.decode_file(str(path))
        assert seconds(decoded) == pytest.approx(seconds(speech), abs=0.05)
        text = " ".join(s.text for s in get_engine().transcribe_numpy(decoded, "en").segments)
        assert wer(refs["jfk.wav"], text) <= 0.1
    finally:
        path.unlink(missing_ok=True)


async def test_join_pads_the_gap_and_keeps_the_order(audio_dir: Path) -> None:
    speech = load_wav(audio_dir / "jfk.wav")
    first, second = await record(speech[: 16000 * 3]), await record(speech[16000 * 3 :])
    joined = await join_recordings(first, 5.0, second)  # the server lost 2 s between the parts
    silence_first = await join_recordings(None, 2.0, second)  # the first part was lost entirely
    try:
        audio = await AsyncAudioDecoder.decode_file(str(joined))
        assert seconds(audio) == pytest.approx(5.0 + seconds(speech) - 3.0, abs=0.1)
        gap = audio[int(16000 * 3.1) : int(16000 * 4.9)]
        assert np.abs(gap).max() < 0.01  # the padding is silence
        assert np.abs(audio[: 16000 * 3]).max() > 0.1 and np.abs(audio[16000 * 5 :]).max() > 0.1
        lead = await AsyncAudioDecoder.decode_file(str(silence_first))
        assert seconds(lead) == pytest.approx(2.0 + seconds(speech) - 3.0, abs=0.1)
        assert np.abs(lead[: int(16000 * 1.9)]).max() < 0.01
    finally:
        for path in (first, second, joined, silence_first):
            path.unlink(missing_ok=True)


async def test_nothing_recorded_leaves_no_file() -> None:
    recorder = AudioRecorder()
    assert await recorder.finish() is None
    assert not recorder.path.exists()


async def test_abort_kills_ffmpeg_and_removes_the_spool_file() -> None:
    recorder = AudioRecorder()
    await recorder.write(np.zeros(16000, dtype=np.float32))
    proc = recorder._proc
    await recorder.abort()
    assert proc is not None and proc.returncode is not None
    assert not recorder.path.exists()
