"""WebSocket URL patterns of the app; include them in your project's ``asgi.py``."""

from __future__ import annotations

from django.urls import path

from .consumers import TranscribeConsumer

websocket_urlpatterns = [
    path("ws/transcribe/", TranscribeConsumer.as_asgi(), name="transcribe-ws"),
]
