"""``transcribe.streaming.heap``: inference jobs give freed heap back to the OS now and then."""

from __future__ import annotations

import math

import numpy as np
import pytest

from transcribe.streaming import heap


def rss_kib() -> int:
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])


def test_then_trim_returns_the_jobs_result_and_trims_once_per_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(heap, "_trim", lambda pad: calls.append(pad) or 1)
    monkeypatch.setattr(heap, "TRIM_INTERVAL", 3600.0)
    monkeypatch.setattr(heap, "_last", -math.inf)  # long ago (monotonic time may start near 0)
    assert heap.then_trim(lambda a, b: a + b, 2, 3) == 5
    assert heap.then_trim(lambda: "again") == "again"
    assert calls == [0]  # the second job came within the interval


def test_then_trim_trims_even_when_the_job_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(heap, "_trim", lambda pad: calls.append(pad) or 1)
    monkeypatch.setattr(heap, "_last", -math.inf)

    def fail() -> None:
        raise RuntimeError("engine crashed")

    with pytest.raises(RuntimeError):
        heap.then_trim(fail)
    assert calls == [0]


@pytest.mark.skipif(heap._trim is None, reason="not glibc")
def test_the_real_trim_returns_freed_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    # Many mid-sized blocks (below the mmap threshold) freed but for the last one: glibc keeps the
    # heap below it resident until trimmed.
    blocks = [np.ones(16_000, dtype=np.float64) for _ in range(2_000)]  # 250 MiB in 125 KiB blocks
    keep = blocks[-1]
    del blocks
    before = rss_kib()
    monkeypatch.setattr(heap, "_last", -math.inf)
    heap.trim_now_and_then()
    assert rss_kib() < before - 50_000, "malloc_trim gave nothing back"
    assert keep.sum() == 16_000
