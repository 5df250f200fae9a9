"""Streaming accuracy on all of ../shared/audio against offline transcription of the same clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import corpus_wer, load_wav, normalize, word_errors
from transcribe.engines import DecodeOptions, get_engine
from transcribe.engines.openai import FALLBACK_TEMPERATURES
from transcribe.streaming.replay import replay

pytestmark = pytest.mark.slow

# Measured on tiny.en int8 (2-core CPU, Whisper's English normalizer): offline beam 5 0.0%,
# streaming 1.9% (differences at utterance cuts inside the 52 s LJSpeech clip).
OFFLINE_MAX_WER = 0.03
STREAMING_MAX_WER = 0.05
MAX_GAP = 0.03  # streaming may be at most 3 points worse than offline
SR = 16_000


@pytest.fixture(scope="module")
def clips(audio_dir: Path, refs: dict[str, str]) -> list[tuple[str, str]]:
    return sorted(refs.items())


def offline_text(path: Path) -> str:
    options = DecodeOptions(
        beam_size=5,
        word_timestamps=False,
        temperature=FALLBACK_TEMPERATURES,
        extra={"condition_on_previous_text": True},
    )
    return get_engine().transcribe_numpy(load_wav(path), "en", options).text


async def test_streaming_wer_is_close_to_offline(audio_dir: Path, clips: list[tuple[str, str]]) -> None:
    offline, streaming = [], []
    for name, reference in clips:
        samples = load_wav(audio_dir / name)
        offline.append((reference, offline_text(audio_dir / name)))
        # speed=0: as fast as the pipeline goes. Finals are cut by the VAD, not by the clock, so the
        # text is what a real-time stream gets, without waiting 100 s.
        report = await replay(samples, speed=0)
        streaming.append((reference, report.text))
        finals = report.finals
        assert [f["seq"] for f in finals] == list(range(1, len(finals) + 1))
        assert all(a["end"] <= b["start"] + 0.05 for a, b in zip(finals, finals[1:], strict=False))
        if not reference:
            assert report.text == "", f"{name}: words on noise: {report.text!r}"
    offline_wer, streaming_wer = corpus_wer(offline), corpus_wer(streaming)
    assert offline_wer <= OFFLINE_MAX_WER, offline
    assert streaming_wer <= STREAMING_MAX_WER, streaming
    assert streaming_wer - offline_wer <= MAX_GAP


@pytest.mark.parametrize("sentence_cuts", [True, False], ids=["cut", "not-cut"])
async def test_a_sentence_before_a_short_pause_is_its_own_final(audio_dir: Path, sentence_cuts: bool) -> None:
    """LJ Speech reads "... in being comparatively modern. For although the Chinese ..." with 0.3 s
    between the sentences, too short a pause to end an utterance: the first sentence is final as
    soon as the second is under way, not once the second ends."""
    lj = load_wav(audio_dir / "ljspeech_LJ001-0001_to_0008.wav")
    samples = np.concatenate([lj[int(9.6 * SR) : 16 * SR], np.zeros(SR, dtype=np.float32)])
    # At twice real time, so that the decode at the pause finishes while the next sentence is read.
    report = await replay(samples, speed=2.0, sentence_cuts=sentence_cuts)
    texts = [normalize(f["text"]) for f in report.finals]
    expected = "in being comparatively modern for although the chinese took impressions from wood blocks"
    assert " ".join(texts).startswith(expected), texts
    if sentence_cuts:
        assert texts[0] == "in being comparatively modern" and texts[1].startswith("for although")
    else:
        assert texts[0].startswith("in being comparatively modern for although")


def test_word_errors_name_each_wrong_run() -> None:
    # What the benches print beside a WER: the runs of wrong words, merged, in order.
    said = "And so, my fellow Americans: ask not what your country can do for you."
    heard = "And so am I fellow Americans, ask not like your country can do for you"
    assert word_errors(said, heard) == ["my -> am i", "what -> like"]
    assert word_errors(said, said.upper()) == []
    assert word_errors("", "Thank you.") == ["- -> thank you"]
    assert word_errors("the woodcutters", "the wood cutters") == ["woodcutters -> wood cutters"]
