"""System checks for the TRANSCRIBE settings and the Channels wiring.

IDs:
- ``transcribe.E001`` unknown key in TRANSCRIBE.
- ``transcribe.E002`` ENGINE is neither a known engine nor an importable class path.
- ``transcribe.E003`` a numeric setting is out of range.
- ``transcribe.E004`` ``daphne`` missing from INSTALLED_APPS, or listed after staticfiles.
- ``transcribe.E005`` LANGUAGE/DEVICE/INFERENCE/VAD_RUNTIME has an invalid value.
- ``transcribe.W001`` InMemoryChannelLayer with DEBUG=False (not for production).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from .conf import DEFAULTS

RANGES: dict[str, tuple[float, float]] = {
    "WORKERS": (1, 64),
    "CPU_THREADS": (0, 256),
    "BLAS_THREADS": (0, 256),
    "MAX_SESSIONS": (1, 100_000),
    "MAX_SESSION_SECONDS": (1, 7 * 24 * 3600),
    "MAX_FRAME_BYTES": (1024, 64 * 1024 * 1024),
    "IDLE_TIMEOUT": (1, 24 * 3600),
    "STEP": (0.1, 10),
    "FIRST_STEP": (0.1, 10),
    "PARTIAL_SHARE": (0.05, 1),
    "MIN_SILENCE": (0.1, 10),
    "MAX_UTTERANCE": (2, 29),  # Whisper sees at most 30 s at once
    "SOFT_UTTERANCE": (1, 29),
    "SOFT_SILENCE": (0.05, 10),
    "VAD_THRESHOLD": (0.05, 0.95),
    "BEAM_SIZE": (1, 20),
    "PARTIAL_BEAM_SIZE": (1, 20),
    "STATUS_INTERVAL": (0.1, 3600),
    "PARTIAL_ENCODER_SECONDS": (0, 30),
    "FINAL_ENCODER_SECONDS": (0, 30),
    "SPECULATE_AFTER": (0, 10),
}


def _importable_module(name: str) -> bool:
    """Whether module ``name`` exists, without importing it (find_spec imports parent packages)."""
    try:
        return bool(name) and importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@register(Tags.compatibility)
def check_settings(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    from .engines import ENGINES

    errors: list[CheckMessage] = []
    user: dict[str, Any] = getattr(settings, "TRANSCRIBE", None) or {}
    for key in user:
        if key not in DEFAULTS:
            errors.append(
                Error(
                    f"Unknown setting TRANSCRIBE[{key!r}].",
                    hint=f"Known keys: {', '.join(DEFAULTS)}.",
                    id="transcribe.E001",
                )
            )
    merged = {**DEFAULTS, **user}
    engine = merged["ENGINE"]
    if (
        not isinstance(engine, str)
        or engine not in ENGINES
        and not _importable_module(engine.rpartition(".")[0])
    ):
        errors.append(
            Error(
                f"TRANSCRIBE['ENGINE'] = {engine!r} is not an engine.",
                hint=f"Use one of {', '.join(ENGINES)} or a dotted class path.",
                id="transcribe.E002",
            )
        )
    for key, (low, high) in RANGES.items():
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            errors.append(
                Error(
                    f"TRANSCRIBE[{key!r}] = {value!r} must be a number between {low} and {high}.",
                    id="transcribe.E003",
                )
            )
    language = merged["LANGUAGE"]
    if language is not None and not (isinstance(language, str) and 2 <= len(language) <= 8):
        errors.append(
            Error(
                "TRANSCRIBE['LANGUAGE'] must be a language code such as 'en', or None.", id="transcribe.E005"
            )
        )
    if merged["DEVICE"] not in ("cpu", "cuda", "auto"):
        errors.append(Error("TRANSCRIBE['DEVICE'] must be 'cpu', 'cuda' or 'auto'.", id="transcribe.E005"))
    if merged["VAD_RUNTIME"] not in ("numpy", "onnxruntime"):
        errors.append(
            Error("TRANSCRIBE['VAD_RUNTIME'] must be 'numpy' or 'onnxruntime'.", id="transcribe.E005")
        )
    if merged["INFERENCE"] not in ("local", "channels"):
        errors.append(Error("TRANSCRIBE['INFERENCE'] must be 'local' or 'channels'.", id="transcribe.E005"))
    layer = getattr(settings, "CHANNEL_LAYERS", {}).get("default", {}).get("BACKEND", "")
    if merged["INFERENCE"] == "channels" and (not layer or layer.endswith("InMemoryChannelLayer")):
        errors.append(
            Error(
                "TRANSCRIBE['INFERENCE'] = 'channels' needs a channel layer that other processes share.",
                hint="Configure channels_redis.core.RedisChannelLayer (the demo: set REDIS_URL).",
                id="transcribe.E005",
            )
        )
    apps = list(settings.INSTALLED_APPS)
    if "daphne" not in apps:
        errors.append(
            Error(
                "'daphne' must be in INSTALLED_APPS to serve WebSockets with runserver.", id="transcribe.E004"
            )
        )
    elif "django.contrib.staticfiles" in apps and apps.index("daphne") > apps.index(
        "django.contrib.staticfiles"
    ):
        errors.append(
            Error(
                "'daphne' must come before 'django.contrib.staticfiles' in INSTALLED_APPS.",
                id="transcribe.E004",
            )
        )
    layers = getattr(settings, "CHANNEL_LAYERS", {}) or {}
    backend = layers.get("default", {}).get("BACKEND", "")
    if backend.endswith("InMemoryChannelLayer") and not settings.DEBUG:
        errors.append(
            Warning(
                "InMemoryChannelLayer is for development and tests only.",
                hint="Use channels_redis.core.RedisChannelLayer in production.",
                id="transcribe.W001",
            )
        )
    return errors
