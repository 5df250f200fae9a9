"""``transcribe.heap``: inference jobs give freed heap back to the OS now and then."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from transcribe import heap


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


ARENAS_AFTER_THREADS = """
import ctypes, os, sys, threading
sys.path.insert(0, os.getcwd())
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
import django
django.setup()  # the app's ready() tunes the allocator
barrier = threading.Barrier(8)

def allocate():
    barrier.wait()  # all at once, so that glibc sees contention and hands out arenas
    blocks = [bytearray(4096) for _ in range(20_000)]
    del blocks

threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
ctypes.CDLL("libc.so.6").malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


def arenas_in_a_fresh_process(env: dict[str, str]) -> int:
    out = subprocess.run(
        [sys.executable, "-c", ARENAS_AFTER_THREADS],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return sum(line.startswith("Arena ") for line in out.stderr.splitlines())


@pytest.mark.skipif(heap._mallopt is None, reason="not glibc")
def test_the_app_caps_glibc_arenas_unless_the_environment_chose() -> None:
    env = {k: v for k, v in os.environ.items() if k not in heap.MALLOC_ENVIRONMENT}
    tuned = arenas_in_a_fresh_process(env)
    assert 1 <= tuned <= heap.ARENA_MAX
    # The operator's MALLOC_ARENA_MAX wins: here glibc's own default, 8 per core.
    chosen = arenas_in_a_fresh_process({**env, "MALLOC_ARENA_MAX": "16"})
    assert chosen > heap.ARENA_MAX


def test_tune_allocator_stands_aside_when_malloc_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(heap, "_mallopt", lambda param, value: calls.append((param, value)) or 1)
    monkeypatch.delenv("MKL_DISABLE_FAST_MM", raising=False)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert heap.tune_allocator() is False
    assert "MKL_DISABLE_FAST_MM" not in os.environ  # MKL's buffer cache left on as well
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert heap.tune_allocator() is True
    assert calls == [(heap.M_ARENA_MAX, heap.ARENA_MAX)]
    assert os.environ["MKL_DISABLE_FAST_MM"] == "1"


@pytest.mark.skipif(
    any(name in os.environ for name in heap.MALLOC_ENVIRONMENT),
    reason="the environment tunes malloc, and tune_allocator leaves MKL alone too",
)
def test_the_app_turned_mkls_buffer_cache_off_when_it_started() -> None:
    assert os.environ.get("MKL_DISABLE_FAST_MM") == "1"  # set by TranscribeConfig.ready()


# -- oneDNN's primitive cache -------------------------------------------------------------------

ENCODE_LENGTHS = """
import os, sys
import numpy as np
sys.path.insert(0, os.getcwd())
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
import django
django.setup()  # the app's ready() caps oneDNN's cache
from transcribe.engines import get_engine
model = get_engine().model
# One length, a dozen others (each compiles a few primitives), then the first length again.
for frames in (1000, *range(1100, 2300, 100), 1000):
    model.encode(np.zeros((80, frames), dtype=np.float32))
"""


def convolutions_found_compiled(env: dict[str, str]) -> int:
    """Encoder convolutions oneDNN took from its cache, in a fresh process (its verbose log)."""
    out = subprocess.run(
        [sys.executable, "-c", ENCODE_LENGTHS],
        cwd=Path(__file__).resolve().parent.parent,
        env={**env, "ONEDNN_VERBOSE": "2"},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    creations = [line for line in out.stdout.splitlines() if ",convolution," in line and "create:" in line]
    assert creations, f"no oneDNN convolutions in the log:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return sum("create:cache_hit" in line for line in creations)


def test_the_app_caps_onednns_primitive_cache_unless_the_environment_sizes_it() -> None:
    env = {k: v for k, v in os.environ.items() if k not in heap.PRIMITIVE_CACHE_ENVIRONMENT}
    # Capped, the first length's convolutions were dropped for the later lengths': compiled again.
    assert convolutions_found_compiled(env) == 0
    # The operator's size wins: here oneDNN's own default, which keeps every length.
    assert convolutions_found_compiled({**env, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"}) > 0


def test_cap_primitive_cache_stands_aside_when_the_environment_sizes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in heap.PRIMITIVE_CACHE_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DNNL_PRIMITIVE_CACHE_CAPACITY", "8")  # oneDNN's older name counts too
    assert heap.cap_primitive_cache() is False
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ
    monkeypatch.delenv("DNNL_PRIMITIVE_CACHE_CAPACITY")
    assert heap.cap_primitive_cache() is True
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(heap.PRIMITIVE_CACHE_CAPACITY)
