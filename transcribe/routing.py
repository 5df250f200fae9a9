"""Routes of the app for your project's ``asgi.py``: the WebSocket endpoint, and the channel the
remote inference workers consume (only used with ``TRANSCRIBE["INFERENCE"] = "channels"``)."""

from __future__ import annotations

from django.urls import path

from .consumers import TranscribeConsumer
from .streaming.remote import INFERENCE_CHANNEL
from .workers import InferenceWorker

websocket_urlpatterns = [
    path("ws/transcribe/", TranscribeConsumer.as_asgi(), name="transcribe-ws"),
]

# ``"channel": ChannelNameRouter(channel_routes)``; then ``manage.py runworker transcribe-inference``.
channel_routes = {INFERENCE_CHANNEL: InferenceWorker.as_asgi()}
