"""Give the heap that inference freed back to the operating system.

CTranslate2 allocates buffers of a different size for every window it decodes, and glibc keeps
what is freed for reuse: a server streaming for an hour grew by about 95 MiB/hour of resident
memory that was free but never returned (``malloc_trim`` gave back ~50 MiB at once; Python's own
allocations did not grow). Trimming after an inference job, at most every ``TRIM_INTERVAL`` seconds,
keeps a long-running server flat; it costs a few milliseconds on the inference thread.

glibc also gives every thread that allocates while another holds the lock an arena of its own, up
to 8 per core, and each keeps its own free memory: daphne's, asgiref's, the executor's and CTranslate2's
threads. ``tune_allocator`` caps them at ``ARENA_MAX`` when the app starts, before
those threads exist (``bench/memory.py`` measures both against glibc's defaults).

CTranslate2's x86 build links Intel MKL, whose own memory manager keeps every buffer it freed for
reuse, per thread: ``tune_allocator`` turns it off too (``MKL_DISABLE_FAST_MM``), before the engine
loads.

CTranslate2 (and PyTorch, for the openai engine) compile the encoder's convolutions with oneDNN,
which caches up to 1024 compiled primitives: about 1.2 MiB for every encoder length it meets, and a
long session meets hundreds (a window grows with an utterance past 9 s). That cache, not the heap,
was most of the growth over an hour; ``cap_primitive_cache`` keeps it to the few lengths in use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

TRIM_INTERVAL = 30.0  # seconds
ARENA_MAX = 2
M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)
# Set in the environment, these are the operator's choice (or a benchmark's baseline): left alone.
MALLOC_ENVIRONMENT = ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")
# Partials, finals and full windows: three lengths of a few primitives each stay compiled. Compiling
# a length anew cost no measurable time (400 encodes over 200 lengths: 33.8 s capped, 34.7 s not).
PRIMITIVE_CACHE_CAPACITY = 32
PRIMITIVE_CACHE_ENVIRONMENT = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY")


def _glibc(name: str) -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """A glibc function, or None elsewhere (musl, macOS): then there is nothing to do."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


_trim = _glibc("malloc_trim")
_mallopt = _glibc("mallopt")
_lock = threading.Lock()
_last = time.monotonic()


def tune_allocator() -> bool:
    """Cap glibc's arenas at ARENA_MAX for this process and turn MKL's buffer cache off; True when
    done. Arenas made before the call stay, and MKL reads its variable when it first allocates, so
    this runs when the app starts (``TranscribeConfig.ready``)."""
    if _mallopt is None or any(name in os.environ for name in MALLOC_ENVIRONMENT):
        return False
    os.environ.setdefault("MKL_DISABLE_FAST_MM", "1")  # MKL takes any value as "off"
    return bool(_mallopt(M_ARENA_MAX, ARENA_MAX))


def cap_primitive_cache() -> bool:
    """Cap oneDNN's primitive cache at PRIMITIVE_CACHE_CAPACITY unless the environment sizes it;
    True when done. oneDNN reads the variable when it first compiles, so this runs at app start."""
    if any(name in os.environ for name in PRIMITIVE_CACHE_ENVIRONMENT):
        return False
    os.environ[PRIMITIVE_CACHE_ENVIRONMENT[0]] = str(PRIMITIVE_CACHE_CAPACITY)
    return True


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
