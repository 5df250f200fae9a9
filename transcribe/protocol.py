"""The ``stt.v1`` WebSocket protocol: close codes, error codes and validation of client messages.

See DESIGN.md §3. Client control messages are JSON text frames; audio is binary frames.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from .audio.decoder import FORMATS

PROTOCOL = "stt.v1"
MAX_TITLE = 200


class CloseCode(IntEnum):
    NORMAL = 1000
    PROTOCOL_VIOLATION = 4400
    NOT_AUTHENTICATED = 4401
    NOT_YOUR_SESSION = 4403
    IDLE_TIMEOUT = 4408
    TAKEN_OVER = 4409
    FRAME_TOO_LARGE = 4413
    AT_CAPACITY = 4429
    INTERNAL_ERROR = 4500


class ErrorCode:
    BAD_MESSAGE = "bad_message"
    BAD_AUDIO = "bad_audio"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    ENGINE_ERROR = "engine_error"
    STORAGE_ERROR = "storage_error"


class ProtocolError(ValueError):
    """A client message that breaks the protocol; ``code`` is the stt.v1 error code."""

    def __init__(self, message: str, code: str = ErrorCode.BAD_MESSAGE) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class StartMessage:
    format: str
    sample_rate: int
    language: str | None
    title: str
    session: uuid.UUID | None


def parse_message(text: str) -> dict[str, Any]:
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested beyond Python's stack
        raise ProtocolError("Text frames must be JSON objects") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError('Messages must be JSON objects with a string "type"')
    return message


def parse_start(message: dict[str, Any], default_language: str | None) -> StartMessage:
    fmt = message.get("format", "pcm_s16le")
    if fmt not in FORMATS:
        raise ProtocolError(
            f"Unsupported format {fmt!r}; use one of: {', '.join(FORMATS)}", ErrorCode.UNSUPPORTED_FORMAT
        )
    rate = message.get("sample_rate", 16000)
    if fmt.startswith("pcm_") and rate != 16000:
        raise ProtocolError(
            "Raw PCM must be 16000 Hz mono; send webm/ogg/wav for other rates", ErrorCode.UNSUPPORTED_FORMAT
        )
    if not isinstance(rate, int) or not 8000 <= rate <= 192000:
        raise ProtocolError("sample_rate must be an integer between 8000 and 192000")
    language = message.get("language", default_language)
    if language is not None and (not isinstance(language, str) or not 2 <= len(language) <= 8):
        raise ProtocolError("language must be a language code such as 'en', or null to detect it")
    title = message.get("title") or ""
    if not isinstance(title, str):
        raise ProtocolError("title must be a string")
    # JSON may carry what no database stores: lone surrogates ("\ud800") and NUL.
    title = title.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
    session = message.get("session")
    if session is not None:
        try:
            session = uuid.UUID(str(session))
        except ValueError:
            raise ProtocolError("session must be the uuid of a session to resume") from None
    return StartMessage(fmt, rate, language, title[:MAX_TITLE], session)
