"""``TranscribeConsumer``: the ``stt.v1`` WebSocket endpoint (DESIGN.md §3).

Async on purpose: a session is one long-lived stream, and CPU work (decoding, inference) is
offloaded to ffmpeg and the dedicated inference executor, so the loop only moves bytes and events.
The consumer stays thin: protocol, auth, limits and persistence. The pipeline lives in
``transcribe.streaming``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from datetime import timedelta
from typing import Any, ClassVar

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from . import metrics
from .audio.recorder import AudioRecorder
from .conf import transcribe_settings
from .exceptions import EngineError
from .limits import BYTES_PER_SECOND, TokenBucket
from .models import TranscriptSessionStatus
from .protocol import PROTOCOL, CloseCode, ErrorCode, ProtocolError, StartMessage, parse_message, parse_start
from .recordings import new_recorder, save_recording
from .streaming.remote import LAYER_ERRORS

logger = logging.getLogger(__name__)

# A dropped connection's drain holds the session this long at most (a crashed server's lease runs
# out); a resume on another server waits that long at most for it.
DRAIN_LEASE_SECONDS = 90.0
# How long a resume waits for a lingering connection on another server to answer.
TAKEOVER_ANSWER_SECONDS = 1.0
# A connected session holds one of its user's MAX_SESSIONS_PER_USER slots, across servers, for this
# long; the connection renews it every third of that (a crashed server's slots run out).
CONNECTION_LEASE_SECONDS = 30.0


class TooManySessionsError(Exception):
    """The user already has MAX_SESSIONS_PER_USER sessions connected (on any server)."""


class TranscribeConsumer(AsyncWebsocketConsumer):
    # Sessions streaming in this process, for MAX_SESSIONS.
    active: ClassVar[set[TranscribeConsumer]] = set()
    # Sessions whose client dropped, still being transcribed and stored.
    draining: ClassVar[set[asyncio.Task[None]]] = set()
    draining_sessions: ClassVar[dict[uuid.UUID, asyncio.Task[None]]] = {}
    # Sessions with a connected client in this process (a dropped one is not aborted while here).
    live_sessions: ClassVar[dict[uuid.UUID, TranscribeConsumer]] = {}
    # Dropped sessions waiting IDLE_TIMEOUT for their client to resume before they count as aborted.
    expiring: ClassVar[dict[uuid.UUID, asyncio.Task[None]]] = {}

    async def connect(self) -> None:
        self.stt: Any = None
        self.session: Any = None
        self.recorder: AudioRecorder | None = None
        self.user_id: Any = None
        self.audio_budget: TokenBucket | None = None
        self.storage_failed = False
        self.handed_over = False
        self.finished = False
        self.connected = False
        self.last_activity = time.monotonic()
        self.watchdog: asyncio.Task[None] | None = None
        self.lease_until: Any = None  # this connection's connected_until, while it holds the slot
        user = self.scope.get("user")
        await self.accept()
        # Close codes can only be told to a client after accepting (before, it just sees HTTP 403).
        if user is None or not user.is_authenticated:
            await self.close(code=CloseCode.NOT_AUTHENTICATED, reason="not authenticated")
            return
        if len(self.active) >= transcribe_settings.MAX_SESSIONS:
            logger.warning("At capacity (%d sessions): refusing a connection", len(self.active))
            await self.close(code=CloseCode.AT_CAPACITY, reason="server at capacity")
            return
        mine = sum(1 for other in self.active if other.user_id == user.pk)
        if mine >= transcribe_settings.MAX_SESSIONS_PER_USER:
            logger.warning("User %s already has %d sessions: refusing another", user.pk, mine)
            await self.close(code=CloseCode.AT_CAPACITY, reason="too many sessions of this user")
            return
        self.user_id = user.pk
        rate = float(transcribe_settings.MAX_FRAMES_PER_SECOND)
        self.frame_budget = TokenBucket(rate, burst=2 * rate)
        self.connected = True
        self.active.add(self)
        self.watchdog = asyncio.create_task(self._watch_idle())

    async def disconnect(self, code: int) -> None:
        if self.connected:  # the client closed first (a server close already counted itself)
            metrics.closed(code)
        self.connected = False
        self.active.discard(self)
        if self.session is not None and self.live_sessions.get(self.session.pk) is self:
            del self.live_sessions[self.session.pk]
        await self._stop_watchdog()
        await self._leave_group()
        await self._release_slot()
        if self.handed_over:
            pass  # another connection resumed the session; this one's drain is already running
        elif self.storage_failed:
            # The database refused a final: store nothing more, so that the session's offset stays
            # at its last stored final and a resuming client re-sends everything after it.
            await self._abandon()
        elif self.stt is not None and not self.finished:
            # The client dropped mid-utterance: still decode and store what it said. This runs
            # detached, since the server cancels a consumer that takes long to disconnect.
            self._drain()
        elif self.stt is not None:
            await self.stt.close()

    async def _stop_watchdog(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watchdog
            self.watchdog = None

    def _drain(self) -> None:
        """Finish transcribing and storing what this connection received, detached from it."""
        task = asyncio.create_task(self._finish_dropped_session())
        self.draining.add(task)
        self.draining_sessions[self.session.pk] = task
        task.add_done_callback(self._forget_drain)

    async def hand_over(self) -> None:
        """The session was resumed on another connection while this one was still open (a client
        that lost its network without the server noticing): close this one and drain it, so its
        audio is stored before the new connection goes on, and nothing it does later can touch the
        session."""
        logger.info("Session %s resumed on another connection: closing the old one", self.session_id)
        self.handed_over = True
        if self.live_sessions.get(self.session.pk) is self:
            del self.live_sessions[self.session.pk]
        await self._stop_watchdog()
        await self._leave_group()
        await self._release_slot()
        await self.close(code=CloseCode.TAKEN_OVER, reason="resumed on another connection")
        if self.stt is not None and not self.finished:
            self._drain()

    # -- one session, several servers -------------------------------------------------------------

    @staticmethod
    def _group(session_id: uuid.UUID) -> str:
        return f"transcribe-session-{session_id.hex}"

    async def _leave_group(self) -> None:
        if self.channel_layer is not None and self.session is not None:
            try:
                await self.channel_layer.group_discard(self._group(self.session.pk), self.channel_name)
            except LAYER_ERRORS as exc:  # Redis away: the membership expires by itself (group_expiry)
                logger.warning("Session %s: could not leave its group (%s)", self.session_id, exc)

    def _layer_is_shared(self) -> bool:
        from channels.layers import InMemoryChannelLayer

        return self.channel_layer is not None and not isinstance(self.channel_layer, InMemoryChannelLayer)

    async def _take_over_elsewhere(self, session_id: uuid.UUID) -> None:
        """Ask a connection to this session on another server (one whose client vanished without
        its server noticing) to let go; it leases the session for its drain before answering."""
        reply = await self.channel_layer.new_channel()
        try:
            await self.channel_layer.group_send(
                self._group(session_id),
                {"type": "session.take_over", "reply": reply, "origin": self.channel_name},
            )
            await asyncio.wait_for(self.channel_layer.receive(reply), TAKEOVER_ANSWER_SECONDS)
        except (TimeoutError, *LAYER_ERRORS) as exc:  # nobody answered, or Redis is away: the lease decides
            logger.debug("Session %s: no takeover answer (%s)", session_id, exc)

    async def session_take_over(self, message: dict[str, Any]) -> None:
        """Another server resumes this session (channel layer group message)."""
        if message.get("origin") == self.channel_name:
            return
        taking = not self.handed_over and self.stt is not None and not self.finished
        if taking:
            await self._lease_drain()
        await self.channel_layer.send(message["reply"], {"type": "session.released"})
        if taking:
            await self.hand_over()

    async def _wait_for_drains(self, session_id: uuid.UUID) -> None:
        from .models import TranscriptSession

        deadline = time.monotonic() + DRAIN_LEASE_SECONDS
        while time.monotonic() < deadline:
            lease = (
                await TranscriptSession.objects.filter(pk=session_id)
                .values_list("draining_until", flat=True)
                .afirst()
            )
            if lease is None or lease <= timezone.now():
                return
            await asyncio.sleep(0.2)

    @database_sync_to_async
    def _lease_drain(self) -> None:
        from .models import TranscriptSession

        TranscriptSession.objects.filter(pk=self.session.pk).update(
            draining_until=timezone.now() + timedelta(seconds=DRAIN_LEASE_SECONDS)
        )

    def _forget_drain(self, task: asyncio.Task[None]) -> None:
        self.draining.discard(task)
        if self.draining_sessions.get(self.session.pk) is task:
            del self.draining_sessions[self.session.pk]

    async def _finish_dropped_session(self) -> None:
        self.finished = True
        await self._lease_drain()
        try:
            await asyncio.wait_for(self.stt.flush(), timeout=60)
        except Exception:
            logger.exception("Could not flush session %s after a disconnect", self.session_id)
        finally:
            await self.stt.close()
        await self._save_recording()
        # Still active: the client may come back and resume. Aborted only if it does not.
        await self._end_session(TranscriptSessionStatus.ACTIVE)
        session_id = self.session.pk
        self._cancel_expiry(session_id)
        self.expiring[session_id] = asyncio.create_task(self._abort_unless_resumed(session_id))

    @classmethod
    def _cancel_expiry(cls, session_id: uuid.UUID) -> None:
        task = cls.expiring.pop(session_id, None)
        if task is not None:
            task.cancel()

    @classmethod
    async def _abort_unless_resumed(cls, session_id: uuid.UUID) -> None:
        await asyncio.sleep(float(transcribe_settings.IDLE_TIMEOUT))
        cls.expiring.pop(session_id, None)
        if session_id in cls.live_sessions or session_id in cls.draining_sessions:
            return
        from .models import TranscriptSession

        aborted = await TranscriptSession.objects.filter(
            pk=session_id, status=TranscriptSessionStatus.ACTIVE
        ).aupdate(status=TranscriptSessionStatus.ABORTED, ended_at=timezone.now())
        if aborted:
            logger.info("Session %s was not resumed within IDLE_TIMEOUT: aborted", session_id)

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        # The session stops counting against MAX_SESSIONS as soon as we close, not when the client
        # acknowledges it.
        self.active.discard(self)
        if self.connected or code in (CloseCode.NOT_AUTHENTICATED, CloseCode.AT_CAPACITY):
            metrics.closed(1000 if code is None or isinstance(code, bool) else int(code))
        self.connected = False
        # Autobahn (daphne) accepts only a plain int, not an IntEnum member.
        await super().close(
            code=int(code) if isinstance(code, int) and not isinstance(code, bool) else code, reason=reason
        )

    @property
    def session_id(self) -> str:
        return str(self.session.pk) if self.session is not None else "-"

    # -- incoming ---------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.connected:
            return
        self.last_activity = time.monotonic()
        size = len(bytes_data) if bytes_data is not None else len((text_data or "").encode())
        if size > transcribe_settings.MAX_FRAME_BYTES:
            await self.send_event(
                "error",
                code=ErrorCode.TOO_LARGE,
                message=f"Frames are limited to {transcribe_settings.MAX_FRAME_BYTES} bytes",
            )
            await self.close(code=CloseCode.FRAME_TOO_LARGE, reason="frame too large")
            return
        if not self.frame_budget.take():
            await self.reject_flood(
                f"more than {transcribe_settings.MAX_FRAMES_PER_SECOND} frames per second"
            )
            return
        try:
            if bytes_data is not None:
                await self.receive_audio(bytes_data)
            else:
                await self.receive_control(parse_message(text_data or ""))
        except ProtocolError as exc:
            await self.send_event("error", code=exc.code, message=str(exc))
        except Exception:
            # A bug must cost this one connection, cleanly: an exception escaping here would end
            # the consumer without disconnect(), keeping its slot and its ffmpeg.
            logger.exception("Session %s: unexpected error handling a frame", self.session_id)
            await self.send_event("error", code=ErrorCode.BAD_MESSAGE, message="Internal error")
            await self.close(code=CloseCode.INTERNAL_ERROR, reason="internal error")

    async def receive_control(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "start":
            if self.stt is not None:
                raise ProtocolError("The session has already started")
            await self.start(parse_start(message, transcribe_settings.LANGUAGE))
        elif self.stt is None:
            await self.violation(f'"{kind}" before "start"')
        elif kind == "keepalive":
            pass
        elif kind == "finalize":
            await self.stt.finalize()
        elif kind == "stop":
            await self.stop()
        else:
            raise ProtocolError(f"Unknown message type {kind!r}")

    async def receive_audio(self, data: bytes) -> None:
        if self.stt is None:
            await self.violation('audio before "start"')
            return
        if self.finished:
            return
        if self.audio_budget is not None and not self.audio_budget.take(len(data)):
            await self.reject_flood(f"audio faster than {transcribe_settings.MAX_AUDIO_SPEED:g}x real time")
            return
        await self.stt.process_audio_chunk(data)  # bad audio comes back as an ``error`` event
        if self.stt.duration >= transcribe_settings.MAX_SESSION_SECONDS:
            await self.send_event(
                "error", code=ErrorCode.TOO_LARGE, message="The session reached MAX_SESSION_SECONDS"
            )
            await self.stop()

    async def reject_flood(self, what: str) -> None:
        logger.warning("Session %s: %s, closing", self.session_id, what)
        await self.send_event("error", code=ErrorCode.RATE_LIMITED, message=f"Too fast: {what}")
        await self.close(code=CloseCode.AT_CAPACITY, reason="rate limited")

    async def reject_not_yours(self) -> None:
        await self.send_event(
            "error", code=ErrorCode.BAD_MESSAGE, message="No such session of yours to resume"
        )
        await self.close(code=CloseCode.NOT_YOUR_SESSION, reason="not your session")

    async def reject_too_many(self) -> None:
        limit = transcribe_settings.MAX_SESSIONS_PER_USER
        logger.warning("User %s already has %d sessions connected: refusing another", self.user_id, limit)
        await self.send_event(
            "error",
            code=ErrorCode.RATE_LIMITED,
            message=f"You already have {limit} sessions open; stop one to start another",
        )
        await self.close(code=CloseCode.AT_CAPACITY, reason="too many sessions of this user")

    async def violation(self, what: str) -> None:
        await self.send_event("error", code=ErrorCode.BAD_MESSAGE, message=f"Protocol violation: {what}")
        await self.close(code=CloseCode.PROTOCOL_VIOLATION, reason="protocol violation")

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, start: StartMessage) -> None:
        from .streaming import OptimizedRealtimeSTT

        try:
            engine, scheduler = await self._inference()
        except EngineError as exc:
            logger.error("Engine unavailable: %s", exc)
            await self.send_event("error", code=ErrorCode.ENGINE_ERROR, message=str(exc))
            await self.close(code=CloseCode.INTERNAL_ERROR, reason="engine unavailable")
            return
        language = start.language if engine.multilingual else "en"
        finals: list[dict[str, Any]] = []
        offset = 0.0
        try:
            if start.session is None:
                self.session = await self._create_session(start, engine, language)
            else:
                resumed = await self._resume(start)
                if resumed is None:
                    return
                self.session, finals, offset = resumed
                language = self.session.language or language
        except TooManySessionsError:
            await self.reject_too_many()
            return
        self.live_sessions[self.session.pk] = self
        if self.channel_layer is not None:
            try:
                await self.channel_layer.group_add(self._group(self.session.pk), self.channel_name)
            except LAYER_ERRORS as exc:  # only a takeover from another node needs it
                logger.warning("Session %s: could not join its group (%s)", self.session_id, exc)
        self._cancel_expiry(self.session.pk)
        per_second = BYTES_PER_SECOND[start.format]
        self.audio_budget = TokenBucket(
            per_second * float(transcribe_settings.MAX_AUDIO_SPEED),
            burst=per_second * float(transcribe_settings.MAX_AUDIO_BURST),
        )
        self.recorder = new_recorder()
        self.stt = OptimizedRealtimeSTT(
            on_event=self.on_pipeline_event,
            engine=engine,
            language=language,
            fmt=start.format,
            time_offset=offset,
            seq_start=max((f["seq"] for f in finals), default=0),
            prompt=" ".join(f["text"] for f in finals)[-1000:],
            on_audio=self.recorder.write if self.recorder is not None else None,
            scheduler=scheduler,
        )
        logger.info(
            "Session %s %s (%s, %s)",
            self.session_id,
            "resumed" if finals or offset else "started",
            start.format,
            language,
        )
        metrics.session_started()
        await self.send_event(
            "ready",
            session=self.session_id,
            protocol=PROTOCOL,
            resumed=start.session is not None,
            finals=finals,
            offset=offset,
            language=language,
            limits={
                "max_frame_bytes": transcribe_settings.MAX_FRAME_BYTES,
                "max_session_seconds": transcribe_settings.MAX_SESSION_SECONDS,
                "idle_timeout": transcribe_settings.IDLE_TIMEOUT,
                "max_audio_speed": transcribe_settings.MAX_AUDIO_SPEED,
                "max_audio_burst": transcribe_settings.MAX_AUDIO_BURST,
                "sample_rate": 16000,
            },
        )

    async def _resume(self, start: StartMessage) -> tuple[Any, list[dict[str, Any]], float] | None:
        """Take the user's session back (from a lingering connection or a drain, here or on another
        server): the session, its stored finals and the offset; None (and closed) if it is not theirs."""
        assert start.session is not None
        state = await self._session_state(start.session)
        if state is None:
            await self.reject_not_yours()
            return None
        stale = self.live_sessions.get(start.session)
        if stale is not None and stale is not self:
            await stale.hand_over()
        elif state == TranscriptSessionStatus.ACTIVE and self._layer_is_shared():
            await self._take_over_elsewhere(start.session)
        # A dropped connection's audio may still be being transcribed (here or on another
        # server): let it finish, so its finals are stored and counted in the offset before
        # this connection adds more.
        drain = self.draining_sessions.get(start.session)
        if drain is not None:
            await asyncio.wait({drain}, timeout=90)
        await self._wait_for_drains(start.session)
        resumed = await self._resume_session(start.session)
        if resumed is None:
            await self.reject_not_yours()
            return None
        return resumed

    async def _inference(self) -> tuple[Any, Any]:
        """The engine and the scheduler of this session: in this process, or on remote workers."""
        if transcribe_settings.INFERENCE == "channels":
            from .streaming.remote import RemoteEngineInfo, RemoteInferenceScheduler

            if self.channel_layer is None:
                raise EngineError("INFERENCE='channels' needs CHANNEL_LAYERS")
            return RemoteEngineInfo(), RemoteInferenceScheduler(
                self.channel_layer, on_retry=self._inference_retry
            )
        from .engines import get_engine
        from .streaming import InferenceScheduler

        return await asyncio.to_thread(get_engine), InferenceScheduler()  # weights load once per process

    async def _inference_retry(self, attempt: int, why: str) -> None:
        await self.send_event(
            "status",
            lag_ms=round(self.stt.lag * 1000) if self.stt is not None else 0,
            buffered_s=round(len(self.stt.buffer) / 16000, 2) if self.stt is not None else 0.0,
            inference=f"retrying ({why})",
        )

    async def stop(self) -> None:
        if self.finished:
            return
        self.finished = True
        # The client waits for its last finals: however long the backlog takes (many sessions on a
        # busy box), the idle timeout must not cut the flush short.
        await self._stop_watchdog()
        await self.stt.flush()
        await self._save_recording()
        text, duration = await self._end_session(TranscriptSessionStatus.FINISHED)
        await self.send_event("closed", session=self.session_id, text=text, duration=round(duration, 3))
        await self.close(code=CloseCode.NORMAL)

    async def _watch_idle(self) -> None:
        while True:
            if self.lease_until is not None:
                await self._renew_slot()
            timeout = float(transcribe_settings.IDLE_TIMEOUT)
            remaining = self.last_activity + timeout - time.monotonic()
            if remaining <= 0:
                logger.info("Session %s idle for %.0fs: closing", self.session_id, timeout)
                if self.stt is not None and not self.finished:
                    self.finished = True
                    await self.stt.flush()
                    await self._save_recording()
                    await self._end_session(TranscriptSessionStatus.FINISHED)
                await self.close(code=CloseCode.IDLE_TIMEOUT, reason="idle timeout")
                return
            await asyncio.sleep(min(remaining, 1.0))

    # -- outgoing ---------------------------------------------------------------------------

    async def on_pipeline_event(self, event: dict[str, Any]) -> None:
        if event["type"] == "final":
            if self.storage_failed:
                return  # neither stored nor sent: the client re-sends this audio when it resumes
            # Committed before it is sent: a client never sees text the database doesn't have.
            try:
                segment_id = await self._store_final_retrying(event)
            except DatabaseError as exc:
                await self._storage_failed(exc)
                return
            metrics.final_stored()
            event = {"type": "final", "id": segment_id, **{k: v for k, v in event.items() if k != "type"}}
        elif event["type"] == "status":
            metrics.observe_lag(event["lag_ms"] / 1000)
        elif event["type"] == "error":
            metrics.error_sent(event["code"])
        if self.connected:
            await self.send(text_data=json.dumps(event))

    async def send_event(self, kind: str, **fields: Any) -> None:
        if kind == "error":
            metrics.error_sent(fields["code"])
        if self.connected:
            await self.send(text_data=json.dumps({"type": kind, **fields}))

    # -- persistence --------------------------------------------------------------------------

    async def _store_final_retrying(self, event: dict[str, Any]) -> int:
        """Store a final, retrying with backoff while the database is away (STORE_RETRY_SECONDS)."""
        deadline = time.monotonic() + float(transcribe_settings.STORE_RETRY_SECONDS)
        delay = 0.1
        while True:
            try:
                return await self._store_final(event)
            except DatabaseError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                logger.warning(
                    "Session %s: storing final #%s failed (%s); retrying in %.1fs",
                    self.session_id,
                    event["seq"],
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _storage_failed(self, exc: Exception) -> None:
        logger.error("Session %s: the database is unavailable (%s); closing", self.session_id, exc)
        self.storage_failed = True
        await self.send_event(
            "error",
            code=ErrorCode.STORAGE_ERROR,
            message="Transcripts cannot be saved right now; reconnect to resume the session",
        )
        await self.close(code=CloseCode.INTERNAL_ERROR, reason="storage unavailable")

    async def _abandon(self) -> None:
        self.finished = True
        if self.recorder is not None:
            await self.recorder.abort()
            self.recorder = None
        if self.stt is not None:
            await self.stt.close()

    async def _save_recording(self) -> None:
        if self.recorder is not None:
            recorder, self.recorder = self.recorder, None
            await save_recording(self.session, recorder, offset=self.stt.time_offset)

    def _claim_slot(self, resuming: uuid.UUID | None = None) -> Any:
        """Check MAX_SESSIONS_PER_USER against the user's connected sessions on every server, and
        return this connection's lease (its ``connected_until``). Call inside a transaction: the
        user's row is locked, so two servers starting sessions of one user at once take turns."""
        from django.contrib.auth import get_user_model

        from .models import TranscriptSession

        user = self.scope["user"]
        list(get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk"))
        now = timezone.now()
        connected = TranscriptSession.objects.filter(owner=user, connected_until__gt=now)
        if resuming is not None:
            connected = connected.exclude(pk=resuming)
        if connected.count() >= transcribe_settings.MAX_SESSIONS_PER_USER:
            raise TooManySessionsError
        self.lease_until = now + timedelta(seconds=CONNECTION_LEASE_SECONDS)
        return self.lease_until

    async def _renew_slot(self) -> None:
        from .models import TranscriptSession

        renew_at = self.lease_until - timedelta(seconds=2 * CONNECTION_LEASE_SECONDS / 3)
        if timezone.now() < renew_at:
            return
        lease = timezone.now() + timedelta(seconds=CONNECTION_LEASE_SECONDS)
        try:
            await TranscriptSession.objects.filter(pk=self.session.pk).aupdate(connected_until=lease)
            self.lease_until = lease
        except DatabaseError as exc:  # the lease runs out by itself; the next round tries again
            logger.warning("Session %s: could not renew its connection lease (%s)", self.session_id, exc)

    async def _release_slot(self) -> None:
        """Give the user's slot back, unless another connection has taken the session since."""
        from .models import TranscriptSession

        lease, self.lease_until = self.lease_until, None
        if lease is None or self.session is None:
            return
        try:
            await TranscriptSession.objects.filter(pk=self.session.pk, connected_until=lease).aupdate(
                connected_until=None
            )
        except DatabaseError as exc:  # the lease runs out by itself
            logger.warning("Session %s: could not release its connection lease (%s)", self.session_id, exc)

    @database_sync_to_async
    def _create_session(self, start: StartMessage, engine: Any, language: str | None) -> Any:
        from .models import TranscriptSession

        headers = dict(self.scope.get("headers", []))
        with transaction.atomic():
            return TranscriptSession.objects.create(
                owner=self.scope["user"],
                title=start.title,
                language=language or "",
                engine=engine.name,
                model_name=engine.model_name,
                audio_format=start.format,
                client_info=headers.get(b"user-agent", b"").decode("latin-1")[:300],
                connected_until=self._claim_slot(),
            )

    @database_sync_to_async
    def _session_state(self, session_id: uuid.UUID) -> str | None:
        """The status of the user's own session of that id; None when there is none."""
        from .models import TranscriptSession

        return (
            TranscriptSession.objects.filter(pk=session_id, owner=self.scope["user"])
            .values_list("status", flat=True)
            .first()
        )

    @database_sync_to_async
    def _resume_session(self, session_id: uuid.UUID) -> tuple[Any, list[dict[str, Any]], float] | None:
        """The user's own session, its stored finals, and the seconds of audio they cover."""
        from .models import TranscriptSession

        with transaction.atomic():
            session = TranscriptSession.objects.filter(pk=session_id, owner=self.scope["user"]).first()
            if session is None:
                return None
            session.connected_until = self._claim_slot(resuming=session_id)
            session.status = TranscriptSessionStatus.ACTIVE
            session.ended_at = None
            session.save(update_fields=["status", "ended_at", "connected_until"])
        finals = [
            {"id": seg.pk, "seq": seg.seq, "text": seg.text, "start": seg.start, "end": seg.end}
            for seg in session.segments.order_by("seq")
        ]
        # Everything a dropped connection sent was transcribed before the drop was recorded
        # (duration); after a server crash only the stored finals' times are known.
        offset = max([session.duration, *(f["end"] for f in finals)])
        return session, finals, round(offset, 3)

    @database_sync_to_async
    def _store_final(self, event: dict[str, Any]) -> int:
        from .models import TranscriptSegment, TranscriptSession

        with transaction.atomic():
            try:
                with transaction.atomic():
                    segment = TranscriptSegment.objects.create(
                        session=self.session,
                        seq=event["seq"],
                        start=event["start"],
                        end=event["end"],
                        text=event["text"],
                        words=event.get("words", []),
                    )
            except IntegrityError:
                # A retry after a commit whose answer was lost: the row is there already.
                return int(TranscriptSegment.objects.get(session=self.session, seq=event["seq"]).pk)
            TranscriptSession.objects.filter(pk=self.session.pk).update(
                word_count=F("word_count") + len(event["text"].split())
            )
        return int(segment.pk)

    @database_sync_to_async
    def _end_session(self, status: str) -> tuple[str, float]:
        session = self.session
        session.status = status
        session.ended_at = None if status == TranscriptSessionStatus.ACTIVE else timezone.now()
        session.duration = self.stt.time_offset + self.stt.duration
        session.draining_until = None
        session.save(update_fields=["status", "ended_at", "duration", "draining_until"])
        return session.text, session.duration
