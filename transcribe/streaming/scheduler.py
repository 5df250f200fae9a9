"""``InferenceScheduler``: at most one inference job in flight per session, on the shared executor.

Sessions share the executor's FIFO queue, and since none can queue a second job before its first
is done, one talkative session cannot starve the others. Audio that arrives while a job runs is
not queued as more jobs: the next job simply reads the longer buffer (coalescing).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, TypeVar

from .. import metrics
from ..heap import then_trim
from .executor import get_executor

if TYPE_CHECKING:
    import numpy as np

    from ..engines.base import DecodeOptions, Transcription

T = TypeVar("T")


class SchedulerBusyError(RuntimeError):
    """A second job was submitted while the session's first one runs."""


class InferenceScheduler:
    def __init__(self, executor: Executor | None = None) -> None:
        self._executor = executor
        self.busy = False
        self.jobs = 0
        self.busy_seconds = 0.0  # wall time spent in jobs, queueing included

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self.busy:
            raise SchedulerBusyError("This session already has an inference job in flight")
        self.busy = True
        started = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, then_trim, fn, *args)
        finally:
            self.busy = False
            self.jobs += 1
            self.busy_seconds += time.perf_counter() - started

    @property
    def executor(self) -> Executor:
        return self._executor or get_executor()

    async def transcribe(
        self, engine: Any, audio: np.ndarray, language: str | None, options: DecodeOptions
    ) -> Transcription:
        """One engine call for the session (``RemoteInferenceScheduler`` sends it to a worker instead)."""
        started = time.perf_counter()
        result = await self.run(engine.transcribe_numpy, audio, language, options)
        metrics.observe_inference(time.perf_counter() - started, len(audio) / 16_000)
        return result

    async def close(self) -> None:
        """Release what the scheduler holds (a remote one stops reading its answers)."""
