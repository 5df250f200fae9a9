"""``OptimizedRealtimeSTT``: one streaming session, from audio bytes to partial and final text.

    decoder (ffmpeg pipe, or none for PCM) → ring buffer → Silero VAD + endpointer
        → InferenceScheduler (≤ 1 job in flight) → LocalAgreement partials / guarded finals

Events are plain ``stt.v1`` dicts handed to an async ``on_event`` callback, awaited in order; a
``final`` is only followed by more events once the callback returns, so the consumer can commit it
to the database before it is sent. Times in events are seconds of session audio (``time_offset``
plus what this object received).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from ..audio.buffer import OptimizedAudioBuffer
from ..audio.decoder import PcmCallback, StreamingDecoder, make_decoder
from ..conf import transcribe_settings
from ..engines import DecodeOptions, STTEngine, Transcription, Word, get_engine
from ..exceptions import DecodeError, EngineError, EngineUnavailableError
from .policy import LocalAgreement, accepted_words, is_loop, join_words, repeats_a_phrase
from .scheduler import InferenceScheduler
from .vad import FRAME, Endpointer, FrameHistory, StreamingVAD

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
Event = dict[str, Any]
EventCallback = Callable[[Event], Awaitable[None]]

# Audio kept around speech so word edges are not clipped. The VAD hears a soft onset late ("what"
# after a pause came out as "like" with 0.2 s); at most half the closing silence is added at the end.
PAD = int(0.3 * SAMPLE_RATE)
PROMPT_CHARS = 200  # committed text given to Whisper as context
# No partial is started this far into a pause: it would hear little new, and since a session runs
# one job at a time it would hold back the speculative final or the final that is about to follow.
PARTIAL_QUIET = int(0.1 * SAMPLE_RATE)
WORD_MARGIN = int(0.1 * SAMPLE_RATE)  # slack around word timestamps when checking them against the VAD
LOOP_SLACK = 1.0  # seconds: words ending this close to a final's end have heard all of its speech
SENTENCE_ENDS = (".", "?", "!")  # "..." (trailing off) is not one
# A sentence is cut at a short pause only when Whisper is this sure of its last word: the words after
# a pause can change an unsure one ("antecedence." at 0.81, alone; "antecedents, nor" with them).
SENTENCE_CUT_CONFIDENCE = 0.9
CUT_IN = 4 * FRAME  # an utterance starting this close to the stream's start was already under way
# A final's decode is tried this often before its speech is reported as not transcribed: a failure
# may be passing (a GPU out of memory, a worker that crashed), and a final is the text that lasts.
FINAL_ATTEMPTS = 3
FINAL_RETRY_DELAY = 0.5  # seconds, doubled after each failure


def max_tokens(seconds: float) -> int:
    """Generous for speech (fast talkers say ~4 tokens a second), short for a hallucination loop."""
    return int(12 + 8 * seconds)


@dataclass(frozen=True)
class StreamingConfig:
    step: float = 0.5
    first_step: float = 0.25
    partial_share: float = 0.5
    min_silence: float = 0.5
    max_utterance: float = 15.0
    soft_utterance: float = 4.0
    soft_silence: float = 0.2
    vad_threshold: float = 0.5
    vad_runtime: str = "numpy"
    beam_size: int = 5
    partial_beam_size: int = 1
    status_interval: float = 1.0
    use_prompt: bool = True
    partial_encoder_seconds: float = 10.0
    final_encoder_seconds: float = 15.0
    speculate_after: float = 0.25
    salvage_partials: bool = True
    skip_silent_windows: bool = True
    sentence_cuts: bool = True

    @classmethod
    def from_settings(cls, **overrides: Any) -> StreamingConfig:
        values = {f.name: getattr(transcribe_settings, f.name.upper()) for f in fields(cls)}
        return cls(**{**values, **overrides})


@dataclass
class Utterance:
    start: int  # absolute sample where speech started (before padding)
    agreement: LocalAgreement = field(default_factory=LocalAgreement)
    decoded_until: int = 0  # buffer end covered by the last partial decode
    shown: bool = False  # a partial of it has been sent


@dataclass
class ChunkStats:
    """Server-side handling time per audio chunk, inference excluded (bounded history)."""

    seconds: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))


class OptimizedRealtimeSTT:
    def __init__(
        self,
        *,
        on_event: EventCallback | None = None,
        engine: STTEngine | None = None,
        language: str | None = "en",
        fmt: str = "pcm_s16le",
        scheduler: InferenceScheduler | None = None,
        time_offset: float = 0.0,
        seq_start: int = 0,
        prompt: str = "",
        on_audio: PcmCallback | None = None,
        **config: Any,
    ) -> None:
        self.cfg = StreamingConfig.from_settings(**config)
        self.engine = engine or get_engine()
        self.language = language
        self.fmt = fmt
        self.time_offset = time_offset
        self.events: list[Event] = []
        self._on_event = on_event or self._collect
        self._on_audio = on_audio  # sees every decoded sample (the recorder)
        self.scheduler = scheduler or InferenceScheduler()
        self.buffer = OptimizedAudioBuffer(max_seconds=self.cfg.max_utterance + 15)
        self.decoder = make_decoder(fmt, self._on_pcm, self._on_decode_error)
        self.vad = StreamingVAD(self.cfg.vad_runtime)
        self.endpointer = Endpointer(
            threshold=self.cfg.vad_threshold,
            min_silence=self.cfg.min_silence,
            soft_utterance=self.cfg.soft_utterance,
            soft_silence=self.cfg.soft_silence,
            # A speculative final needs the audio its range ends at (see _utterance_end).
            pause=self.cfg.speculate_after
            if self.cfg.speculate_after >= min(PAD / SAMPLE_RATE, self.cfg.min_silence / 2)
            else 0.0,
        )
        self.history = FrameHistory(self.buffer.capacity // FRAME + 1)
        self.utterance: Utterance | None = None
        self.final_until = 0  # absolute sample where the last final's audio ended
        self._finals: deque[tuple[int, int]] = deque()  # (start, end) sample ranges awaiting a final decode
        # Speculative finals: at a pause, the utterance is decoded as if it had ended; if it does end
        # there, the final is ready MIN_SILENCE sooner. (start, end) wanted, and the last result.
        self._speculation: tuple[int, int] | None = None
        self._speculated: tuple[tuple[int, int], list[Word]] | None = None
        self._job: asyncio.Task[None] | None = None
        self._final_running = False
        self._partial_seconds = 0.0  # wall time of the last partial decode, queueing included
        self._reapers: set[asyncio.Future[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.seq = seq_start
        self.committed_text = prompt
        self.transcribed_until = 0  # absolute sample up to which all speech has been decoded
        self._next_status = self.cfg.status_interval
        self.stats = ChunkStats()
        self.closed = False

    # -- public API -------------------------------------------------------------------------

    async def process_audio_chunk(self, data: bytes) -> None:
        """Take one binary frame of the announced format. Bad audio becomes an ``error`` event
        (code bad_audio); the stream goes on, and a compressed stream may restart with a header."""
        try:
            await self.decoder.feed(data)
        except DecodeError as exc:
            await self._on_decode_error(exc)

    async def _on_decode_error(self, exc: DecodeError) -> None:
        if isinstance(self.decoder, StreamingDecoder):
            if not self.decoder.failed:
                return  # a late report from a decoder that was already replaced
            logger.info("Bad audio: %s", exc)
            # The next frame starts a fresh ffmpeg; the dead one is reaped (never a zombie).
            old, self.decoder = self.decoder, make_decoder(self.fmt, self._on_pcm, self._on_decode_error)
            reaper = asyncio.ensure_future(old.abort())
            self._reapers.add(reaper)
            reaper.add_done_callback(self._reapers.discard)
        await self._emit({"type": "error", "code": "bad_audio", "message": str(exc)})

    async def finalize(self) -> None:
        """End the current utterance now (client's ``finalize``); its final follows."""
        await self.decoder.settle()  # the last frames may still be inside ffmpeg
        if self.utterance is not None:
            # Inside a pause, end where the silence began (the range a speculative final has
            # already decoded); otherwise at the newest sample.
            pause_start = self.endpointer.pause_start()
            self._end_utterance(
                self._utterance_end(pause_start) if pause_start is not None else self.buffer.end
            )
            self.endpointer.end_speech()
        self._schedule()

    async def flush(self) -> None:
        """End of stream: decode what ffmpeg still holds, finalize, and wait for every final."""
        if self.closed:
            return
        await self.decoder.close()
        await self.finalize()
        while not self.closed and (not self._idle.is_set() or self._finals):
            await self._idle.wait()
            self._schedule()
            await asyncio.sleep(0)

    async def close(self) -> None:
        """Abort: kill ffmpeg, cancel any job (its result is dropped). Idempotent."""
        self.closed = True
        abort = getattr(self.decoder, "abort", None)
        if abort is not None:
            await abort()
        if self._reapers:  # ffmpegs of streams that failed earlier: reaped before we return
            await asyncio.gather(*self._reapers, return_exceptions=True)
        if self._job is not None and not self._job.done():
            self._job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._job
        await self.scheduler.close()

    @property
    def duration(self) -> float:
        """Seconds of audio received by this object."""
        return self.buffer.end / SAMPLE_RATE

    @property
    def lag(self) -> float:
        """Seconds of speech received but not yet transcribed."""
        if self.utterance is None and not self._finals and self._idle.is_set():
            return 0.0
        return max(0, self.buffer.end - self.transcribed_until) / SAMPLE_RATE

    # -- audio path (runs on the event loop: keep it cheap) ---------------------------------

    async def _on_pcm(self, samples: npt.NDArray[np.float32]) -> None:
        if self._on_audio is not None and not self.closed:
            await self._on_audio(samples)
        # A huge frame (MAX_FRAME_BYTES allows ~30 s of PCM) is handled a second at a time, so the
        # VAD, the cuts and the backpressure below see it as the stream it is.
        for offset in range(0, len(samples), SAMPLE_RATE):
            await self._on_samples(samples[offset : offset + SAMPLE_RATE])

    async def _on_samples(self, samples: npt.NDArray[np.float32]) -> None:
        started = time.perf_counter()
        if self.closed:
            return
        if len(self.buffer) + len(samples) > self.buffer.capacity:
            # Audio arrives faster than it is transcribed: wait for pending finals (they trim the
            # buffer) instead of dropping speech. The wait propagates back to the socket or pipe.
            while len(self.buffer) + len(samples) > self.buffer.capacity and (
                self._finals or self._final_running
            ):
                await self._idle.wait()
                self._schedule()
                await asyncio.sleep(0)
            started = time.perf_counter()
        self.buffer.add_audio(samples)
        probs = self.vad.process(samples)
        self.history.extend(probs)
        events: list[Event] = []
        for ev in self.endpointer.update(probs):
            if ev.kind == "start":
                self.utterance = Utterance(start=ev.sample, decoded_until=ev.sample)
                events.append({"type": "speech_started", "at": self._t(ev.sample)})
            elif ev.kind == "pause":
                if self.utterance is not None:
                    # The range the end event will give if the silence lasts to MIN_SILENCE.
                    self._speculation = (self.utterance.start, self._utterance_end(ev.sample))
            else:
                self._end_utterance(self._utterance_end(ev.sample, self.history.end * FRAME - ev.sample))
        if self.utterance is not None:
            self._cut_at_sentence_end()
            self._maybe_cut()
        elif not self._finals and self._idle.is_set():
            # Nothing pending: non-speech is done with; keep a little pre-roll for the next start.
            self.buffer.trim(self.buffer.end - PAD - FRAME * 4)
            self.transcribed_until = self.buffer.end
        self._schedule()
        if self.duration >= self._next_status:
            self._next_status += self.cfg.status_interval
            events.append(
                {
                    "type": "status",
                    "lag_ms": round(self.lag * 1000),
                    "buffered_s": round(len(self.buffer) / SAMPLE_RATE, 2),
                }
            )
        self.stats.seconds.append(time.perf_counter() - started)
        for event in events:
            await self._emit(event)

    def _utterance_end(self, silence_start: int, silence: int | None = None) -> int:
        """Where an utterance that fell silent at ``silence_start`` ends: padded into the silence,
        but never past half of it (the next word may follow soon). ``silence`` (samples) defaults
        to MIN_SILENCE, the silence an endpoint waits for, so a speculative final, a finalize in a
        pause and the endpoint itself all agree on the range."""
        waited = self.endpointer.min_silence_frames * FRAME
        silence = waited if silence is None else min(silence, waited)  # a soft endpoint waits less
        return silence_start + self._end_padding(silence)

    @staticmethod
    def _end_padding(silence: int) -> int:
        """Samples of a silence an utterance ending at its start keeps: half of it, at most PAD."""
        return min(PAD, silence // 2)

    def _end_utterance(self, end: int) -> None:
        assert self.utterance is not None
        end = min(end, self.buffer.end)
        self._speculation = None  # not started yet: the final decodes this range itself
        self._finals.append((self.utterance.start, end))
        self.utterance = None

    def _cut_at_sentence_end(self) -> None:
        """End the utterance at a pause where its speculative final ended a sentence.

        At a pause (SPECULATE_AFTER) the utterance is decoded as if it had ended. When that decode
        ends a sentence there (Whisper's punctuation, a sure last word), the utterance ends at the
        pause at once: while the pause lasts, sooner than MIN_SILENCE would end it; and if speech has
        resumed (0.3 s between sentences read aloud), instead of running on into the next sentence,
        whose end its final would wait for. Either way its final is that decode: no extra inference.
        The cut falls in the middle of the silence heard so far (at most PAD after its start), so
        that the next utterance is decoded from before its first word.
        """
        utt, speculated = self.utterance, self._speculated
        if not (self.cfg.sentence_cuts and utt is not None and speculated is not None):
            return
        (start, end), words = speculated
        if start != utt.start or not self.endpointer.in_speech:
            return  # another utterance's decode
        # Where the pause began: ``end`` was padded into it by _utterance_end.
        pause_start = end - self._end_padding(self.endpointer.min_silence_frames * FRAME)
        if not self._ends_a_sentence(words, pause_start):
            return
        in_the_pause = self.endpointer.silence_start() == pause_start
        if in_the_pause:
            silence_end: int | None = self.buffer.end
        else:
            silence_end = self.history.first_above(pause_start, self.buffer.end, self.endpointer.on_threshold)
            if silence_end is None:
                return
        last = words[-1]
        # Never before the last word's end (Whisper may stretch it into the silence).
        last_word_end = int((last.end - self.time_offset) * SAMPLE_RATE)
        cut = min(end, max(last_word_end, pause_start + (silence_end - pause_start) // 2))
        self._speculated = ((start, cut), words)  # the final job takes these words as they are
        if in_the_pause:
            self._end_utterance(cut)
            self.endpointer.end_speech()
        else:  # speech resumed: the utterance goes on from the cut
            self._finals.append((start, cut))
            self.utterance = Utterance(start=cut, decoded_until=cut)
            self.endpointer.restart(cut // FRAME)
        logger.debug("Sentence cut at %.2f s after %r (p=%.2f)", self._t(cut), last.text, last.probability)

    def _ends_a_sentence(self, words: list[Word], pause_start: int) -> bool:
        """The words end a sentence at the pause, and Whisper is sure of the last one."""
        if not words:
            return False
        last = words[-1]
        text = last.text.rstrip()
        return (
            text.endswith(SENTENCE_ENDS)
            and not text.endswith("..")
            and last.probability >= SENTENCE_CUT_CONFIDENCE
            and last.end >= self._t(pause_start) - LOOP_SLACK  # it heard the speech up to the pause
        )

    def _maybe_cut(self) -> None:
        """Force a final at MAX_UTTERANCE, cutting at the quietest frame of the last 3 seconds."""
        utt = self.utterance
        assert utt is not None
        limit = int(self.cfg.max_utterance * SAMPLE_RATE)
        if self.buffer.end - utt.start < limit:
            return
        # The quietest frame of the last 3 s, but never in the utterance's first half.
        search_from = max(self.buffer.end - 3 * SAMPLE_RATE, utt.start + limit // 2)
        first, probs = self.history.window(search_from, self.buffer.end)
        cut = (first + int(np.argmin(probs))) * FRAME + FRAME // 2 if len(probs) else self.buffer.end
        self._finals.append((utt.start, cut))
        self.utterance = Utterance(start=cut, decoded_until=cut)
        self.endpointer.restart(cut // FRAME)

    # -- inference --------------------------------------------------------------------------

    def _schedule(self) -> None:
        if self.closed or self._job is not None:
            return
        if self._finals:
            start, end = self._finals.popleft()
            self._final_running = True
            self._start_job(self._final_job(start, end))
            return
        utt = self.utterance
        if self._speculation is not None:
            start, end = self._speculation
            self._speculation = None
            if utt is not None and utt.start == start and end <= self.buffer.end:
                self._start_job(self._speculative_job(start, end))
                return
        if utt is None or self.endpointer.silent_frames * FRAME >= PARTIAL_QUIET:
            return
        if utt.shown:
            step = max(self.cfg.step, self._partial_seconds / self.cfg.partial_share)
        else:  # nothing shown yet (the first decode may hear too little): try again soon
            step = max(self.cfg.first_step, self._partial_seconds if utt.decoded_until > utt.start else 0)
        if self.buffer.end - utt.decoded_until >= step * SAMPLE_RATE:
            self._start_job(self._partial_job(utt))

    def _start_job(self, coro: Awaitable[None]) -> None:
        self._idle.clear()
        self._job = asyncio.ensure_future(coro)
        self._job.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._job = None
        self._final_running = False
        self._idle.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("Streaming job failed", exc_info=exc)
        self._schedule()

    async def _decode(self, start: int, end: int, beam_size: int, partial: bool = False) -> list[Word]:
        """Decode [start - PAD, end) and keep the words that pass the guards and overlap speech."""
        begin = max(self.buffer.start, self.final_until, start - PAD)
        audio = self.buffer.get(begin, end)
        if len(audio) < FRAME:
            return []  # nothing left to hear (trimmed behind a final)
        options = DecodeOptions(
            beam_size=beam_size,
            word_timestamps=True,
            prompt=self.committed_text[-PROMPT_CHARS:] if self.cfg.use_prompt else None,
            max_new_tokens=max_tokens(len(audio) / SAMPLE_RATE),
            encoder_seconds=self._encoder_seconds(start, partial),
            speech_until=self._speech_until(begin, end) if self.cfg.skip_silent_windows else None,
        )
        result = await self._transcribe(audio, options)
        words = [
            w
            for w in accepted_words(result, self._t(begin), salvage=partial and self.cfg.salvage_partials)
            if self._is_voiced(w)
        ]
        if not partial and options.encoder_seconds and self._looped(result, words, end):
            # A short encoder window can make Whisper loop ("he can do for you. He can do for you."),
            # a final then hears it again over Whisper's full 30 s, as it was trained.
            result = await self._transcribe(audio, replace(options, encoder_seconds=None))
            words = [w for w in accepted_words(result, self._t(begin)) if self._is_voiced(w)]
        return words

    def _speech_until(self, begin: int, end: int) -> float:
        """Seconds into the window [begin, end) where the last frame the VAD heard as speech ends."""
        voiced_end = self.history.last_above(begin, end, self.endpointer.off_threshold)
        return 0.0 if voiced_end is None else (min(end, voiced_end) - begin) / SAMPLE_RATE

    def _encoder_seconds(self, start: int, partial: bool) -> float:
        if partial:
            return self.cfg.partial_encoder_seconds
        # Speech under way when the stream started (a resumed session) begins mid-word, where a short
        # window misheard or looped most ("one tree can do for you"): that final gets Whisper's full
        # window, as it was trained.
        return 0.0 if start < CUT_IN else self.cfg.final_encoder_seconds

    def _looped(self, result: Transcription, words: list[Word], end: int) -> bool:
        """A phrase said twice, or a segment going in circles (the guards dropped it) in place of
        speech. Whisper's loops run to the end of the window: one that starts after the last words
        ("Thank you for watching, and I'll see you in the next video, and I'll see you ...") has
        cost nothing but the trailing silence. A dropped segment that says its phrase twice counts
        too: "The invention of movable metal letters ... considered. The invention of ..." (a
        compression ratio of 2.1, the repeat squeezed into no time) was a whole sentence lost."""
        if repeats_a_phrase(words):
            return True
        reached_the_end = bool(words) and words[-1].end >= self._t(end) - LOOP_SLACK
        return not reached_the_end and any(
            is_loop(s) or repeats_a_phrase(list(s.words)) for s in result.segments
        )

    async def _transcribe(self, audio: npt.NDArray[np.float32], options: DecodeOptions) -> Transcription:
        try:
            return await self.scheduler.transcribe(self.engine, audio, self.language, options)
        except EngineError:
            raise
        except Exception as exc:
            # An engine that breaks its contract (a plugin raising anything but EngineError) fails
            # this decode like any engine error, never the whole session.
            logger.exception("The engine raised %s instead of EngineError", type(exc).__name__)
            raise EngineError(f"The engine failed: {type(exc).__name__}: {exc}") from exc

    def _is_voiced(self, word: Word) -> bool:
        """Whisper invents words in silence ("Thank you."): keep only words the VAD heard."""
        start = int((word.start - self.time_offset) * SAMPLE_RATE) - WORD_MARGIN
        end = int((word.end - self.time_offset) * SAMPLE_RATE) + WORD_MARGIN
        return self.history.peak(start, end) >= self.endpointer.off_threshold

    async def _partial_job(self, utt: Utterance) -> None:
        end = self.buffer.end
        utt.decoded_until = end
        started = time.perf_counter()
        try:
            words = await self._decode(utt.start, end, self.cfg.partial_beam_size, partial=True)
        except EngineError as exc:
            await self._emit({"type": "error", "code": "engine_error", "message": str(exc)})
            return
        finally:
            self._partial_seconds = time.perf_counter() - started
        self.transcribed_until = max(self.transcribed_until, end)
        if not words or self.closed:
            return
        # Even if the utterance ended meanwhile, its final comes only after this job: the partial
        # still shows the user text sooner, and the final then replaces it.
        stable, unstable = utt.agreement.update(words)
        utt.shown = True
        await self._emit(
            {
                "type": "partial",
                "text": join_words(stable + unstable),
                "stable": join_words(stable),
                "unstable": join_words(unstable),
                "start": round(words[0].start, 3),
                "end": round(words[-1].end, 3),
            }
        )

    async def _speculative_job(self, start: int, end: int) -> None:
        try:
            self._speculated = ((start, end), await self._decode(start, end, self.cfg.beam_size))
        except EngineError:
            self._speculated = None  # the final will decode (and report) for itself
            return
        self._cut_at_sentence_end()  # speech may have resumed while it decoded

    async def _final_job(self, start: int, end: int) -> None:
        speculated, self._speculated = self._speculated, None
        if speculated is not None and speculated[0] == (start, end):
            words = speculated[1]  # decoded at the pause, with the same audio and prompt
        else:
            words = await self._decode_final(start, end)
        self.transcribed_until = max(self.transcribed_until, end)
        self.final_until = max(self.final_until, end)
        if words:
            text = join_words(words)
            self.seq += 1
            self.committed_text = f"{self.committed_text} {text}".strip()[-4 * PROMPT_CHARS :]
            await self._emit(
                {
                    "type": "final",
                    "seq": self.seq,
                    "text": text,
                    "start": round(words[0].start, 3),
                    "end": round(words[-1].end, 3),
                    "words": [w.as_dict() for w in words],
                }
            )
        await self._emit({"type": "utterance_end", "at": self._t(end)})
        if self.utterance is None:
            self.buffer.trim(end - PAD)
        else:
            self.buffer.trim(min(end, self.utterance.start) - PAD)

    async def _decode_final(self, start: int, end: int) -> list[Word]:
        """Decode a final, retried with backoff; after FINAL_ATTEMPTS failures the client is told
        which stretch of speech has no text (it stays in the kept audio) and the session goes on."""
        delay = FINAL_RETRY_DELAY
        for attempt in range(1, FINAL_ATTEMPTS + 1):
            try:
                return await self._decode(start, end, self.cfg.beam_size)
            except EngineError as exc:
                if attempt == FINAL_ATTEMPTS or self.closed or isinstance(exc, EngineUnavailableError):
                    logger.error("Final decode failed %d times, giving up: %s", attempt, exc)
                    message = (
                        f"{exc}. The speech from {self._t(start)} s to {self._t(end)} s "
                        "could not be transcribed."
                    )
                    await self._emit({"type": "error", "code": "engine_error", "message": message})
                    return []
                logger.warning("Final decode failed (attempt %d): %s; retrying in %.1fs", attempt, exc, delay)
                await asyncio.sleep(delay)
                delay *= 2
        return []

    # -- helpers ------------------------------------------------------------------------------

    def _t(self, sample: int) -> float:
        return round(self.time_offset + sample / SAMPLE_RATE, 3)

    async def _emit(self, event: Event) -> None:
        await self._on_event(event)

    async def _collect(self, event: Event) -> None:
        self.events.append(event)


# The seed's public name.
RealtimeSTT = OptimizedRealtimeSTT
