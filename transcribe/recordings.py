"""Storing a connection's recording on its session (``TRANSCRIBE["STORE_AUDIO"]``).

The first connection's recording becomes the session's audio as it is. A resumed session's new
part is joined after the stored one (``join_recordings``), with silence where the server lost
audio, so the transcript's timestamps keep pointing at the right second.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from asgiref.sync import sync_to_async
from django.core.files import File

from .audio.recorder import AudioRecorder, join_recordings, spool_path
from .conf import transcribe_settings
from .models import TranscriptSession

logger = logging.getLogger(__name__)


def new_recorder() -> AudioRecorder | None:
    return (
        AudioRecorder(bitrate=transcribe_settings.AUDIO_BITRATE) if transcribe_settings.STORE_AUDIO else None
    )


def _local_copy(session: TranscriptSession) -> tuple[Path, bool]:
    """A local file of the stored recording, and whether it is a temporary copy to delete."""
    try:
        return Path(session.audio.path), False
    except NotImplementedError:  # a remote storage: stream it down
        copy = spool_path()
        with session.audio.open("rb") as src, copy.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
        return copy, True


def _replace_audio(session: TranscriptSession, recording: Path) -> None:
    old = session.audio.name if session.audio else ""
    with recording.open("rb") as handle:
        session.audio.save("audio.ogg", File(handle), save=False)
    TranscriptSession.objects.filter(pk=session.pk).update(audio=session.audio.name)
    if old and old != session.audio.name:
        session.audio.storage.delete(old)


async def save_recording(session: TranscriptSession, recorder: AudioRecorder, offset: float) -> None:
    """Finish ``recorder`` (audio from ``offset`` seconds of the session on) and store it."""
    part = await recorder.finish()
    if part is None:
        return
    temporary = [part]
    try:
        recording = part
        if session.audio or offset > 0:
            first = None
            if session.audio:
                first, is_copy = await sync_to_async(_local_copy)(session)
                if is_copy:
                    temporary.append(first)
            recording = await join_recordings(first, offset, part, bitrate=recorder.bitrate)
            temporary.append(recording)
        await sync_to_async(_replace_audio)(session, recording)
        logger.info("Session %s: recording stored (%.1f s new)", session.pk, recorder.duration)
    except Exception:
        # The transcript is what matters; a lost recording is logged, never raised.
        logger.exception("Could not store the recording of session %s", session.pk)
    finally:
        for path in temporary:
            path.unlink(missing_ok=True)
