"""The inference workers: ``python manage.py runworker transcribe-inference``.

A worker takes one job at a time from the shared ``transcribe-inference`` channel, runs the engine
on the process's inference executor, and answers on the job's reply channel. Channels' own worker
pulls messages as fast as they arrive and queues them in the process, so a busy worker would hoard
jobs that an idle one could run (and lose them all if it died): ``InferenceWorkerServer`` receives
the next job only when the last one is answered. Start as many workers as the machines have cores
or accelerators for one job each; they share the queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from channels.consumer import AsyncConsumer
from channels.worker import Worker

from .engines import get_engine
from .heap import then_trim
from .streaming.executor import get_executor
from .streaming.remote import (
    INFERENCE_CHANNEL,
    JOB_TYPE,
    LAYER_ERRORS,
    RESULT_TYPE,
    decode_job,
    transcription_to_dict,
)

logger = logging.getLogger(__name__)


async def run_job(channel_layer: Any, message: dict[str, Any]) -> None:
    """Transcribe one job and answer it; a failure is answered too, never raised."""
    started = time.perf_counter()
    reply: dict[str, Any] = {"type": RESULT_TYPE, "job": message.get("job")}
    try:
        audio, language, options = decode_job(message)
        loop = asyncio.get_running_loop()
        engine = await loop.run_in_executor(get_executor(), get_engine)  # weights load once
        result = await loop.run_in_executor(
            get_executor(), then_trim, engine.transcribe_numpy, audio, language, options
        )
        reply.update(ok=True, result=transcription_to_dict(result))
        logger.debug(
            "Job %s: %.1f s of audio in %.2f s",
            reply["job"],
            len(audio) / 16000,
            time.perf_counter() - started,
        )
    except Exception as exc:  # a worker outlives any one bad job; the session is told why
        logger.exception("Inference job %s failed", reply["job"])
        reply.update(ok=False, error=str(exc) or type(exc).__name__)
    if isinstance(message.get("reply"), str):
        try:
            await channel_layer.send(message["reply"], reply)
        except LAYER_ERRORS as exc:
            logger.warning("Could not answer job %s (%s); the session will send it again", reply["job"], exc)


class InferenceWorker(AsyncConsumer):
    """The job handler as a Channels consumer, for ``ChannelNameRouter(transcribe.routing.channel_routes)``."""

    async def inference_job(self, message: dict[str, Any]) -> None:
        await run_job(self.channel_layer, message)


class InferenceWorkerServer(Worker):
    """Channels' worker, except that the inference channel is read one job at a time."""

    async def listener(self, channel: str) -> None:
        if channel != INFERENCE_CHANNEL:
            await super().listener(channel)
            return
        logger.info("Inference worker ready on %r", channel)
        while True:
            try:
                message = await self.channel_layer.receive(channel)
            except LAYER_ERRORS as exc:
                logger.warning("The channel layer is unreachable (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            if message.get("type") == JOB_TYPE:
                await run_job(self.channel_layer, message)
            else:
                logger.warning("Ignoring a %r message on %r", message.get("type"), channel)
