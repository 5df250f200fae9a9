"""Limits of one connection and one user: sessions per user, frame rate, audio speed (4429)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.test import override_settings

from tests.test_consumers import communicator, receive_until, start
from transcribe import consumers
from transcribe.limits import TokenBucket
from transcribe.models import TranscriptSession
from transcribe.protocol import CloseCode

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def alice() -> Any:
    return get_user_model().objects.create_user("alice")


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=1000.0, burst=10.0)
    assert all(bucket.take() for _ in range(10))
    assert not bucket.take(5)  # the burst is spent; refills at 1 per ms
    bucket.updated -= 0.005
    assert bucket.take(5)


@override_settings(TRANSCRIBE={"MAX_SESSIONS_PER_USER": 1})
async def test_one_user_cannot_hold_more_than_max_sessions_per_user(alice: Any) -> None:
    first = communicator(alice)
    await start(first)
    second = communicator(alice)
    await second.connect()
    closed = await second.receive_output(timeout=5)
    assert closed["type"] == "websocket.close" and closed["code"] == CloseCode.AT_CAPACITY
    # Someone else is not affected, and the first session goes on.
    bob = await database_sync_to_async(get_user_model().objects.create_user)("bob")
    other = communicator(bob)
    await start(other)
    await first.send_json_to({"type": "stop"})
    assert (await receive_until(first, "closed"))[-1]["type"] == "closed"
    for comm in (first, other):
        await comm.disconnect()


async def lease_of(session_id: str) -> Any:
    return (await TranscriptSession.objects.aget(pk=session_id)).connected_until


@override_settings(TRANSCRIBE={"MAX_SESSIONS_PER_USER": 2})
async def test_sessions_connected_on_other_servers_count_against_the_user(alice: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    # What another server writes for a session whose client is connected to it: a live lease.
    elsewhere = await TranscriptSession.objects.acreate(
        owner=alice, connected_until=timezone.now() + timedelta(seconds=30)
    )
    first = communicator(alice)
    ready = await start(first)
    assert await lease_of(ready["session"]) > timezone.now()
    refused = communicator(alice)
    connected, _ = await refused.connect()  # this process holds only one: the handshake passes
    assert connected
    await refused.send_json_to({"type": "start", "format": "pcm_s16le", "sample_rate": 16000})
    error = await refused.receive_json_from(timeout=10)
    assert (error["type"], error["code"]) == ("error", "rate_limited") and "2 sessions" in error["message"]
    closed = await refused.receive_output(timeout=5)
    assert (closed["type"], closed["code"]) == ("websocket.close", CloseCode.AT_CAPACITY)
    assert await TranscriptSession.objects.filter(owner=alice).acount() == 2  # no session was made

    # The other server crashed: its lease runs out, and the slot is free again.
    elsewhere.connected_until = timezone.now() - timedelta(seconds=1)
    await elsewhere.asave(update_fields=["connected_until"])
    second = communicator(alice)
    await start(second)

    # A stopped session gives its slot back at once.
    await first.send_json_to({"type": "stop"})
    await receive_until(first, "closed")
    await first.disconnect()
    assert await lease_of(ready["session"]) is None
    await second.disconnect()


async def test_a_connected_session_renews_its_lease(alice: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumers, "CONNECTION_LEASE_SECONDS", 0.6)  # renewed every 0.2 s
    comm = communicator(alice)
    ready = await start(comm)
    first = await lease_of(ready["session"])
    await asyncio.sleep(1.5)  # past the first lease: only renewal keeps it
    renewed = await lease_of(ready["session"])
    assert renewed is not None and renewed > first
    await comm.send_json_to({"type": "stop"})
    await receive_until(comm, "closed")
    await comm.disconnect()
    assert await lease_of(ready["session"]) is None


@override_settings(TRANSCRIBE={"MAX_AUDIO_SPEED": 4.0, "MAX_AUDIO_BURST": 2.0})
async def test_audio_far_faster_than_real_time_is_refused(alice: Any) -> None:
    comm = communicator(alice)
    await start(comm)
    second = bytes(32_000)  # one second of pcm_s16le
    for _ in range(2):  # the burst allows two seconds at once
        await comm.send_to(bytes_data=second)
    await comm.send_to(bytes_data=second)
    error = await comm.receive_json_from(timeout=10)
    while error["type"] != "error":
        error = await comm.receive_json_from(timeout=10)
    assert error["code"] == "rate_limited"
    closed = await comm.receive_output(timeout=5)
    assert closed["type"] == "websocket.close" and closed["code"] == CloseCode.AT_CAPACITY


@override_settings(TRANSCRIBE={"MAX_AUDIO_SPEED": 4.0, "MAX_AUDIO_BURST": 1.0})
async def test_audio_within_the_speed_limit_is_accepted(alice: Any) -> None:
    comm = communicator(alice)
    await start(comm)
    quarter = bytes(8_000)
    for _ in range(12):  # 3 s of audio over ~0.9 s: about 3.3x real time
        await comm.send_to(bytes_data=quarter)
        await asyncio.sleep(0.075)
    await comm.send_json_to({"type": "stop"})
    events = await receive_until(comm, "closed")
    assert not [e for e in events if e["type"] == "error"]
    await comm.disconnect()


def counted(metric: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(metric, labels) or 0.0


@override_settings(TRANSCRIBE={"MAX_FRAMES_PER_SECOND": 10})
async def test_a_flood_of_small_frames_is_refused(alice: Any) -> None:
    closes = counted("transcribe_closes_total", code="4429")
    errors = counted("transcribe_errors_total", code="rate_limited")
    comm = communicator(alice)
    await start(comm)
    for _ in range(40):
        await comm.send_json_to({"type": "keepalive"})
    error = await comm.receive_json_from(timeout=5)
    assert error["type"] == "error" and error["code"] == "rate_limited"
    closed = await comm.receive_output(timeout=5)
    assert closed["type"] == "websocket.close" and closed["code"] == CloseCode.AT_CAPACITY
    # Operators see it: the rejection is counted by close code and by error code.
    assert counted("transcribe_closes_total", code="4429") == closes + 1
    assert counted("transcribe_errors_total", code="rate_limited") == errors + 1
