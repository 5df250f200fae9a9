"""Edge cases of the streaming policy in ``OptimizedRealtimeSTT``, driven by a scripted engine.

``ScriptedEngine`` implements the engine protocol (``transcribe/engines/base.py``) and answers every
window with one word per 0.4 s slot, each with its word timestamps, so the tests can reason about
times, seq numbers and window sizes without Whisper's cost or randomness. Everything else is real:
the audio is real speech from ``audio_dir`` sent as pcm_s16le bytes, and the decoder, ring buffer,
Silero VAD, endpointer, scheduler and executor are the product's own. Recognition quality itself is
tested with the real weights elsewhere.
"""

from __future__ import annotations

import asyncio
import threading
import time
import wave
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import load_wav
from transcribe.engines.base import DecodeOptions, Segment, STTEngine, Transcription, Word
from transcribe.exceptions import EngineError
from transcribe.streaming import OptimizedRealtimeSTT, RealtimeSTT
from transcribe.streaming.realtime import FINAL_ATTEMPTS, PAD, PARTIAL_QUIET
from transcribe.streaming.replay import pcm_s16le
from transcribe.streaming.vad import FRAME

SR = 16_000
PAD_S = PAD / SR
CHUNK = 3200  # bytes: 0.1 s of pcm_s16le
CHUNK_S = CHUNK / 2 / SR
SLOT = 0.4  # seconds per scripted word


@dataclass
class Call:
    seconds: float
    beam_size: int
    prompt: str | None
    encoder_seconds: float | None = None
    speech_until: float | None = None


class ScriptedEngine:
    """One word per 0.4 s of the window (" w0", " w1", ...), 0.3 s long, times relative to the window.

    ``fail`` lists call numbers (0-based) that raise ``error`` (``EngineError``); ``fail_finals``
    makes the first n final decodes (beam > 1) raise it. ``gate`` (a threading.Event) holds every
    call until it is set.
    """

    name = "scripted"
    model_name = "scripted"
    multilingual = False
    supports_word_timestamps = True

    def __init__(
        self,
        fail: set[int] | None = None,
        fail_finals: int = 0,
        gate: threading.Event | None = None,
        error: type[Exception] = EngineError,
    ):
        self.calls: list[Call] = []
        self.error = error
        self.fail = fail or set()
        self.fail_finals = fail_finals
        self.gate = gate
        self.started = threading.Event()

    def transcribe_numpy(
        self, audio: np.ndarray, language: str | None, options: DecodeOptions | None = None
    ) -> Transcription:
        assert audio.dtype == np.float32 and audio.ndim == 1
        opts = options or DecodeOptions()
        n = len(self.calls)
        self.calls.append(
            Call(len(audio) / SR, opts.beam_size, opts.prompt, opts.encoder_seconds, opts.speech_until)
        )
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        if n in self.fail:
            raise self.error(f"scripted failure of call {n}")
        if opts.beam_size > 1 and self.fail_finals > 0:
            self.fail_finals -= 1
            raise self.error("scripted failure of a final")
        seconds = len(audio) / SR
        words = []
        k = 0
        while k * SLOT + 0.35 <= seconds:
            words.append(Word(k * SLOT + 0.05, k * SLOT + 0.35, f" w{k}", 0.9))
            k += 1
        text = "".join(w.text for w in words)
        segment = Segment(0.0, seconds, text, tuple(words), avg_logprob=-0.2, no_speech_prob=0.01)
        return Transcription((segment,), language="en", duration=seconds)


@pytest.fixture(scope="module")
def jfk(audio_dir: Path) -> bytes:
    return pcm_s16le(load_wav(audio_dir / "jfk.wav"))  # 11 s, four phrases


@pytest.fixture(scope="module")
def lj(audio_dir: Path) -> bytes:
    return pcm_s16le(load_wav(audio_dir / "ljspeech_LJ001-0001_to_0008.wav"))  # 52 s of reading, short pauses


async def feed(stt: OptimizedRealtimeSTT, data: bytes, chunk: int = CHUNK) -> None:
    for i in range(0, len(data), chunk):
        await stt.process_audio_chunk(data[i : i + chunk])
        await asyncio.sleep(0)


async def stream(stt: OptimizedRealtimeSTT, data: bytes, chunk: int = CHUNK) -> list[dict[str, Any]]:
    await feed(stt, data, chunk)
    await asyncio.wait_for(stt.flush(), 30)
    return stt.events


def of(events, kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def check_protocol(events: list[dict[str, Any]]) -> None:
    """Invariants every event sequence must satisfy."""
    kinds = [e["type"] for e in events]
    assert set(kinds) <= {"speech_started", "partial", "final", "utterance_end", "status", "error"}
    # speech_started precedes any text
    for kind in ("partial", "final"):
        if kind in kinds:
            assert "speech_started" in kinds[: kinds.index(kind)]
    finals = of(events, "final")
    assert [f["seq"] for f in finals] == list(range(1, len(finals) + 1))
    for f in finals:
        assert f["text"] and f["start"] < f["end"]
        starts = [w["start"] for w in f["words"]]
        assert starts == sorted(starts)
        assert f["words"][0]["start"] == f["start"] and f["words"][-1]["end"] == f["end"]
    for a, b in zip(finals, finals[1:], strict=False):
        assert a["end"] <= b["start"], (
            f"finals overlap: {a['text']!r} {a['end']} > {b['text']!r} {b['start']}"
        )
    # each final is followed by its utterance_end
    for i, kind in enumerate(kinds):
        if kind == "final":
            assert kinds[i + 1] == "utterance_end"
            assert events[i + 1]["at"] >= events[i]["end"]
    # partials: stable text never shrinks within an utterance
    stable = ""
    for e in events:
        if e["type"] in ("final", "utterance_end", "speech_started"):
            stable = ""
        elif e["type"] == "partial":
            assert e["stable"].startswith(stable)
            assert e["text"] == " ".join(x for x in (e["stable"], e["unstable"]) if x)
            stable = e["stable"]
    speech = [e["at"] for e in of(events, "speech_started")]
    assert speech == sorted(speech)


# -- the ordinary flow ------------------------------------------------------------------------


async def test_events_on_real_speech(jfk):
    engine = ScriptedEngine()
    stt = OptimizedRealtimeSTT(engine=engine)
    assert isinstance(engine, STTEngine)  # the double really implements the protocol
    events = await stream(stt, jfk)
    check_protocol(events)
    counts = Counter(e["type"] for e in events)
    assert counts["speech_started"] >= 2 and counts["final"] >= 2 and counts["partial"] >= 3
    assert counts["status"] == 11  # one per second of audio
    assert events[0]["type"] == "speech_started" and 0.0 < events[0]["at"] < 1.0
    finals = of(events, "final")
    assert finals[-1]["end"] <= 11.0
    assert stt.lag == 0.0 and stt.duration == pytest.approx(11.0)
    # partials are greedy (beam 1) and finals use the final beam (5); finals get the committed prompt
    assert {c.beam_size for c in engine.calls} == {1, 5}
    final_calls = [c for c in engine.calls if c.beam_size == 5]
    assert final_calls[0].prompt == "" and final_calls[-1].prompt.endswith(finals[-2]["text"])


async def test_stable_partials_grow_by_agreement(jfk):
    stt = OptimizedRealtimeSTT(engine=ScriptedEngine())
    events = await stream(stt, jfk)
    partials = of(events, "partial")
    assert any(p["stable"] for p in partials)  # two consecutive hypotheses agreed at some point
    # Nothing is stable after one hypothesis: the first partial of each utterance has no stable
    # part. (A partial may arrive after the next speech_started, so utterances go by time.)
    starts = [e["at"] for e in of(events, "speech_started")]
    seen: set[int] = set()
    for p in partials:
        utterance = max(i for i, at in enumerate(starts) if at - PAD_S - 0.05 <= p["start"])
        if utterance not in seen:
            seen.add(utterance)
            assert p["stable"] == "", p
    assert len(seen) >= 2


async def test_time_offset_and_seq_start_continue_a_resumed_session(jfk):
    stt = OptimizedRealtimeSTT(
        engine=ScriptedEngine(), time_offset=100.0, seq_start=7, prompt="Earlier text."
    )
    events = await stream(stt, jfk)
    check_protocol([{**e, "seq": e["seq"] - 7} if e["type"] == "final" else e for e in events])
    finals = of(events, "final")
    assert finals[0]["seq"] == 8
    assert all(100.0 < f["start"] < f["end"] <= 111.0 for f in finals)
    assert all(100.0 <= e["at"] <= 111.0 for e in of(events, "speech_started"))


async def test_noise_gives_no_events_but_status(audio_dir):
    engine = ScriptedEngine()
    stt = OptimizedRealtimeSTT(engine=engine)
    events = await stream(stt, pcm_s16le(load_wav(audio_dir / "silence_noise.wav")))
    assert {e["type"] for e in events} == {"status"}
    assert engine.calls == []  # non-speech never reaches the engine
    assert len(stt.buffer) <= PAD + 4 * 512 + CHUNK  # and is not kept


def test_realtime_alias():
    assert RealtimeSTT is OptimizedRealtimeSTT


def test_a_replay_streams_the_files_own_bytes(audio_dir: Path):
    # What a client streaming the WAV sends, sample for sample, and the decoder reads it back.
    with wave.open(str(audio_dir / "jfk.wav")) as w:
        raw = w.readframes(w.getnframes())
    samples = load_wav(audio_dir / "jfk.wav")
    assert pcm_s16le(samples) == raw
    assert (
        pcm_s16le(np.array([-1.5, -1.0, 1.0, 1.5], np.float32))
        == np.array([-32768, -32768, 32767, 32767], "<i2").tobytes()
    )  # full scale clips instead of wrapping


# -- engine errors ----------------------------------------------------------------------------


async def test_engine_error_in_a_partial_is_reported_and_the_session_goes_on(jfk):
    engine = ScriptedEngine(fail={0, 1})
    stt = OptimizedRealtimeSTT(engine=engine)
    events = await stream(stt, jfk)
    errors = of(events, "error")
    assert len(errors) == 2
    assert all(e["code"] == "engine_error" and "scripted failure" in e["message"] for e in errors)
    assert len(of(events, "final")) >= 2  # later decodes worked
    check_protocol([e for e in events if e["type"] != "error"])


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr("transcribe.streaming.realtime.FINAL_RETRY_DELAY", 0.01)


async def test_a_failed_final_is_retried_and_its_text_kept(jfk, quick_retries):
    failing, plain = ScriptedEngine(fail_finals=FINAL_ATTEMPTS - 1), ScriptedEngine()
    # Without speculative finals, so that the failing beam-5 decode is the final's own.
    events = await stream(OptimizedRealtimeSTT(engine=failing, speculate_after=0), jfk)
    expected = await stream(OptimizedRealtimeSTT(engine=plain, speculate_after=0), jfk)
    assert not of(events, "error")
    assert of(events, "final") == of(expected, "final")
    final_calls = [c.seconds for c in failing.calls if c.beam_size > 1]
    assert final_calls[:FINAL_ATTEMPTS] == [final_calls[0]] * FINAL_ATTEMPTS  # the same window again


async def test_a_final_that_keeps_failing_is_reported_and_the_session_goes_on(jfk, quick_retries):
    engine = ScriptedEngine(fail_finals=FINAL_ATTEMPTS)
    stt = OptimizedRealtimeSTT(engine=engine, speculate_after=0)
    events = await stream(stt, jfk)
    kinds = [e["type"] for e in events]
    i = kinds.index("error")
    assert events[i]["code"] == "engine_error"
    assert "could not be transcribed" in events[i]["message"]
    assert kinds[i + 1] == "utterance_end"  # the utterance still ends, without a final
    finals = of(events, "final")
    assert finals and finals[0]["seq"] == 1 and finals[0]["start"] >= events[i + 1]["at"]
    check_protocol([e for e in events if e["type"] != "error"])


async def test_an_engine_raising_anything_else_fails_one_decode_not_the_session(jfk, quick_retries):
    # A plugin engine that breaks the contract (RuntimeError instead of EngineError), in two
    # partials and in one final: the partials report engine_error, the final is retried.
    engine = ScriptedEngine(fail={0, 1}, fail_finals=1, error=RuntimeError)
    events = await stream(OptimizedRealtimeSTT(engine=engine, speculate_after=0), jfk)
    errors = of(events, "error")
    assert [e["code"] for e in errors] == ["engine_error", "engine_error"]
    assert all("RuntimeError: scripted failure of call" in e["message"] for e in errors)
    finals = of(events, "final")
    assert [f["seq"] for f in finals] == list(range(1, len(finals) + 1)) and len(finals) >= 3
    check_protocol([e for e in events if e["type"] != "error"])


class LoopingEngine(ScriptedEngine):
    """Over a short encoder window, a final comes out looped, as tiny.en's did. ``compression``: a
    loop Whisper's own rules reject (a compression ratio of 3: "And so my fellow Americans. And so
    my fellow ..."); ``phrase``: the words said twice, which a ratio of ~1.2 lets through ("he can do
    for you. He can do for you.", jfk cut mid-phrase as a resumed session hears it); ``squeezed``:
    the phrase twice with the repeat aligned into no time, a segment the guards drop whole (a
    resumed session's LJ Speech sentence was lost so)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def transcribe_numpy(self, audio, language, options=None):
        result = super().transcribe_numpy(audio, language, options)
        if not (options is not None and options.encoder_seconds and options.beam_size > 1):
            return result
        (segment,) = result.segments
        if self.how == "compression":
            looped = replace(segment, compression_ratio=3.0)
        elif self.how == "squeezed":  # said twice, the repeat aligned into no time: the guards drop it all
            end = segment.words[-1].end
            again = tuple(Word(end, end, w.text, w.probability) for w in segment.words)
            looped = replace(segment, text=segment.text * 2, words=segment.words + again)
        else:
            looped = replace(segment, words=segment.words + segment.words)  # aligned over the speech again
        return Transcription((looped,), language="en", duration=result.duration)


@pytest.mark.parametrize("how", ["compression", "phrase", "squeezed"])
async def test_a_final_that_loops_over_a_short_window_is_decoded_again_over_30_s(jfk, how):
    engine = LoopingEngine(how)
    events = await stream(OptimizedRealtimeSTT(engine=engine, final_encoder_seconds=10), jfk)
    full = await stream(OptimizedRealtimeSTT(engine=ScriptedEngine(), final_encoder_seconds=0), jfk)
    assert [f["text"] for f in of(events, "final")] == [f["text"] for f in of(full, "final")]
    finals = [c.encoder_seconds for c in engine.calls if c.beam_size > 1]
    if how == "compression":
        assert finals and finals.count(10) == finals.count(None)  # each short decode was heard again
    else:  # a decode of two words said twice is no loop (a speculative final's); the finals' phrases were
        assert finals and finals.count(None) >= 1


async def test_speech_under_way_when_the_stream_starts_gets_the_full_window(jfk):
    """A resumed stream begins mid-word, where a short window misheard most: its first final is
    decoded over Whisper's 30 s, the finals after it over FINAL_ENCODER_SECONDS."""
    engine = ScriptedEngine()
    mid_phrase = jfk[int(6.0 * SR) * 2 :]  # "...country can do for you, ask what you can do ..."
    finals = of(
        await stream(OptimizedRealtimeSTT(engine=engine, final_encoder_seconds=15), mid_phrase), "final"
    )
    windows = [c.encoder_seconds for c in engine.calls if c.beam_size > 1]
    assert len(finals) >= 2 and finals[0]["start"] < 0.5
    assert not windows[0] and windows[-1] == 15


class PauseWatchingSTT(OptimizedRealtimeSTT):
    """Notes how long speech had been quiet each time a partial job was scheduled."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.quiet_at_partials: list[float] = []

    def _partial_job(self, utt):  # called when the job is scheduled; the coroutine runs later
        self.quiet_at_partials.append(self.endpointer.silent_frames * FRAME / SR)
        return super()._partial_job(utt)


async def test_decodes_say_where_the_vad_last_heard_speech(jfk):
    engine = ScriptedEngine()
    await stream(OptimizedRealtimeSTT(engine=engine), jfk)
    finals = [c for c in engine.calls if c.beam_size > 1]
    assert finals and all(c.speech_until is not None for c in engine.calls)
    for c in finals:  # speech ends inside the window, before the padding into the silence after it
        assert PAD_S < c.speech_until <= c.seconds
    assert any(c.speech_until < c.seconds - 0.1 for c in finals)
    unbounded = ScriptedEngine()
    await stream(OptimizedRealtimeSTT(engine=unbounded, skip_silent_windows=False), jfk)
    assert unbounded.calls and all(c.speech_until is None for c in unbounded.calls)


async def test_no_partial_starts_once_speech_pauses(jfk):
    """A partial in a pause hears nothing new and, one job at a time, would hold back the final."""
    stt = PauseWatchingSTT(engine=ScriptedEngine())
    events = await stream(stt, jfk)
    assert len(of(events, "partial")) >= 4 and len(of(events, "final")) >= 3
    assert stt.quiet_at_partials and max(stt.quiet_at_partials) < PARTIAL_QUIET / SR


async def test_speculative_finals_are_used_not_decoded_twice(jfk):
    plain_engine, speculating_engine = ScriptedEngine(), ScriptedEngine()
    plain = await stream(OptimizedRealtimeSTT(engine=plain_engine, speculate_after=0), jfk)
    speculating = await stream(OptimizedRealtimeSTT(engine=speculating_engine, speculate_after=0.25), jfk)
    finals = of(speculating, "final")
    # The same finals; only the last may end sooner: at the end of the stream, an utterance that
    # is in a pause ends where the pause began rather than at the last sample.
    assert [(f["start"], f["end"], f["text"]) for f in finals[:-1]] == [
        (f["start"], f["end"], f["text"]) for f in of(plain, "final")[:-1]
    ]
    assert finals[-1]["start"] == of(plain, "final")[-1]["start"]
    plain_decodes = sum(c.beam_size > 1 for c in plain_engine.calls)
    speculative_decodes = sum(c.beam_size > 1 for c in speculating_engine.calls)
    assert plain_decodes == len(finals)
    # JFK pauses between phrases: those finals were decoded once, at the pause, and reused.
    assert speculative_decodes < 2 * len(finals)


class PunctuatingEngine(ScriptedEngine):
    """A ScriptedEngine whose beam-search decodes (speculative and final) end their last word with
    ``mark`` at ``probability``, as Whisper ends a sentence; partials stay unpunctuated. ``hold``
    (a threading.Event) holds the beam-search decodes until it is set."""

    def __init__(
        self, mark: str = ".", probability: float = 0.95, hold: threading.Event | None = None, **kwargs: Any
    ):
        super().__init__(**kwargs)
        self.mark, self.probability, self.hold = mark, probability, hold

    def transcribe_numpy(self, audio, language, options=None):
        searched = (options or DecodeOptions()).beam_size > 1
        if searched and self.hold is not None:
            self.hold.wait(10)
        result = super().transcribe_numpy(audio, language, options)
        if not searched or not result.segments[-1].words:
            return result
        segment = result.segments[-1]
        last = replace(
            segment.words[-1], text=segment.words[-1].text + self.mark, probability=self.probability
        )
        words = (*segment.words[:-1], last)
        segment = replace(segment, words=words, text="".join(w.text for w in words))
        return replace(result, segments=(*result.segments[:-1], segment))


def jfk_with_a_pause(audio_dir: Path, pause: float) -> tuple[bytes, float]:
    """JFK's first phrase, ``pause`` seconds of digital silence after the clip's own 0.16 s, his
    fourth phrase and a second of silence; and the second where the pause ends."""
    jfk = load_wav(audio_dir / "jfk.wav")  # speech 0.32-2.24 s and 5.44-7.62 s, among others
    gap = np.zeros(int(pause * SR), dtype=np.float32)
    audio = np.concatenate([jfk[: int(2.4 * SR)], gap, jfk[int(5.4 * SR) : 8 * SR], np.zeros(SR, np.float32)])
    return pcm_s16le(audio), 2.4 + pause + 0.04


@pytest.fixture(scope="module")
def two_sentences(audio_dir: Path) -> tuple[bytes, float]:
    """Two phrases 0.35 s apart (by the VAD): too short a pause to end an utterance, and shorter
    than a decode at the pause takes here, which finishes once the next phrase is under way."""
    return jfk_with_a_pause(audio_dir, 0.15)


def assert_cut_at_the_pause(events: list[dict[str, Any]], engine: ScriptedEngine, resumed_at: float) -> None:
    check_protocol(events)
    first, second = of(events, "final")
    assert first["text"].endswith(".") and first["end"] < resumed_at < second["end"]
    # Its words are the speculative decode's: no more beam-search decodes than without the cut.
    assert sum(c.beam_size > 1 for c in engine.calls) == 2
    # The second sentence is decoded from the middle of the pause on, not with the first.
    assert min(c.seconds for c in engine.calls if c.beam_size > 1) < resumed_at


async def test_a_sentence_ending_at_a_pause_is_final_at_once(audio_dir):
    data, resumed_at = jfk_with_a_pause(audio_dir, 0.25)  # 0.45 s by the VAD, under MIN_SILENCE
    engine = PunctuatingEngine()
    stt = OptimizedRealtimeSTT(engine=engine)
    in_the_pause = int((resumed_at - 0.1) * SR) * 2  # 0.35 s of silence: past SPECULATE_AFTER
    await feed(stt, data[:in_the_pause])
    for _ in range(500):  # no more audio: only the end of the decode at the pause can end it
        if of(stt.events, "final"):
            break
        await asyncio.sleep(0.01)
    assert len(of(stt.events, "final")) == 1 and stt.utterance is None  # sooner than MIN_SILENCE
    await feed(stt, data[in_the_pause:])
    await asyncio.wait_for(stt.flush(), 30)
    assert_cut_at_the_pause(stt.events, engine, resumed_at)
    assert len(of(stt.events, "speech_started")) == 2  # the next sentence is an utterance of its own


async def test_a_sentence_decoded_after_speech_resumed_is_cut_too(two_sentences):
    """The speculative decode may finish only once the next sentence is under way."""
    data, resumed_at = two_sentences
    hold = threading.Event()
    engine = PunctuatingEngine(hold=hold)
    stt = OptimizedRealtimeSTT(engine=engine)
    split = int((resumed_at + 0.5) * SR) * 2
    await feed(stt, data[:split])
    assert not of(stt.events, "final") and stt.utterance is not None
    uncut = stt.utterance.start
    hold.set()  # no more audio until the cut: only the end of the decode at the pause can make it
    for _ in range(500):
        if stt.utterance.start != uncut:
            break
        await asyncio.sleep(0.01)
    assert resumed_at - 0.5 < stt.utterance.start / SR < resumed_at
    await feed(stt, data[split:])
    await asyncio.wait_for(stt.flush(), 30)
    assert_cut_at_the_pause(stt.events, engine, resumed_at)
    assert len(of(stt.events, "speech_started")) == 1  # the utterance went on from the cut


@pytest.mark.parametrize(
    ("mark", "probability", "sentence_cuts"),
    [(",", 0.95, True), ("...", 0.95, True), (".", 0.5, True), (".", 0.95, False)],
    ids=["comma", "trailing-off", "unsure-last-word", "switched-off"],
)
async def test_a_short_pause_without_a_sure_sentence_end_does_not_cut(
    two_sentences, mark, probability, sentence_cuts
):
    data, _ = two_sentences
    engine = PunctuatingEngine(mark, probability)
    events = await stream(OptimizedRealtimeSTT(engine=engine, sentence_cuts=sentence_cuts), data)
    check_protocol(events)
    assert len(of(events, "final")) == 1


# -- finalize ---------------------------------------------------------------------------------


async def test_finalize_ends_the_open_utterance(jfk):
    got_final = asyncio.Event()
    events: list[dict[str, Any]] = []

    async def on_event(event):
        events.append(event)
        if event["type"] == "final":
            got_final.set()

    stt = OptimizedRealtimeSTT(engine=ScriptedEngine(), on_event=on_event)
    await feed(stt, jfk[: 2 * SR * 2 // 10 * 9])  # 1.8 s: JFK is mid-phrase
    assert stt.utterance is not None and of(events, "final") == []
    await stt.finalize()
    await asyncio.wait_for(got_final.wait(), 5)
    final = of(events, "final")[0]
    assert final["seq"] == 1 and final["end"] <= 1.8
    assert events[events.index(final) + 1]["type"] == "utterance_end"
    assert stt.utterance is None
    # the rest of the stream continues normally, without repeating the finalized audio
    await feed(stt, jfk[2 * SR * 2 // 10 * 9 :])
    await asyncio.wait_for(stt.flush(), 30)
    check_protocol(events)
    assert of(events, "final")[1]["start"] >= final["end"]


async def test_finalize_without_speech_does_nothing(jfk):
    stt = OptimizedRealtimeSTT(engine=ScriptedEngine())
    await stt.finalize()
    await feed(stt, jfk[: int(0.2 * SR) * 2])  # before JFK starts speaking
    await stt.finalize()
    await asyncio.wait_for(stt.flush(), 5)
    assert [e for e in stt.events if e["type"] != "status"] == []


# -- MAX_UTTERANCE ----------------------------------------------------------------------------


@pytest.mark.parametrize("max_utterance", [4.0, 6.0])
async def test_max_utterance_forces_cuts(lj, max_utterance):
    engine = ScriptedEngine()
    # long pauses only: without the forced cut, utterances would run on
    stt = OptimizedRealtimeSTT(
        engine=engine, max_utterance=max_utterance, min_silence=5.0, soft_utterance=29.0
    )
    events = await stream(stt, lj)
    check_protocol(events)
    finals = of(events, "final")
    assert len(finals) >= 52 / max_utterance - 1
    limit = max_utterance + PAD_S + CHUNK_S  # a cut happens at the first chunk past the limit
    assert max(c.seconds for c in engine.calls) <= limit + 1e-6
    assert all(f["end"] - f["start"] <= limit for f in finals)
    ends = [e["at"] for e in of(events, "utterance_end")]
    assert ends == sorted(set(ends))


async def test_short_max_utterance_cuts_inside_the_utterance(lj):
    """Regression: the cut used to be searched in the last 3 s of audio, not in the utterance;
    with MAX_UTTERANCE below 3 s (E003 accepts 2) it landed on the utterance's own start, and every
    following chunk cut again there: bursts of empty utterances and decodes of ~0.2 s windows.
    """
    engine = ScriptedEngine()
    stt = OptimizedRealtimeSTT(engine=engine, max_utterance=2.0, min_silence=5.0, soft_utterance=29.0)
    events = await stream(stt, lj)
    ends = [e["at"] for e in of(events, "utterance_end")]
    assert len(ends) == len(set(ends)), f"{len(ends) - len(set(ends))} duplicate utterance_end events"
    assert min(c.seconds for c in engine.calls if c.beam_size > 1) > PAD_S
    check_protocol(events)
    assert max(c.seconds for c in engine.calls) <= 2.0 + PAD_S + CHUNK_S + 1e-6


# -- long streams -----------------------------------------------------------------------------


async def test_memory_stays_bounded_over_a_long_stream(jfk):
    engine = ScriptedEngine()
    stt = OptimizedRealtimeSTT(engine=engine, max_utterance=6.0)
    data, history = stt.buffer._data, stt.history._probs
    peak = 0
    for _ in range(10):  # 110 s of speech
        for i in range(0, len(jfk), CHUNK):
            await stt.process_audio_chunk(jfk[i : i + CHUNK])
            await asyncio.sleep(0)
            peak = max(peak, len(stt.buffer))
    await asyncio.wait_for(stt.flush(), 30)
    check_protocol(stt.events)
    assert stt.buffer._data is data and data.nbytes == stt.buffer.capacity * 4  # never reallocated
    assert stt.history._probs is history
    assert stt.buffer.dropped == 0
    assert peak <= (6.0 + 3.0) * SR  # one utterance plus slack, far below the 110 s received
    assert stt.duration == pytest.approx(110.0)
    assert len(stt.committed_text) <= 800  # the prompt context is bounded too
    assert len(of(stt.events, "final")) >= 30
    assert max(c.seconds for c in engine.calls) <= 6.0 + PAD_S + CHUNK_S + 1e-6


async def test_one_frame_of_max_frame_bytes(lj):
    """Regression: one binary frame longer than the frame history (30 s with the default
    MAX_UTTERANCE) raised ValueError out of FrameHistory.extend; MAX_FRAME_BYTES allows 1 MiB
    frames, i.e. 32.8 s of pcm_s16le.
    """
    stt = OptimizedRealtimeSTT(engine=ScriptedEngine())
    await stt.process_audio_chunk(lj[: 1024 * 1024])
    await asyncio.wait_for(stt.flush(), 30)
    check_protocol(stt.events)
    finals = of(stt.events, "final")
    assert len(finals) >= 3 and finals[-1]["end"] <= 1024 * 1024 / 2 / SR
    assert stt.buffer.dropped == 0  # handled as a stream: nothing was overwritten unread


# -- close ------------------------------------------------------------------------------------


async def test_close_is_idempotent_and_silences_the_session(jfk):
    stt = OptimizedRealtimeSTT(engine=ScriptedEngine())
    await feed(stt, jfk[: len(jfk) // 2])
    await stt.close()
    await stt.close()
    assert stt.closed
    n = len(stt.events)
    await feed(stt, jfk[len(jfk) // 2 :])  # audio after close is ignored
    await stt.finalize()
    await asyncio.sleep(0.05)
    assert len(stt.events) == n


async def test_close_cancels_a_job_in_flight(jfk):
    gate = threading.Event()
    engine = ScriptedEngine(gate=gate)
    stt = OptimizedRealtimeSTT(engine=engine)
    await feed(stt, jfk[: 2 * SR * 2])  # 2 s: a partial decode is running and held by the gate
    await asyncio.get_running_loop().run_in_executor(None, engine.started.wait, 5)
    assert stt._job is not None
    n = len(stt.events)
    try:
        await asyncio.wait_for(stt.close(), 5)  # does not wait for the engine
    finally:
        gate.set()
    await asyncio.sleep(0.1)  # the engine returns: its result is dropped
    assert len(stt.events) == n
    assert not [e for e in stt.events[n:] if e["type"] in ("partial", "final")]
    await stt.close()


async def test_flush_after_close_returns(jfk):
    """Regression: after close() no job could start, so with a final pending flush() spun
    forever in its wait loop (sleep(0)), hogging the event loop.
    """
    stt = OptimizedRealtimeSTT(engine=ScriptedEngine())
    await feed(stt, jfk[: 2 * SR * 2])
    assert stt.utterance is not None  # mid-phrase
    await stt.close()
    n = len(stt.events)
    await asyncio.wait_for(stt.flush(), 2)
    assert len(stt.events) == n  # and, closed, it emits nothing


# -- compressed input -------------------------------------------------------------------------


def encode_webm(wav: Path, seconds: float | None = None) -> bytes:
    import subprocess

    from transcribe.audio.ffmpeg import find_ffmpeg

    args = [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-nostdin", "-i", str(wav)]
    if seconds is not None:
        args += ["-t", str(seconds)]
    return subprocess.run(
        [*args, "-c:a", "libopus", "-b:a", "48k", "-f", "webm", "pipe:1"], capture_output=True, check=True
    ).stdout


async def test_webm_stream_gives_the_same_finals_as_pcm(audio_dir, jfk):
    webm = encode_webm(audio_dir / "jfk.wav")
    from_pcm = await stream(OptimizedRealtimeSTT(engine=ScriptedEngine()), jfk)
    stt = OptimizedRealtimeSTT(engine=ScriptedEngine(), fmt="webm")
    events = await stream(stt, webm, chunk=4000)  # ~0.5 s of Opus per frame, as MediaRecorder sends
    check_protocol(events)
    assert stt.duration == pytest.approx(11.0, abs=0.02)
    # Opus is lossy, so the VAD may move an edge by a frame or two; the utterances are the same
    ends, pcm_ends = (
        [e["at"] for e in of(events, "utterance_end")],
        [e["at"] for e in of(from_pcm, "utterance_end")],
    )
    assert len(ends) == len(pcm_ends) >= 2
    assert max(abs(a - b) for a, b in zip(ends, pcm_ends, strict=True)) <= 0.2
    assert not stt.decoder.running
    await stt.close()


async def test_finalize_right_after_the_last_compressed_frame_covers_it(audio_dir):
    # Cut mid-phrase ("... ask not what your country ..."): the frames go to ffmpeg as fast as the
    # socket takes them, and finalize comes before ffmpeg has handed back their audio.
    webm = encode_webm(audio_dir / "jfk.wav", seconds=4.2)
    stt = OptimizedRealtimeSTT(engine=ScriptedEngine(), fmt="webm", speculate_after=0)
    for i in range(0, len(webm), 4000):
        await stt.process_audio_chunk(webm[i : i + 4000])
    await stt.finalize()
    assert stt.duration == pytest.approx(4.2, abs=0.02)  # finalize waited for the audio
    assert stt.utterance is None
    for _ in range(200):  # the final follows without any more input
        if len(of(stt.events, "utterance_end")) == len(of(stt.events, "speech_started")):
            break
        await asyncio.sleep(0.02)
    ends = of(stt.events, "utterance_end")
    assert len(ends) == len(of(stt.events, "speech_started")) >= 2
    assert ends[-1]["at"] == pytest.approx(4.2, abs=0.05)
    check_protocol(stt.events)
    await stt.close()


async def test_bad_webm_is_an_error_event_and_a_new_stream_recovers(audio_dir):
    webm = encode_webm(audio_dir / "jfk.wav")
    stt = OptimizedRealtimeSTT(engine=ScriptedEngine(), fmt="webm")
    first_decoder = stt.decoder
    for _ in range(100):  # ffmpeg needs a moment to give up on the garbage
        await stt.process_audio_chunk(b"\x00garbage, not EBML" * 100)
        await asyncio.sleep(0.01)
        if of(stt.events, "error"):
            break
    errors = of(stt.events, "error")
    assert errors and {e["code"] for e in errors} == {"bad_audio"}
    assert stt.decoder is not first_decoder  # the next frame starts a fresh ffmpeg
    await asyncio.sleep(0.1)
    assert not first_decoder.running  # and the dead one was reaped
    n = len(errors)  # (see test_one_bad_stream_is_reported_once for how many there are)
    await feed(stt, webm, chunk=4000)  # a new recorder: a stream that starts with its header
    await asyncio.wait_for(stt.flush(), 30)
    assert len(of(stt.events, "error")) == n
    check_protocol([e for e in stt.events if e["type"] != "error"])
    assert len(of(stt.events, "final")) >= 2


async def test_one_bad_stream_is_reported_once():
    garbage = bytes(range(256)) * 16  # not EBML: ffmpeg gives up at once
    counts = []
    # The race: ffmpeg has exited, and the next frame arrives while the reader task is noticing it.
    # Blocking the loop for 0.1 s lets ffmpeg exit; k loop iterations then decide who reports first.
    for k in range(2, 10):
        stt = OptimizedRealtimeSTT(engine=ScriptedEngine(), fmt="webm")
        first = stt.decoder
        await stt.process_audio_chunk(garbage)
        time.sleep(0.1)  # noqa: ASYNC251 - on purpose: ffmpeg exits while the loop does not look
        for _ in range(k):
            await asyncio.sleep(0)
        if stt.decoder is first:
            await stt.process_audio_chunk(garbage)
        await asyncio.sleep(0.05)
        counts.append(len(of(stt.events, "error")))
        await stt.close()
    assert counts == [1] * len(counts)
