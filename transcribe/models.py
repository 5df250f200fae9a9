"""Stored transcripts: one ``TranscriptSession`` per recording, one ``TranscriptSegment`` per final."""

from __future__ import annotations

import binascii
import hashlib
import os
import uuid
from typing import Any

from django.conf import settings
from django.core.files.storage import Storage, storages
from django.db import models
from django.utils.translation import gettext_lazy as _


class TranscriptSessionStatus(models.TextChoices):
    ACTIVE = "active", _("Active")
    FINISHED = "finished", _("Finished")
    ABORTED = "aborted", _("Aborted")


def audio_storage() -> Storage:
    """The storage of kept audio: the ``STORAGES`` alias named by ``TRANSCRIBE["AUDIO_STORAGE"]``."""
    from .conf import transcribe_settings

    return storages[transcribe_settings.AUDIO_STORAGE]


def audio_upload_to(session: TranscriptSession, filename: str) -> str:
    # Named by the server, never by the client: no user input reaches the path.
    return f"transcribe/audio/{session.owner_id}/{session.pk}.ogg"


class TranscriptSession(models.Model):
    Status = TranscriptSessionStatus

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="transcript_sessions"
    )
    title = models.CharField(_("title"), max_length=200, blank=True)
    language = models.CharField(_("language"), max_length=8, blank=True)
    engine = models.CharField(_("engine"), max_length=100, blank=True)
    model_name = models.CharField(_("model"), max_length=200, blank=True)
    audio_format = models.CharField(_("audio format"), max_length=20, blank=True)
    status = models.CharField(_("status"), max_length=10, choices=Status.choices, default=Status.ACTIVE)
    started_at = models.DateTimeField(_("started"), auto_now_add=True)
    ended_at = models.DateTimeField(_("ended"), null=True, blank=True)
    duration = models.FloatField(_("audio duration (s)"), default=0.0)
    client_info = models.CharField(_("client"), max_length=300, blank=True)
    word_count = models.PositiveIntegerField(_("words"), default=0)
    audio = models.FileField(
        _("audio"), upload_to=audio_upload_to, storage=audio_storage, blank=True, max_length=300
    )
    # Set while a server transcribes and stores the audio of a dropped connection (a lease: a crashed
    # server's lease runs out). A resume on any server waits for it, so finals never collide.
    draining_until = models.DateTimeField(null=True, blank=True, editable=False)
    # Set while a client is connected to the session, and renewed (a lease: a crashed server's runs
    # out). MAX_SESSIONS_PER_USER counts these, so the limit holds across servers.
    connected_until = models.DateTimeField(null=True, blank=True, editable=False)
    reviewed_at = models.DateTimeField(_("reviewed"), null=True, blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("reviewed by"),
    )

    class Meta:
        ordering = ["-started_at"]
        indexes = [
            models.Index(fields=["owner", "-started_at"]),
            models.Index(fields=["-started_at"]),
            models.Index(fields=["status"]),
            models.Index(fields=["language"]),
        ]
        verbose_name = _("transcript session")

    def __str__(self) -> str:
        return self.title or f"Session {self.started_at:%Y-%m-%d %H:%M}"

    @property
    def text(self) -> str:
        return " ".join(seg.display_text for seg in self.segments.all())


class TranscriptSegment(models.Model):
    session = models.ForeignKey(TranscriptSession, on_delete=models.CASCADE, related_name="segments")
    seq = models.PositiveIntegerField(_("sequence"))
    start = models.FloatField(_("start (s)"))
    end = models.FloatField(_("end (s)"))
    text = models.TextField(_("text"))
    words = models.JSONField(_("words"), default=list, blank=True)
    avg_logprob = models.FloatField(null=True, blank=True)
    edited_text = models.TextField(_("edited text"), blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["session", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["session", "seq"], name="transcribe_segment_unique_seq")
        ]
        verbose_name = _("transcript segment")

    def __str__(self) -> str:
        return f"#{self.seq} {self.start:.1f}-{self.end:.1f}s"

    @property
    def is_edited(self) -> bool:
        return bool(self.edited_text)

    @property
    def display_text(self) -> str:
        """Reviewed text wins over what the engine heard."""
        return self.edited_text or self.text


def generate_key() -> str:
    return binascii.hexlify(os.urandom(20)).decode()


def digest_of(key: str) -> str:
    """What is stored of an API key: its SHA-256 (the key is random, so no salt or stretching)."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiToken(models.Model):
    """A per-user key for non-browser clients (``Authorization: Token <key>`` or ``?token=``).

    Only a digest is stored: the key is shown once, when it is made (``key`` on a new instance),
    and a lost key is replaced, not recovered (``transcribe_token USER --rotate``).
    """

    digest = models.CharField(_("digest"), max_length=64, primary_key=True, editable=False)
    prefix = models.CharField(_("key starts with"), max_length=8, editable=False)
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="transcribe_token"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("API token")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key = ""  # the plain key: only on the instance that made it

    def __str__(self) -> str:
        return f"Token {self.prefix}… for {self.user}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.digest:
            self.key = generate_key()
            self.digest, self.prefix = digest_of(self.key), self.key[:8]
        super().save(*args, **kwargs)

    @classmethod
    def user_for(cls, key: str) -> Any:
        """The active user this key belongs to, or None."""
        token = cls.objects.select_related("user").filter(digest=digest_of(key)).first()
        return token.user if token is not None and token.user.is_active else None
