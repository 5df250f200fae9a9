"""Feed recorded audio through the real streaming pipeline at a chosen speed and time it.

Used by ``transcribe_file --stream``, the tests and the benchmarks: latency of a final is the wall
time from the moment its last word was fed (at ``speed`` times real time) to the moment the final
was emitted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..audio.decoder import pcm_s16le
from .realtime import SAMPLE_RATE, Event, OptimizedRealtimeSTT

__all__ = ["StreamReport", "pcm_s16le", "replay"]


@dataclass
class StreamReport:
    events: list[Event] = field(default_factory=list)
    final_latencies: list[float] = field(default_factory=list)  # seconds
    first_partial_latencies: list[float] = field(default_factory=list)  # seconds after speech start
    chunk_seconds: list[float] = field(default_factory=list)
    duration: float = 0.0
    wall: float = 0.0
    inference_seconds: float = 0.0

    @property
    def finals(self) -> list[Event]:
        return [e for e in self.events if e["type"] == "final"]

    @property
    def text(self) -> str:
        return " ".join(e["text"] for e in self.finals)

    def latency_summary(self) -> dict[str, float | None]:
        def ms(values: list[float], q: float) -> float | None:
            if not values:
                return None
            return round(1000 * float(np.percentile(values, q)), 1)

        return {
            "final_p50_ms": ms(self.final_latencies, 50),
            "final_p95_ms": ms(self.final_latencies, 95),
            "first_partial_ms": ms(self.first_partial_latencies, 50),
        }

    @property
    def rtf(self) -> float:
        """Inference seconds per audio second (CPU cost of transcription)."""
        return round(self.inference_seconds / self.duration, 4) if self.duration else 0.0


async def replay(
    samples: npt.NDArray[np.float32],
    *,
    speed: float = 1.0,
    chunk_seconds: float = 0.25,
    on_event: Callable[[Event], Awaitable[None]] | None = None,
    **stt_options: Any,
) -> StreamReport:
    """Stream ``samples`` (16 kHz mono) as pcm_s16le frames; ``speed=0`` means as fast as possible."""
    report = StreamReport(duration=len(samples) / SAMPLE_RATE)
    timed = speed > 0
    started = 0.0
    speech_start: float | None = None

    def fed_at(seconds: float) -> float:
        return started + seconds / speed

    async def collect(event: Event) -> None:
        nonlocal speech_start
        now = time.perf_counter()
        report.events.append(event)
        if timed and event["type"] == "speech_started":
            speech_start = event["at"]
        elif (
            timed and event["type"] == "partial" and speech_start is not None and event["end"] > speech_start
        ):
            # (a partial that ends before the onset is the previous utterance's last one)
            report.first_partial_latencies.append(now - fed_at(speech_start))
            speech_start = None
        elif timed and event["type"] == "final":
            report.final_latencies.append(now - fed_at(event["end"]))
        if on_event is not None:
            await on_event(event)

    stt = OptimizedRealtimeSTT(on_event=collect, fmt="pcm_s16le", **stt_options)
    data = pcm_s16le(samples)
    started = time.perf_counter()  # after set-up: loading the engine is not streaming latency
    step = int(chunk_seconds * SAMPLE_RATE) * 2
    try:
        for offset in range(0, len(data), step):
            if timed:
                delay = fed_at(offset / 2 / SAMPLE_RATE) - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # let finished jobs report between chunks
            await stt.process_audio_chunk(data[offset : offset + step])
        await stt.flush()
    finally:
        await stt.close()
    report.wall = time.perf_counter() - started
    report.chunk_seconds = list(stt.stats.seconds)
    report.inference_seconds = stt.scheduler.busy_seconds
    return report
