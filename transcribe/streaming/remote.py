"""Inference on other machines: jobs over the Channels layer to ``runworker transcribe-inference``.

With ``TRANSCRIBE["INFERENCE"] = "channels"``, a session does not run the engine itself. Each job
(the audio window as int16 bytes, the language and the decode options) goes to the shared channel
``transcribe-inference``, which any number of worker processes consume
(``python manage.py runworker transcribe-inference``, ``transcribe.workers.InferenceWorker``); the
answer comes back on the session consumer's own channel.

Answers arrive on a channel of the session's own (``new_channel``), read by its own task: a
consumer's handlers run one at a time, so an answer routed through them would wait behind the very
handler (``stop`` flushing the last final) that waits for it.

A worker that dies mid-job takes the message with it, so each job has a deadline
(INFERENCE_TIMEOUT) and is sent again, to whichever worker is free, up to INFERENCE_RETRIES times.
A session still has at most one job in flight, so saturated workers make sessions coalesce audio
into bigger windows instead of queueing more jobs; a full channel (channels-redis ``capacity``) is
waited out the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from .. import metrics
from ..audio.decoder import pcm_s16le
from ..conf import transcribe_settings
from ..engines.base import DecodeOptions, Segment, Transcription, Word
from ..exceptions import EngineError, EngineUnavailableError
from .scheduler import InferenceScheduler, SchedulerBusyError

logger = logging.getLogger(__name__)

INFERENCE_CHANNEL = "transcribe-inference"
JOB_TYPE = "inference.job"  # handled by InferenceWorker.inference_job
RESULT_TYPE = "inference.result"

RetryCallback = Callable[[int, str], Awaitable[None]]


def _layer_errors() -> tuple[type[BaseException], ...]:
    """What a channel layer raises while its backend is away (Redis restarting)."""
    errors: list[type[BaseException]] = [OSError, TimeoutError]
    try:
        from redis.exceptions import RedisError

        errors.append(RedisError)
    except ImportError:  # no channels-redis here
        pass
    return tuple(errors)


LAYER_ERRORS = _layer_errors()


# -- the wire format (msgpack-friendly: bytes, str, numbers, lists, dicts) ----------------------


def encode_job(
    job: str, reply: str, audio: np.ndarray, language: str | None, options: DecodeOptions
) -> dict[str, Any]:
    pcm = pcm_s16le(audio)  # half of float32's size; the worker reads back the same samples
    temperature = options.temperature
    return {
        "type": JOB_TYPE,
        "job": job,
        "reply": reply,
        "audio": pcm,
        "language": language,
        "options": {
            "beam_size": options.beam_size,
            "word_timestamps": options.word_timestamps,
            "prompt": options.prompt,
            "temperature": list(temperature) if isinstance(temperature, tuple) else temperature,
            "max_new_tokens": options.max_new_tokens,
            "encoder_seconds": options.encoder_seconds,
            "speech_until": options.speech_until,
        },
    }


def decode_job(message: dict[str, Any]) -> tuple[np.ndarray, str | None, DecodeOptions]:
    audio = np.frombuffer(message["audio"], dtype="<i2").astype(np.float32) / 32768.0
    options = dict(message["options"])
    if isinstance(options.get("temperature"), list):
        options["temperature"] = tuple(options["temperature"])
    return audio, message["language"], DecodeOptions(**options)


def transcription_to_dict(result: Transcription) -> dict[str, Any]:
    return {
        "language": result.language,
        "duration": result.duration,
        "segments": [
            {
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "avg_logprob": s.avg_logprob,
                "no_speech_prob": s.no_speech_prob,
                "compression_ratio": s.compression_ratio,
                "words": [[w.start, w.end, w.text, w.probability] for w in s.words],
            }
            for s in result.segments
        ],
    }


def transcription_from_dict(data: dict[str, Any]) -> Transcription:
    return Transcription(
        segments=tuple(
            Segment(
                start=s["start"],
                end=s["end"],
                text=s["text"],
                words=tuple(Word(*w) for w in s["words"]),
                avg_logprob=s["avg_logprob"],
                no_speech_prob=s["no_speech_prob"],
                compression_ratio=s["compression_ratio"],
            )
            for s in data["segments"]
        ),
        language=data["language"],
        duration=data["duration"],
    )


# -- the session side ---------------------------------------------------------------------------


class RemoteEngineInfo:
    """What a session needs to know of the engine when the weights live on the workers."""

    def __init__(self) -> None:
        self.name = str(transcribe_settings.ENGINE)
        self.model_name = str(transcribe_settings.MODEL)
        # English-only Whisper models are named "*.en"; anything else is asked for its language.
        self.multilingual = not self.model_name.endswith(".en")

    def transcribe_numpy(self, *args: Any, **kwargs: Any) -> Transcription:
        raise EngineError("Inference runs on the transcribe-inference workers")


class RemoteInferenceScheduler(InferenceScheduler):
    """Sends a session's jobs to the workers and reads their answers on a channel of its own."""

    def __init__(
        self,
        channel_layer: Any,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        on_retry: RetryCallback | None = None,
    ) -> None:
        super().__init__(executor=None)
        self.layer = channel_layer
        self.reply_channel: str | None = None
        self._reader: asyncio.Task[None] | None = None
        self.timeout = float(transcribe_settings.INFERENCE_TIMEOUT if timeout is None else timeout)
        self.retries = int(transcribe_settings.INFERENCE_RETRIES if retries is None else retries)
        self.on_retry = on_retry
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def transcribe(
        self, engine: Any, audio: np.ndarray, language: str | None, options: DecodeOptions
    ) -> Transcription:
        if self.busy:
            raise SchedulerBusyError("This session already has an inference job in flight")
        self.busy = True
        started = time.perf_counter()
        try:
            result = await self._run_remote(audio, language, options)
            metrics.observe_inference(time.perf_counter() - started, len(audio) / 16_000)
            return result
        finally:
            self.busy = False
            self.jobs += 1
            self.busy_seconds += time.perf_counter() - started

    async def _run_remote(
        self, audio: np.ndarray, language: str | None, options: DecodeOptions
    ) -> Transcription:
        if self._reader is None:
            # channels-redis reads all of a process's own channels through one key per prefix, and
            # only one reader at a time: a prefix other than the default would starve behind the
            # consumers' own channel reads. Keep the default.
            self.reply_channel = await self.layer.new_channel()
            self._reader = asyncio.create_task(self._read_answers(self.reply_channel))
        assert self.reply_channel is not None
        for attempt in range(self.retries + 1):
            job = uuid.uuid4().hex  # a new id per attempt: a late answer to a lost one is ignored
            answer = asyncio.get_running_loop().create_future()
            self._pending[job] = answer
            try:
                await self._send(encode_job(job, self.reply_channel, audio, language, options))
                reply = await asyncio.wait_for(answer, self.timeout)
            except TimeoutError:
                why = f"no inference worker answered within {self.timeout:g}s"
            else:
                if reply.get("ok"):
                    return transcription_from_dict(reply["result"])
                raise EngineError(f"The inference worker failed: {reply.get('error')}")
            finally:
                self._pending.pop(job, None)
            logger.warning("Inference job %s: %s (attempt %d)", job, why, attempt + 1)
            if attempt < self.retries and self.on_retry is not None:
                await self.on_retry(attempt + 1, why)
        raise EngineUnavailableError(f"Inference failed: {why}, {self.retries + 1} times")

    async def _send(self, message: dict[str, Any]) -> None:
        from channels.exceptions import ChannelFull

        delay = 0.05
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                await self.layer.send(INFERENCE_CHANNEL, message)
                return
            except ChannelFull:
                pass  # every worker is busy and the queue is full: wait, as a local session would
            except LAYER_ERRORS as exc:  # the layer's Redis restarts
                logger.warning("Could not queue an inference job (%s); retrying", exc)
            if time.monotonic() + delay > deadline:
                raise TimeoutError from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _read_answers(self, channel: str) -> None:
        while True:
            try:
                message = await self.layer.receive(channel)
            except LAYER_ERRORS as exc:
                # Redis went away: answers sent meanwhile are lost, and their jobs time out and
                # are sent again. Keep listening once it is back.
                logger.warning("Lost the inference answer channel (%s); reconnecting", exc)
                await asyncio.sleep(0.5)
                continue
            answer = self._pending.get(message.get("job", ""))
            if answer is not None and not answer.done():
                answer.set_result(message)  # an answer to an abandoned attempt is dropped

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
