"""Every close code of DESIGN.md §3 that the server can produce, and the handshake before them.

Covered elsewhere, not repeated here (SECURITY.md lists them):
4401 anonymous (tests/test_consumers.py::test_anonymous_is_closed_with_4401) and a bad token
(tests/test_consumers.py::test_token_auth_through_the_project_routing); 4403 another user's session
(tests/test_consumers.py::test_resuming_someone_elses_session_closes_4403); 4408 after start
(tests/test_consumers.py::test_idle_connection_closes_4408); 4413 on a binary frame
(tests/test_consumers.py::test_frame_too_large_closes_4413); 4400 audio before start
(tests/test_consumers.py::test_audio_before_start_is_a_protocol_violation); 4429 at capacity, per user
and too fast (tests/test_consumers.py::test_past_capacity_closes_4429_and_others_are_unaffected,
tests/test_limits.py); 4409 a session resumed on another socket
(tests/test_consumers.py::test_resuming_while_the_old_connection_lingers_takes_it_over); 4500 when the
database stays away (tests/faults/test_database_faults.py); 1000 after ``stop``
(tests/test_consumers.py::stream, used by most tests there).
"""

from __future__ import annotations

from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.test import Client, override_settings

from tests.test_consumers import communicator, receive_until, start
from transcribe.consumers import TranscribeConsumer
from transcribe.models import ApiToken, TranscriptSession
from transcribe.protocol import CloseCode

pytestmark = pytest.mark.django_db(transaction=True)

GOOD_ORIGIN = (b"origin", b"http://localhost")


async def closed_with(comm: WebsocketCommunicator, timeout: float = 10) -> dict[str, Any]:
    """The close frame, after any events before it."""
    while True:
        output = await comm.receive_output(timeout=timeout)
        if output["type"] == "websocket.close":
            return output


# 4400 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["keepalive", "finalize", "stop", "dance"])
async def test_control_before_start_closes_4400(alice: Any, kind: str) -> None:
    comm = communicator(alice)
    await comm.connect()
    await comm.send_json_to({"type": kind})
    error = await comm.receive_json_from(timeout=5)
    assert (error["type"], error["code"]) == ("error", "bad_message")
    assert (await comm.receive_output(timeout=5))["code"] == CloseCode.PROTOCOL_VIOLATION
    assert not await TranscriptSession.objects.aexists()
    await comm.disconnect()


async def test_bad_start_messages_do_not_close(alice: Any) -> None:
    """A start the server cannot accept is answered with an error; the client may try again."""
    comm = communicator(alice)
    await comm.connect()
    for message, code in (
        ({"type": "start", "format": "pcm_s16le", "sample_rate": 44100}, "unsupported_format"),
        ({"type": "start", "format": "webm", "sample_rate": "fast"}, "bad_message"),
        ({"type": "start", "format": "ogg", "language": "e"}, "bad_message"),
        ({"type": "start", "format": "wav", "title": ["a", "list"]}, "bad_message"),
        ({"type": "start", "format": "pcm_f32le", "session": "../../etc/passwd"}, "bad_message"),
        ({"type": "start", "format": {"nested": True}}, "unsupported_format"),
    ):
        await comm.send_json_to(message)
        error = await comm.receive_json_from(timeout=5)
        assert (error["type"], error["code"]) == ("error", code), message
    await comm.send_json_to({"type": "start", "format": "pcm_s16le"})
    assert (await comm.receive_json_from(timeout=10))["type"] == "ready"
    await comm.send_json_to({"type": "stop"})
    await receive_until(comm, "closed")
    assert (await comm.receive_output(timeout=5))["code"] == CloseCode.NORMAL
    await comm.disconnect()


# 4401 and the handshake --------------------------------------------------------------------------


async def session_cookie(user: Any) -> tuple[bytes, bytes]:
    from asgiref.sync import sync_to_async

    client = Client()
    await sync_to_async(client.force_login)(user)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


async def test_session_cookie_signs_in_a_browser_from_an_allowed_origin(alice: Any) -> None:
    from project.asgi import application

    comm = WebsocketCommunicator(
        application, "/ws/transcribe/", headers=[GOOD_ORIGIN, await session_cookie(alice)]
    )
    ready = await start(comm)
    session = await TranscriptSession.objects.aget(pk=ready["session"])
    assert session.owner_id == alice.pk
    await comm.disconnect()


@pytest.mark.parametrize(
    "origin",
    [b"http://evil.example", b"http://localhost.evil.example", b"null", None],
    ids=["foreign", "suffix", "null", "missing"],
)
async def test_a_valid_cookie_from_another_origin_is_refused_at_the_handshake(
    alice: Any, origin: bytes | None
) -> None:
    """Cross-site WebSocket hijacking: a page elsewhere cannot ride on the user's session cookie."""
    from project.asgi import application

    headers = [await session_cookie(alice)] + ([(b"origin", origin)] if origin is not None else [])
    comm = WebsocketCommunicator(application, "/ws/transcribe/", headers=headers)
    connected, _ = await comm.connect()
    assert not connected
    assert not await TranscriptSession.objects.aexists()


async def test_a_forged_session_cookie_is_anonymous_4401() -> None:
    from project.asgi import application

    comm = WebsocketCommunicator(
        application,
        "/ws/transcribe/",
        headers=[GOOD_ORIGIN, (b"cookie", b"sessionid=forged0123456789abcdef")],
    )
    connected, _ = await comm.connect()
    assert connected
    assert (await comm.receive_output(timeout=5))["code"] == CloseCode.NOT_AUTHENTICATED


@pytest.mark.parametrize("where", ["header", "query"])
async def test_the_token_of_a_deactivated_user_closes_4401(alice: Any, where: str) -> None:
    from project.asgi import application

    token = await ApiToken.objects.acreate(user=alice)
    alice.is_active = False
    await alice.asave()
    path, headers = "/ws/transcribe/", [GOOD_ORIGIN]
    if where == "header":
        headers.append((b"authorization", f"Token {token.key}".encode()))
    else:
        path += f"?token={token.key}"
    comm = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await comm.connect()
    assert connected
    assert (await comm.receive_output(timeout=5))["code"] == CloseCode.NOT_AUTHENTICATED


async def test_a_bad_token_does_not_fall_back_to_the_session_cookie(alice: Any) -> None:
    """A presented token decides: a wrong one is anonymous even next to a valid cookie."""
    from project.asgi import application

    headers = [GOOD_ORIGIN, await session_cookie(alice), (b"authorization", b"Token not-a-key")]
    comm = WebsocketCommunicator(application, "/ws/transcribe/", headers=headers)
    await comm.connect()
    assert (await comm.receive_output(timeout=5))["code"] == CloseCode.NOT_AUTHENTICATED


# 4403 -----------------------------------------------------------------------------------------


async def test_resuming_a_session_that_does_not_exist_closes_4403(alice: Any) -> None:
    comm = communicator(alice)
    await comm.connect()
    await comm.send_json_to({"type": "start", "session": "00000000-0000-4000-8000-000000000000"})
    error = await comm.receive_json_from(timeout=10)
    assert (error["type"], error["code"]) == ("error", "bad_message")
    assert (await comm.receive_output(timeout=5))["code"] == CloseCode.NOT_YOUR_SESSION
    assert not await TranscriptSession.objects.aexists()


# 4408 -----------------------------------------------------------------------------------------


@override_settings(TRANSCRIBE={"IDLE_TIMEOUT": 1})
async def test_a_socket_that_never_starts_closes_4408(alice: Any) -> None:
    comm = communicator(alice)
    await comm.connect()
    assert (await comm.receive_output(timeout=5))["code"] == CloseCode.IDLE_TIMEOUT
    assert not TranscribeConsumer.active  # the slot is free again


# 4413 -----------------------------------------------------------------------------------------


@override_settings(TRANSCRIBE={"MAX_FRAME_BYTES": 1024})
@pytest.mark.parametrize("started", [False, True])
async def test_text_frame_too_large_closes_4413(alice: Any, started: bool) -> None:
    comm = communicator(alice)
    if started:
        await start(comm)
    else:
        await comm.connect()
    # Bytes, not characters, count: 400 three-byte characters are 1200 bytes.
    await comm.send_json_to({"type": "keepalive", "pad": "€" * 400})
    error = await comm.receive_json_from(timeout=5)
    assert (error["type"], error["code"]) == ("error", "too_large")
    assert (await comm.receive_output(timeout=5))["code"] == CloseCode.FRAME_TOO_LARGE
    await comm.disconnect()


# 4429 -----------------------------------------------------------------------------------------


@override_settings(TRANSCRIBE={"MAX_SESSIONS": 1})
async def test_a_closed_session_frees_its_slot(alice: Any) -> None:
    """Capacity is not leaked: after stop, 4413 or 4400 the next connection gets in."""
    for ending in ("stop", "too_large", "violation"):
        comm = communicator(alice)
        if ending == "violation":
            await comm.connect()
            await comm.send_to(bytes_data=b"\x00\x00")
            assert (await closed_with(comm))["code"] == CloseCode.PROTOCOL_VIOLATION
        else:
            await start(comm)
            if ending == "stop":
                await comm.send_json_to({"type": "stop"})
                assert (await closed_with(comm))["code"] == CloseCode.NORMAL
            else:
                await comm.send_to(bytes_data=bytes(2 * 1024 * 1024))
                assert (await closed_with(comm))["code"] == CloseCode.FRAME_TOO_LARGE
        await comm.disconnect()
    comm = communicator(alice)
    await start(comm)
    await comm.disconnect()


# 4500 -----------------------------------------------------------------------------------------


@override_settings(TRANSCRIBE={"MODEL": "/nonexistent/whisper-model"})
async def test_an_engine_that_cannot_load_closes_4500(alice: Any) -> None:
    # A failed load is not cached (transcribe.engines.load_engine stores only loaded engines), so
    # this neither needs a cache reset nor leaves the next test a broken engine.
    comm = communicator(alice)
    await comm.connect()
    await comm.send_json_to({"type": "start", "format": "pcm_s16le"})
    error = await comm.receive_json_from(timeout=10)
    assert (error["type"], error["code"]) == ("error", "engine_error")
    assert "TRANSCRIBE['MODEL']" in error["message"]  # names the setting to change
    assert (await comm.receive_output(timeout=5))["code"] == CloseCode.INTERNAL_ERROR
    assert not await TranscriptSession.objects.aexists()
    assert not TranscribeConsumer.active
    await comm.disconnect()


# 1000 -----------------------------------------------------------------------------------------


@override_settings(TRANSCRIBE={"MAX_SESSION_SECONDS": 2})
async def test_max_session_seconds_ends_the_session_with_1000(alice: Any) -> None:
    comm = communicator(alice)
    ready = await start(comm)
    for _ in range(12):  # 3 s of silence, 250 ms a frame
        await comm.send_to(bytes_data=bytes(8000))
    events = await receive_until(comm, "closed", timeout=30)
    errors = [e for e in events if e["type"] == "error"]
    assert [(e["code"], e["message"]) for e in errors] == [
        ("too_large", "The session reached MAX_SESSION_SECONDS")
    ]
    assert events[-1]["duration"] == pytest.approx(2.0, abs=0.01)
    assert (await comm.receive_output(timeout=5))["code"] == CloseCode.NORMAL
    session = await TranscriptSession.objects.aget(pk=ready["session"])
    assert session.status == "finished" and session.duration == pytest.approx(2.0, abs=0.01)
    await comm.disconnect()
