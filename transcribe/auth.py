"""Token authentication for WebSocket clients that have no Django session (scripts, load tests).

Browsers use the session cookie through Channels' ``AuthMiddlewareStack``; other clients send
``Authorization: Token <key>`` (or ``?token=<key>`` where headers cannot be set).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from django.contrib.auth.models import AnonymousUser


@database_sync_to_async
def _user_for_key(key: str) -> Any:
    from .models import ApiToken

    return ApiToken.user_for(key)


def token_from_scope(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            kind, _, key = value.decode("latin-1").partition(" ")
            if kind.lower() == "token" and key.strip():
                return key.strip()
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return (query.get("token") or [None])[0]


class TokenAuthMiddleware:
    """Sets ``scope["user"]`` from an API token when one is presented; otherwise leaves it alone."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        key = token_from_scope(scope)
        if key:
            user = await _user_for_key(key)
            scope = {**scope, "user": user if user is not None and user.is_active else AnonymousUser()}
        return await self.inner(scope, receive, send)


def TokenAuthMiddlewareStack(inner: Any) -> Any:  # noqa: N802 - named like Channels' AuthMiddlewareStack
    """Session auth, then token auth on top (a valid token wins)."""
    return AuthMiddlewareStack(TokenAuthMiddleware(inner))
