"""The dedicated inference executor (the seed's optimization #5).

Inference never runs on the event loop nor in asgiref's default thread (which ORM calls share):
one bounded pool per process, sized by TRANSCRIBE["WORKERS"], shared by every session.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from ..conf import transcribe_settings

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def get_executor() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=max(1, int(transcribe_settings.WORKERS)),
                thread_name_prefix="transcribe-inference",
            )
        return _executor


def shutdown_executor() -> None:
    """Stop the pool (tests, or settings that changed WORKERS); a new one starts on next use."""
    global _executor
    with _lock:
        if _executor is not None:
            _executor.shutdown(wait=True)
            _executor = None
