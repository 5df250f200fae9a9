"""Speech engines behind one protocol (``STTEngine.transcribe_numpy``), loaded lazily and shared."""

from __future__ import annotations

import threading
from typing import Any

from django.utils.module_loading import import_string

from ..conf import transcribe_settings
from .base import SAMPLE_RATE, DecodeOptions, Segment, STTEngine, Transcription, Word

__all__ = [
    "SAMPLE_RATE",
    "DecodeOptions",
    "STTEngine",
    "Segment",
    "Transcription",
    "Word",
    "get_engine",
    "load_engine",
]

ENGINES = {
    "faster-whisper": "transcribe.engines.faster.FasterWhisperEngine",
    "openai-whisper": "transcribe.engines.openai.OpenAIWhisperEngine",
}

_lock = threading.Lock()
_loaded: dict[tuple[Any, ...], STTEngine] = {}


def load_engine(
    engine: str | None = None,
    model: str | None = None,
    *,
    device: str | None = None,
    compute_type: str | None = None,
    cpu_threads: int | None = None,
) -> STTEngine:
    """Load (once per process) and return the engine for these settings, defaulting to TRANSCRIBE."""
    s = transcribe_settings
    key = (
        engine or s.ENGINE,
        model or s.MODEL,
        device or s.DEVICE,
        compute_type or s.COMPUTE_TYPE,
        s.CPU_THREADS if cpu_threads is None else cpu_threads,
    )
    with _lock:
        if key not in _loaded:
            _loaded[key] = _create(*key)
        return _loaded[key]


def get_engine() -> STTEngine:
    """The engine configured by TRANSCRIBE."""
    return load_engine()


def _create(engine: str, model: str, device: str, compute_type: str, cpu_threads: int) -> STTEngine:
    from .resolver import resolve_model

    cls = import_string(ENGINES.get(engine, engine))
    if engine == "openai-whisper" or getattr(cls, "loads_own_weights", False):
        return cls.from_settings(model, device=device, cpu_threads=cpu_threads)  # type: ignore[no-any-return]
    path = resolve_model(
        model, cache=transcribe_settings.model_cache, allow_downloads=transcribe_settings.ALLOW_DOWNLOADS
    )
    return cls(path, model_name=model, device=device, compute_type=compute_type, cpu_threads=cpu_threads)  # type: ignore[no-any-return]
