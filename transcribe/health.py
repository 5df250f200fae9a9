"""Operations endpoints: Prometheus ``metrics`` and a ``healthz`` for load balancers.

Both views are async: the app runs under ASGI, the consumers' state they read lives on the event
loop, and the channel layer check is a coroutine. ``healthz`` is public and says only whether this
process can reach its database and channel layer (the exceptions go to the log, not the response).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from . import metrics as _metrics  # noqa: F401  (registers the app's metrics)
from .conf import transcribe_settings

logger = logging.getLogger(__name__)

CHANNEL_LAYER_TIMEOUT = 2.0  # seconds; a load balancer's own timeout is usually a few seconds


async def _may_scrape(request: HttpRequest) -> bool:
    if transcribe_settings.METRICS_PUBLIC:
        return True
    token = transcribe_settings.METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if (
        token
        and scheme.lower() == "bearer"
        and hmac.compare_digest(given.strip().encode(), str(token).encode())
    ):
        return True
    user = await request.auser()
    return bool(user.is_active and user.is_staff)


@never_cache
@require_GET
async def metrics(request: HttpRequest) -> HttpResponse:
    """The default registry in Prometheus' text format (this process's metrics)."""
    if not await _may_scrape(request):
        return HttpResponseForbidden("Metrics are for staff or a bearer token (TRANSCRIBE['METRICS_TOKEN']).")
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)


def _ping_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def _ping_channel_layer() -> str:
    """``ok`` once a message went through the layer and came back; ``none`` without a layer."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return "none"

    async def round_trip() -> None:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "healthz.ping"})
        await layer.receive(channel)

    await asyncio.wait_for(round_trip(), timeout=CHANNEL_LAYER_TIMEOUT)
    return "ok"


def _failure(what: str, exc: BaseException) -> str:
    logger.warning("Health check: %s unavailable: %r", what, exc)
    if isinstance(exc, TimeoutError):
        return f"error: no answer within {CHANNEL_LAYER_TIMEOUT:g}s"
    return f"error: {type(exc).__name__}"


@never_cache
@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    """200 when this process reaches its database and channel layer, else 503."""
    from .consumers import TranscribeConsumer

    healthy = True
    body: dict[str, Any] = {"status": "ok"}
    try:
        await sync_to_async(_ping_database)()
        body["database"] = "ok"
    except Exception as exc:
        body["database"] = _failure("database", exc)
        healthy = False
    try:
        body["channel_layer"] = await _ping_channel_layer()
    except Exception as exc:
        body["channel_layer"] = _failure("channel layer", exc)
        healthy = False
    body["sessions"] = len(TranscribeConsumer.active)
    if not healthy:
        body["status"] = "unavailable"
    return JsonResponse(body, status=200 if healthy else 503)
