"""Prometheus metrics of the streaming endpoint, served at the app's ``metrics`` URL (``health.py``).

The consumer reports what happens through the small functions below (``session_started``,
``observe_lag``, ``observe_inference``, ``final_stored``, ``error_sent``, ``closed``). What describes
the present (active and draining sessions, the worst lag, jobs in flight, the executor's queue) is
read from the live objects at scrape time instead, so a missed call can never make it drift.

The metrics live in prometheus_client's default ``REGISTRY``, so a project's own exporter shows them
too. They are per process: with several ASGI processes, scrape each one. The real-time factor of
inference (seconds of compute per second of audio decoded) in PromQL::

    rate(transcribe_inference_seconds_sum[5m]) / rate(transcribe_inference_audio_seconds_total[5m])
"""

from __future__ import annotations

import sys
from typing import Any, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from .protocol import CloseCode, ErrorCode

M = TypeVar("M", bound=MetricWrapperBase)

# Label values are bounded: a client chooses its own close code, and must not mint time series.
ERROR_CODES = frozenset(value for name, value in vars(ErrorCode).items() if name.isupper())
CLOSE_CODES = frozenset({*(int(code) for code in CloseCode), *range(1000, 1016)})
OTHER = "other"


def _metric(cls: type[M], name: str, documentation: str, **kwargs: Any) -> M:
    """The metric called ``name``, created once. A second import of this module (a reload, a test
    that clears ``sys.modules``) reuses it instead of failing with "Duplicated timeseries"."""
    # The registry has no public lookup by name; this private dict is what it checks duplicates in.
    existing = getattr(REGISTRY, "_names_to_collectors", {}).get(name)
    if existing is None:
        return cls(name, documentation, **kwargs)
    if not isinstance(existing, cls):
        raise ValueError(f"{name} is already registered as a {type(existing).__name__}")
    return existing


ACTIVE_SESSIONS = _metric(Gauge, "transcribe_active_sessions", "Sessions streaming in this process.")
DRAINING_SESSIONS = _metric(
    Gauge,
    "transcribe_draining_sessions",
    "Sessions whose client dropped, still being transcribed and stored.",
)
SESSIONS_STARTED = _metric(
    Counter, "transcribe_sessions_started_total", "Sessions started or resumed (a ready event sent)."
)
LAG = _metric(
    Histogram,
    "transcribe_session_lag_seconds",
    "Seconds of speech received but not yet transcribed, as reported in status events.",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0),
)
MAX_LAG = _metric(Gauge, "transcribe_max_lag_seconds", "The largest lag of the active sessions, now.")
INFERENCE = _metric(
    Histogram,
    "transcribe_inference_seconds",
    "Wall seconds of one inference job (partial or final), from submission to result.",
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
)
INFERENCE_AUDIO = _metric(
    Counter,
    "transcribe_inference_audio_seconds_total",
    "Seconds of audio given to inference jobs (a window decoded twice counts twice).",
)
IN_FLIGHT = _metric(
    Gauge, "transcribe_inference_in_flight", "Sessions with an inference job submitted and not yet done."
)
QUEUE_DEPTH = _metric(
    Gauge,
    "transcribe_inference_queue_depth",
    "Jobs waiting for a thread of the local inference executor (0 with remote inference).",
)
FINALS = _metric(Counter, "transcribe_finals_total", "Final segments stored in the database.")
ERRORS = _metric(
    Counter,
    "transcribe_errors_total",
    "stt.v1 error events sent to clients, by error code.",
    labelnames=["code"],
)
CLOSES = _metric(
    Counter,
    "transcribe_closes_total",
    "WebSocket closes, by close code (rejections included: 4401, 4413, 4429, ...).",
    labelnames=["code"],
)


def _consumers() -> list[Any]:
    # Never imported for a scrape: a process that has not loaded the consumer has no sessions.
    module = sys.modules.get("transcribe.consumers")
    return list(module.TranscribeConsumer.active) if module is not None else []


def _draining() -> int:
    module = sys.modules.get("transcribe.consumers")
    return len(module.TranscribeConsumer.draining) if module is not None else 0


def _pipelines() -> list[Any]:
    return [stt for stt in (getattr(c, "stt", None) for c in _consumers()) if stt is not None]


def _max_lag() -> float:
    return max((float(stt.lag) for stt in _pipelines()), default=0.0)


def _in_flight() -> int:
    return sum(1 for stt in _pipelines() if getattr(stt.scheduler, "busy", False))


def _queue_depth() -> int:
    module = sys.modules.get("transcribe.streaming.executor")
    executor = getattr(module, "_executor", None)
    # ThreadPoolExecutor keeps submitted jobs in ``_work_queue`` until a thread is free.
    queue = getattr(executor, "_work_queue", None)
    return queue.qsize() if queue is not None else 0


ACTIVE_SESSIONS.set_function(lambda: len(_consumers()))
DRAINING_SESSIONS.set_function(_draining)
MAX_LAG.set_function(_max_lag)
IN_FLIGHT.set_function(_in_flight)
QUEUE_DEPTH.set_function(_queue_depth)
# Known codes start at 0, so that rate() and increase() see their first event.
for _code in ERROR_CODES:
    ERRORS.labels(code=_code)
for _code in CloseCode:
    CLOSES.labels(code=str(int(_code)))


# -- what the consumer calls -----------------------------------------------------------------


def session_started() -> None:
    """A session started or was resumed (its ``ready`` event is sent)."""
    SESSIONS_STARTED.inc()


def observe_lag(seconds: float) -> None:
    """A session's lag, each time a ``status`` event reports it."""
    LAG.observe(max(0.0, seconds))


def observe_inference(seconds: float, audio_seconds: float) -> None:
    """One inference job took ``seconds`` to decode ``audio_seconds`` of audio."""
    INFERENCE.observe(max(0.0, seconds))
    INFERENCE_AUDIO.inc(max(0.0, audio_seconds))


def final_stored() -> None:
    """A final segment was committed to the database."""
    FINALS.inc()


def error_sent(code: str) -> None:
    """An ``error`` event with this stt.v1 error code was sent."""
    ERRORS.labels(code=code if code in ERROR_CODES else OTHER).inc()


def closed(code: int | None) -> None:
    """The socket closed with this code (``None``: a close without a code, which is 1000)."""
    value = 1000 if code is None else int(code)
    CLOSES.labels(code=str(value) if value in CLOSE_CODES else OTHER).inc()
