"""Exceptions raised by the transcribe app."""

from __future__ import annotations


class TranscribeError(Exception):
    """Base class of every error the app raises on purpose."""


class DecodeError(TranscribeError, ValueError):
    """Audio bytes could not be decoded (garbage, truncated stream, wrong format)."""


class EngineError(TranscribeError):
    """The speech engine failed to load or to transcribe."""


class EngineUnavailableError(EngineError):
    """No engine answered, after the retries the inference path makes itself (remote workers gone):
    trying again at once would only wait as long again."""


class ModelNotFoundError(EngineError, LookupError):
    """No weights could be found for the configured model; the message names the setting to change."""
