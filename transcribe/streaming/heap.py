"""Give the heap that inference freed back to the operating system.

CTranslate2 allocates buffers of a different size for every window it decodes, and glibc keeps
what is freed for reuse: a server streaming for an hour grew by about 95 MiB/hour of resident
memory that was free but never returned (``malloc_trim`` gave back ~50 MiB at once; Python's own
allocations did not grow). Trimming after an inference job, at most every ``TRIM_INTERVAL`` seconds,
keeps a long-running server flat; it costs a few milliseconds on the inference thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

TRIM_INTERVAL = 30.0  # seconds


def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """glibc's malloc_trim, or None elsewhere (musl, macOS): then there is nothing to do."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_trim = _malloc_trim()
_lock = threading.Lock()
_last = time.monotonic()


def trim_now_and_then() -> None:
    """Call after a job; trims when TRIM_INTERVAL has passed since the last trim in this process."""
    global _last
    if _trim is None:
        return
    with _lock:
        now = time.monotonic()
        if now - _last < TRIM_INTERVAL:
            return
        _last = now
    _trim(0)


def then_trim(fn: Callable[..., T], *args: object) -> T:
    """Run an inference job (on its thread), then trim now and then."""
    try:
        return fn(*args)
    finally:
        trim_now_and_then()
