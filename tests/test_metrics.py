"""Prometheus metrics (who may scrape them, what they count) and the load balancers' healthz."""

from __future__ import annotations

import asyncio
import importlib
import socket
import threading
import time
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import AsyncClient, Client, override_settings
from django.urls import reverse
from prometheus_client import REGISTRY

from transcribe import metrics
from transcribe.consumers import TranscribeConsumer
from transcribe.protocol import CloseCode, ErrorCode

METRIC_NAMES = [
    "transcribe_active_sessions",
    "transcribe_draining_sessions",
    "transcribe_sessions_started_total",
    "transcribe_session_lag_seconds",
    "transcribe_max_lag_seconds",
    "transcribe_inference_seconds",
    "transcribe_inference_audio_seconds_total",
    "transcribe_inference_in_flight",
    "transcribe_inference_queue_depth",
    "transcribe_finals_total",
    "transcribe_errors_total",
    "transcribe_closes_total",
]


def transcribe_settings(**values: Any) -> override_settings:
    return override_settings(TRANSCRIBE={**settings.TRANSCRIBE, **values})


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def user_client(*, staff: bool) -> Client:
    user = get_user_model().objects.create_user("ops" if staff else "alice", password="pw", is_staff=staff)
    client = Client()
    client.force_login(user)
    return client


# -- who may scrape ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_anonymous_is_refused_by_default() -> None:
    assert Client().get(reverse("transcribe:metrics")).status_code == 403


@pytest.mark.django_db
def test_signed_in_users_are_refused_unless_staff() -> None:
    assert user_client(staff=False).get(reverse("transcribe:metrics")).status_code == 403


@pytest.mark.django_db
def test_staff_may_scrape() -> None:
    response = user_client(staff=True).get(reverse("transcribe:metrics"))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]


@pytest.mark.django_db
@transcribe_settings(METRICS_TOKEN="s3cret-token")
def test_bearer_token() -> None:
    url = reverse("transcribe:metrics")
    assert Client().get(url, headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    assert Client().get(url, headers={"Authorization": "bearer s3cret-token"}).status_code == 200
    assert Client().get(url, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert Client().get(url, headers={"Authorization": "Basic s3cret-token"}).status_code == 403
    assert Client().get(url).status_code == 403


@pytest.mark.django_db
def test_no_token_means_no_token_access() -> None:
    # An unset token must not let an empty "Bearer" header in.
    url = reverse("transcribe:metrics")
    assert Client().get(url, headers={"Authorization": "Bearer "}).status_code == 403
    assert Client().get(url, headers={"Authorization": "Bearer None"}).status_code == 403


@pytest.mark.django_db
@transcribe_settings(METRICS_PUBLIC=True)
def test_public_metrics() -> None:
    response = Client().get(reverse("transcribe:metrics"))
    assert response.status_code == 200
    assert Client().post(reverse("transcribe:metrics")).status_code == 405


# -- what they say -----------------------------------------------------------------------------


@pytest.mark.django_db
@transcribe_settings(METRICS_PUBLIC=True)
def test_the_text_names_every_metric() -> None:
    text = Client().get(reverse("transcribe:metrics")).content.decode()
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in text, name
    # Known codes are there from the start (at 0), so rate() sees their first increase.
    assert 'transcribe_closes_total{code="4429"} 0.0' in text
    assert 'transcribe_errors_total{code="rate_limited"} 0.0' in text


def test_event_functions_change_the_values() -> None:
    before = {
        "started": sample("transcribe_sessions_started_total"),
        "finals": sample("transcribe_finals_total"),
        "lag_count": sample("transcribe_session_lag_seconds_count"),
        "lag_sum": sample("transcribe_session_lag_seconds_sum"),
        "lag_le_1": sample("transcribe_session_lag_seconds_bucket", le="1.0"),
        "jobs": sample("transcribe_inference_seconds_count"),
        "busy": sample("transcribe_inference_seconds_sum"),
        "audio": sample("transcribe_inference_audio_seconds_total"),
        "too_large": sample("transcribe_errors_total", code="too_large"),
        "other_error": sample("transcribe_errors_total", code="other"),
        "4429": sample("transcribe_closes_total", code="4429"),
        "1000": sample("transcribe_closes_total", code="1000"),
        "1006": sample("transcribe_closes_total", code="1006"),
        "other_close": sample("transcribe_closes_total", code="other"),
    }
    metrics.session_started()
    metrics.final_stored()
    metrics.final_stored()
    metrics.observe_lag(0.75)
    metrics.observe_lag(4.0)
    metrics.observe_inference(0.2, 3.0)
    metrics.error_sent(ErrorCode.TOO_LARGE)
    metrics.error_sent("something a future version invents")
    metrics.closed(CloseCode.AT_CAPACITY)
    metrics.closed(None)
    metrics.closed(1006)  # a client that vanished
    metrics.closed(4999)  # a client's own code: no new time series

    assert sample("transcribe_sessions_started_total") == before["started"] + 1
    assert sample("transcribe_finals_total") == before["finals"] + 2
    assert sample("transcribe_session_lag_seconds_count") == before["lag_count"] + 2
    assert sample("transcribe_session_lag_seconds_sum") == pytest.approx(before["lag_sum"] + 4.75)
    assert sample("transcribe_session_lag_seconds_bucket", le="1.0") == before["lag_le_1"] + 1
    assert sample("transcribe_inference_seconds_count") == before["jobs"] + 1
    assert sample("transcribe_inference_seconds_sum") == pytest.approx(before["busy"] + 0.2)
    assert sample("transcribe_inference_audio_seconds_total") == pytest.approx(before["audio"] + 3.0)
    assert sample("transcribe_errors_total", code="too_large") == before["too_large"] + 1
    assert sample("transcribe_errors_total", code="other") == before["other_error"] + 1
    assert sample("transcribe_closes_total", code="4429") == before["4429"] + 1
    assert sample("transcribe_closes_total", code="1000") == before["1000"] + 1
    assert sample("transcribe_closes_total", code="1006") == before["1006"] + 1
    assert sample("transcribe_closes_total", code="other") == before["other_close"] + 1
    assert sample("transcribe_closes_total", code="4999") == 0.0


def test_importing_twice_reuses_the_registered_metrics() -> None:
    again = importlib.reload(metrics)
    assert again.FINALS is REGISTRY._names_to_collectors["transcribe_finals_total"]
    before = sample("transcribe_finals_total")
    again.final_stored()
    assert sample("transcribe_finals_total") == before + 1


def test_active_sessions_are_read_from_the_consumers() -> None:
    assert sample("transcribe_active_sessions") == 0
    TranscribeConsumer.active.update({TranscribeConsumer(), TranscribeConsumer()})
    assert sample("transcribe_active_sessions") == 2  # the conftest fixture forgets them


def test_queue_depth_counts_jobs_waiting_for_the_executor() -> None:
    from transcribe.streaming.executor import get_executor

    executor = get_executor()
    workers = executor._max_workers  # every thread busy, so the next jobs wait
    started, release = threading.Semaphore(0), threading.Event()

    def job() -> None:
        started.release()
        release.wait(10)

    futures = [executor.submit(job) for _ in range(workers)]
    try:
        for _ in range(workers):
            assert started.acquire(timeout=10)
        futures += [executor.submit(job), executor.submit(job)]
        assert sample("transcribe_inference_queue_depth") == 2
    finally:
        release.set()
        for future in futures:
            future.result(10)
    assert sample("transcribe_inference_queue_depth") == 0


async def test_jobs_in_flight_and_lag_are_read_from_the_pipelines() -> None:
    from transcribe.streaming import OptimizedRealtimeSTT

    consumer = TranscribeConsumer()
    consumer.stt = OptimizedRealtimeSTT()  # the real bundled tiny.en
    TranscribeConsumer.active.add(consumer)
    release = threading.Event()
    job = asyncio.create_task(consumer.stt.scheduler.run(release.wait, 10))
    try:
        await asyncio.sleep(0)  # the task runs up to its executor call, marking the scheduler busy
        assert consumer.stt.scheduler.busy
        assert sample("transcribe_inference_in_flight") == 1
        assert sample("transcribe_max_lag_seconds") == consumer.stt.lag
    finally:
        release.set()
        await job
        await consumer.stt.close()
    assert sample("transcribe_inference_in_flight") == 0


# -- healthz -----------------------------------------------------------------------------------


def redis_listening(port: int = 6379) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def redis_layer(port: int) -> dict[str, Any]:
    return {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{port}"]},
        }
    }


@pytest.fixture
def fresh_layers() -> Any:
    """channels caches each layer in ``channel_layers.backends``; a Redis layer bound to one test's
    event loop must not be handed to the next test."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield channel_layers
    channel_layers.backends.clear()


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/healthz", "/transcribe/healthz"])
def test_healthz_with_the_in_memory_layer(url: str) -> None:
    assert reverse("transcribe:healthz") == "/transcribe/healthz"
    TranscribeConsumer.active.add(TranscribeConsumer())
    response = Client().get(url)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "channel_layer": "ok", "sessions": 1}
    assert "max-age=0" in response["Cache-Control"]


@pytest.mark.django_db
@override_settings(CHANNEL_LAYERS={})
def test_healthz_without_a_layer() -> None:
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json()["channel_layer"] == "none"


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not redis_listening(), reason="no Redis on 127.0.0.1:6379")
async def test_healthz_with_redis(fresh_layers: Any) -> None:
    # One event loop and one layer for several checks, as in an ASGI server.
    with override_settings(CHANNEL_LAYERS=redis_layer(6379)):
        client = AsyncClient()
        for _ in range(3):
            response = await client.get("/healthz")
            assert response.status_code == 200
            assert response.json() == {
                "status": "ok",
                "database": "ok",
                "channel_layer": "ok",
                "sessions": 0,
            }
        await fresh_layers["default"].close_pools()


@pytest.mark.django_db
def test_healthz_with_redis_unreachable(fresh_layers: Any) -> None:
    assert not redis_listening(6390)
    started = time.monotonic()
    with override_settings(CHANNEL_LAYERS=redis_layer(6390)):
        response = Client().get("/healthz")
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["database"] == "ok"
    assert body["channel_layer"].startswith("error: ")
