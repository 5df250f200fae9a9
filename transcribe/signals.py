"""Deleting a session deletes its kept audio too, however it is deleted (admin, user page, ORM)."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from .models import TranscriptSession

logger = logging.getLogger(__name__)


@receiver(post_delete, sender=TranscriptSession, dispatch_uid="transcribe_delete_session_audio")
def delete_session_audio(sender: type[TranscriptSession], instance: TranscriptSession, **kwargs: Any) -> None:
    if not instance.audio:
        return
    storage, name = instance.audio.storage, instance.audio.name

    def delete() -> None:
        try:
            storage.delete(name)
        except OSError:
            logger.exception("Could not delete the audio of session %s", instance.pk)

    # After the commit: a rolled-back delete keeps its recording.
    transaction.on_commit(delete)
