"""ASGI entry point: HTTP through Django, WebSockets through Channels with session, token or ticket auth."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_asgi_app = get_asgi_application()  # before importing consumers: it sets up the app registry

from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter  # noqa: E402

from transcribe.auth import OriginValidator, TokenAuthMiddlewareStack  # noqa: E402
from transcribe.routing import channel_routes, websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": OriginValidator(TokenAuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        # `manage.py runworker transcribe-inference` (TRANSCRIBE["INFERENCE"] = "channels")
        "channel": ChannelNameRouter(channel_routes),
    }
)
