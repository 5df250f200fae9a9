"""Limits of one connection and one user: sessions per user, frame rate, audio speed (4429)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.test import override_settings

from tests.test_consumers import communicator, receive_until, start
from transcribe.limits import TokenBucket
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
