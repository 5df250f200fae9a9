"""Libraries that others import but this app never calls stay unloaded until something uses them.

faster-whisper imports PyAV at import time, for ``decode_audio`` on files. The app never calls it
(ffmpeg decodes the stream and the engine gets samples), yet PyAV's codec libraries were 15 MiB of
every server's resident memory. ``defer_unused`` (called when the app starts) makes ``import av``
hand out a module whose code runs on first attribute access (``importlib.util.LazyLoader``), so
``decode_audio`` still works for anyone who calls it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

DEFERRED = frozenset({"av"})


class LazyFinder(importlib.abc.MetaPathFinder):
    """Finds ``names`` on sys.path as usual, with a loader that defers running the module.

    A meta path finder rather than a lazy module put in sys.modules up front: on Python 3.11 every
    later ``import`` of a module already in sys.modules reads its ``__spec__``, which loads it.
    """

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec  # None: the other finders get their turn


def defer_unused(names: frozenset[str] = DEFERRED) -> bool:
    """Install the finder for ``names`` once; False when one of them is loaded already (too late)."""
    if names & sys.modules.keys():
        return False
    if not any(isinstance(f, LazyFinder) and f.names == names for f in sys.meta_path):
        sys.meta_path.insert(0, LazyFinder(names))
    return True
