"""Unit tests of ``transcribe.streaming.vad``: streaming Silero VAD on real speech, the endpointer's
hysteresis on synthetic probability sequences, and the frame-probability ring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import load_wav
from transcribe.streaming.vad import FRAME, Endpointer, EndpointEvent, FrameHistory, StreamingVAD

SR = 16_000


@pytest.fixture(scope="module")
def jfk(audio_dir: Path) -> np.ndarray:
    return load_wav(audio_dir / "jfk.wav")


def one_shot_probs(audio: np.ndarray) -> np.ndarray:
    """faster-whisper's own offline call on the whole clip, frame by frame.

    ``SileroVADModel.__call__`` zeroes the context of its last frame *in the caller's array*
    (``context`` is a view of the audio), which alters the last frame's input; so it gets a copy with
    one frame of padding, and the padding's probability is dropped.
    """
    from faster_whisper.vad import get_vad_model

    n = len(audio) // FRAME * FRAME
    padded = np.concatenate((audio[:n], np.zeros(FRAME, dtype=np.float32)))
    return np.asarray(get_vad_model()(padded)).reshape(-1)[:-1]


def stream_probs(audio: np.ndarray, sizes, runtime: str = "numpy") -> np.ndarray:
    vad = StreamingVAD(runtime)
    out, i = [], 0
    for size in sizes:
        if i >= len(audio):
            break
        out.append(vad.process(audio[i : i + size]))
        i += size
    assert i >= len(audio)
    return np.concatenate(out)


# -- StreamingVAD -----------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["numpy", "onnxruntime"])
@pytest.mark.parametrize("sizes", ["random", 4000, 512, 100, 16000], ids=str)
def test_streaming_probabilities_equal_one_shot(jfk, sizes, runtime):
    rng = np.random.default_rng(0)
    plan = rng.integers(1, 9000, size=len(jfk)) if sizes == "random" else [sizes] * len(jfk)
    expected = one_shot_probs(jfk)
    got = stream_probs(jfk, plan, runtime)
    assert len(got) == len(jfk) // FRAME == len(expected)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert got.dtype == np.float32


def test_leftover_samples_wait_for_the_next_call(jfk):
    vad = StreamingVAD()
    assert vad.process(jfk[: FRAME - 1]).size == 0
    assert vad.process(jfk[FRAME - 1 : FRAME]).size == 1
    assert vad.process(np.zeros(0, dtype=np.float32)).size == 0
    assert vad.process(jfk[FRAME : 4 * FRAME + 10]).size == 3


def test_speech_is_detected_in_speech(jfk):
    probs = stream_probs(jfk, [4000] * len(jfk))
    assert probs.max() > 0.9
    assert (probs > 0.5).mean() > 0.4  # JFK speaks for most of the clip


def test_no_speech_in_noise(audio_dir):
    noise = load_wav(audio_dir / "silence_noise.wav")
    probs = stream_probs(noise, [4000] * len(noise))
    assert len(probs) == len(noise) // FRAME
    assert probs.max() < 0.5
    ep = Endpointer()
    assert ep.update(probs) == []
    assert not ep.in_speech


def test_vad_sessions_are_independent(jfk):
    a, b = StreamingVAD(), StreamingVAD()
    a.process(jfk[: 5 * SR])  # state of one session must not leak into another
    np.testing.assert_array_equal(b.process(jfk[: 2 * SR]), StreamingVAD().process(jfk[: 2 * SR]))


def test_endpointer_on_real_speech(jfk):
    probs = stream_probs(jfk, [4000] * len(jfk))
    ep = Endpointer()
    events = ep.update(probs)
    assert events and events[0].kind == "start"
    kinds = [e.kind for e in events]
    assert all(x != y for x, y in zip(kinds, kinds[1:], strict=False))  # start/end alternate
    samples = [e.sample for e in events]
    assert samples == sorted(samples) and samples[0] < 1 * SR
    assert all(e.sample % FRAME == 0 for e in events)


# -- Endpointer on synthetic sequences --------------------------------------------------------

HI, LO, MID = 0.9, 0.05, 0.4  # MID is between the off (0.35) and on (0.5) thresholds


def probs(*runs: tuple[float, int]) -> np.ndarray:
    return np.concatenate([np.full(n, p, dtype=np.float32) for p, n in runs])


def feed_frames(ep: Endpointer, seq: np.ndarray) -> list[tuple[int, EndpointEvent]]:
    """Feed one frame at a time; return (index of the frame that caused it, event)."""
    out = []
    for i, p in enumerate(seq):
        out.extend((i, ev) for ev in ep.update(np.array([p], dtype=np.float32)))
    return out


def test_frame_counts_from_seconds():
    ep = Endpointer()
    assert ep.min_speech_frames == 3  # 0.1 s / 32 ms
    assert ep.min_silence_frames == 16  # 0.5 s
    assert ep.soft_silence_frames == 6  # 0.2 s
    assert ep.soft_utterance_frames == 125  # 4 s
    assert ep.off_threshold == pytest.approx(0.35)


def test_speech_starts_after_min_speech_frames():
    ep = Endpointer()
    seq = probs((LO, 10), (HI, 2), (LO, 1), (HI, 2))
    assert ep.update(seq) == []  # runs of 2 are too short
    assert not ep.in_speech
    events = ep.update(probs((HI, 1)))
    assert events == [EndpointEvent("start", 13 * FRAME)]  # the run began at frame 13
    assert ep.in_speech and ep.frames == 16


def test_start_needs_the_on_threshold():
    ep = Endpointer()
    assert ep.update(probs((MID, 50))) == []
    assert ep.update(probs((0.5, 3))) == [EndpointEvent("start", 50 * FRAME)]  # >= threshold counts


def test_speech_ends_after_min_silence():
    ep = Endpointer()
    events = feed_frames(ep, probs((HI, 20), (LO, 15)))
    assert [e.kind for _, e in events] == ["start"]
    assert ep.in_speech
    events = ep.update(probs((LO, 1)))
    assert events == [EndpointEvent("end", 20 * FRAME)]  # at the first silent frame
    assert not ep.in_speech


def test_silence_start_and_end_speech():
    ep = Endpointer()
    ep.update(probs((HI, 20)))
    assert ep.silence_start() is None  # speaking
    ep.update(probs((LO, 5)))
    assert ep.silence_start() == 20 * FRAME
    ep.end_speech()  # an utterance ended early (a sentence cut at the pause)
    assert not ep.in_speech and ep.silence_start() is None
    assert ep.update(probs((LO, 30))) == []  # no end event for it: it has ended
    assert ep.update(probs((HI, 3))) == [EndpointEvent("start", 55 * FRAME)]  # a new one starts


def test_hysteresis_keeps_speech_between_thresholds():
    ep = Endpointer()
    seq = probs((HI, 5), (LO, 10), (MID, 1), (LO, 15), (MID, 30))
    assert [e.kind for e in ep.update(seq)] == ["start"]  # MID breaks the silence runs
    assert ep.in_speech
    assert ep.update(probs((LO, 16)))[0] == EndpointEvent("end", 61 * FRAME)


def test_custom_parameters():
    ep = Endpointer(threshold=0.7, min_silence=0.32, min_speech=0.064)
    assert ep.update(probs((0.6, 10))) == []
    assert ep.update(probs((0.8, 2))) == [EndpointEvent("start", 10 * FRAME)]
    # off threshold is 0.55: 0.6 is not silence, 0.5 is
    assert ep.update(probs((0.6, 20))) == []
    assert ep.update(probs((0.5, 10))) == [EndpointEvent("end", 32 * FRAME)]


def test_soft_end_in_a_long_utterance():
    ep = Endpointer(soft_utterance=8.0)  # 250 frames
    # short utterance: a 6-frame pause (0.19 s) does not end it
    assert [e.kind for e in ep.update(probs((HI, 100), (LO, 6), (HI, 10)))] == ["start"]
    assert ep.in_speech
    ep.update(probs((HI, 150)))  # now 266 frames (> 8 s) of speech
    events = ep.update(probs((LO, 6)))
    assert events == [EndpointEvent("end", 266 * FRAME)]


def test_soft_end_counts_from_speech_start():
    ep = Endpointer(soft_utterance=8.0)  # 250 frames
    ep.update(probs((LO, 1000), (HI, 200)))  # a long silence before does not make it "long"
    assert ep.in_speech and ep.speech_start == 1000
    assert ep.update(probs((LO, 6))) == []  # 200 frames of speech: still needs the full 16
    assert ep.update(probs((LO, 10))) == [EndpointEvent("end", 1200 * FRAME)]


def test_restart_resets_the_long_utterance_clock():
    ep = Endpointer(soft_utterance=8.0)  # 250 frames
    ep.update(probs((HI, 300)))
    ep.restart(290)  # a forced cut at frame 290: a new utterance starts there
    assert ep.speech_start == 290 and ep.in_speech
    assert ep.update(probs((LO, 6))) == []  # the soft end no longer applies
    assert ep.update(probs((HI, 1), (LO, 16))) == [EndpointEvent("end", 307 * FRAME)]


def test_restart_clears_a_silence_run():
    ep = Endpointer()
    ep.update(probs((HI, 10), (LO, 15)))
    ep.restart(25)
    assert ep.update(probs((LO, 15))) == []  # 15 + 15 silent, but the run restarted
    assert ep.update(probs((LO, 1))) == [EndpointEvent("end", 25 * FRAME)]


def test_several_utterances():
    ep = Endpointer()
    seq = probs((LO, 5), (HI, 10), (LO, 20), (HI, 4), (LO, 16), (HI, 2), (LO, 30))
    events = ep.update(seq)
    assert events == [
        EndpointEvent("start", 5 * FRAME),
        EndpointEvent("end", 15 * FRAME),
        EndpointEvent("start", 35 * FRAME),
        EndpointEvent("end", 39 * FRAME),
    ]  # the final 2-frame blip is too short to start speech


def test_chunking_does_not_change_events():
    rng = np.random.default_rng(3)
    seq = np.repeat(rng.uniform(0, 1, 200).astype(np.float32), rng.integers(1, 25, 200))
    whole = Endpointer().update(seq)
    ep, pieces, i = Endpointer(), [], 0
    while i < len(seq):
        n = int(rng.integers(0, 40))
        pieces.extend(ep.update(seq[i : i + n]))
        i += n
    assert pieces == whole and len(whole) > 4


# -- FrameHistory -----------------------------------------------------------------------------


def frames(start: int, n: int) -> np.ndarray:
    """Probabilities that encode their frame index (index / 1000)."""
    return (np.arange(start, start + n) / 1000).astype(np.float32)


def test_history_window_and_peak():
    h = FrameHistory(10)
    h.extend(frames(0, 6))
    first, p = h.window(0, 6 * FRAME)
    assert first == 0 and p.tolist() == frames(0, 6).tolist()
    first, p = h.window(2 * FRAME + 5, 4 * FRAME + 1)  # partial frames count: frames 2, 3, 4
    assert first == 2 and p.tolist() == frames(2, 3).tolist()
    first, p = h.window(3 * FRAME, 100 * FRAME)  # clipped to what was recorded
    assert first == 3 and p.tolist() == frames(3, 3).tolist()
    assert h.peak(0, 6 * FRAME) == pytest.approx(0.005)
    assert h.window(7 * FRAME, 9 * FRAME)[1].size == 0
    assert h.peak(7 * FRAME, 9 * FRAME) == 0.0
    assert h.window(-5 * FRAME, FRAME)[0] == 0  # negative starts clip at 0
    assert h.last_above(0, 6 * FRAME, 0.003) == 6 * FRAME  # frame 5 (0.005) ends there
    assert h.last_above(0, 2 * FRAME + 1, 0.0) == 3 * FRAME  # frame 2 overlaps, ends past the range
    assert h.last_above(0, 3 * FRAME, 0.003) is None  # frames 0-2 are all below
    assert h.first_above(0, 6 * FRAME, 0.003) == 3 * FRAME  # frame 3 (0.003) begins there
    assert h.first_above(4 * FRAME + 1, 6 * FRAME, 0.0) == 4 * FRAME  # frame 4 overlaps the range
    assert h.first_above(0, 6 * FRAME, 0.01) is None


def test_history_wrap_around():
    h = FrameHistory(10)
    for start in range(0, 37, 3):  # 39 frames in chunks of 3: wraps several times
        h.extend(frames(start, 3))
    assert h.end == 39
    first, p = h.window(0, 39 * FRAME)
    assert first == 29 and p.tolist() == frames(29, 10).tolist()  # only the newest 10 are held
    first, p = h.window(27 * FRAME, 33 * FRAME)  # straddles the oldest held frame and the seam
    assert first == 29 and p.tolist() == frames(29, 4).tolist()
    assert h.peak(0, 39 * FRAME) == pytest.approx(0.038)
    assert h.peak(0, 20 * FRAME) == 0.0  # forgotten frames are not reported


def test_history_empty_extend():
    h = FrameHistory(4)
    h.extend(np.zeros(0, dtype=np.float32))
    assert h.end == 0 and h.window(0, 10 * FRAME)[1].size == 0


def test_history_chunk_of_exactly_capacity():
    h = FrameHistory(8)
    h.extend(frames(0, 3))
    h.extend(frames(3, 8))
    first, p = h.window(0, 11 * FRAME)
    assert first == 3 and p.tolist() == frames(3, 8).tolist()


def test_history_chunk_larger_than_capacity_keeps_the_newest():
    """Regression: more frames than capacity in one call raised ValueError (shape mismatch)."""
    h = FrameHistory(10)
    h.extend(frames(0, 7))
    h.extend(frames(7, 25))
    assert h.end == 32
    first, p = h.window(0, 32 * FRAME)
    assert first == 22 and p.tolist() == frames(22, 10).tolist()
