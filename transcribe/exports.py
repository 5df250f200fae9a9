"""Transcript formats: plain text, SRT, WebVTT and JSON, from (start, end, text) segments."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from django.utils.text import slugify

if TYPE_CHECKING:
    from .models import TranscriptSession


class Cue(NamedTuple):
    start: float
    end: float
    text: str


FORMATS = ("text", "srt", "vtt", "json")
# File extension -> (format, content type) for downloads.
DOWNLOADS = {
    "txt": ("text", "text/plain; charset=utf-8"),
    "srt": ("srt", "application/x-subrip; charset=utf-8"),
    "vtt": ("vtt", "text/vtt; charset=utf-8"),
    "json": ("json", "application/json"),
}


def _timestamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _cue_text(text: str) -> str:
    """One line of cue text: a blank line would end an SRT/WebVTT cue early, "-->" confuses WebVTT."""
    return " ".join(text.split()).replace("-->", "->")


def to_text(cues: Iterable[Cue]) -> str:
    return "\n".join(c.text.strip() for c in cues if c.text.strip()) + "\n"


def to_srt(cues: Iterable[Cue]) -> str:
    blocks = [
        f"{i}\n{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}\n{_cue_text(c.text)}\n"
        for i, c in enumerate((c for c in cues if c.text.strip()), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(cues: Iterable[Cue]) -> str:
    blocks = [
        f"{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}\n{_cue_text(c.text)}\n"
        for c in cues
        if c.text.strip()
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_json(cues: Sequence[Cue], **extra: Any) -> str:
    payload = {
        "text": " ".join(c.text.strip() for c in cues if c.text.strip()),
        "segments": [
            {"start": round(c.start, 3), "end": round(c.end, 3), "text": c.text.strip()} for c in cues
        ],
        **extra,
    }
    return json.dumps(payload, indent=2)


def render(cues: Sequence[Cue], fmt: str, **extra: Any) -> str:
    if fmt == "json":
        return to_json(cues, **extra)
    return {"text": to_text, "srt": to_srt, "vtt": to_vtt}[fmt](cues)


def session_cues(session: TranscriptSession) -> list[Cue]:
    """A stored session's segments in order; reviewed (edited) text wins over the engine's."""
    return [Cue(seg.start, seg.end, seg.display_text) for seg in session.segments.order_by("seq")]


def download_name(session: TranscriptSession, extension: str) -> str:
    """A file name safe in a Content-Disposition header: the slugified title, else the session id."""
    return f"{slugify(session.title) or f'transcript-{session.pk.hex[:8]}'}.{extension}"
