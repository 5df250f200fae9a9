"""WebSocket authentication beyond the session cookie, and the Origin check that goes with it.

Browsers on the site's own origins use the session cookie through Channels' ``AuthMiddlewareStack``;
scripts send ``Authorization: Token <key>`` (or ``?token=<key>`` where headers cannot be set); pages
on the origins of ``TICKET_ORIGINS`` bring a short-lived ``?ticket=`` (``transcribe.tickets``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.security.websocket import AllowedHostsOriginValidator, WebsocketDenier
from django.contrib.auth.models import AnonymousUser

from .tickets import origin_allowed, user_for_ticket


@database_sync_to_async
def _user_for_key(key: str) -> Any:
    from .models import ApiToken

    return ApiToken.user_for(key)


_user_for_ticket = database_sync_to_async(user_for_ticket)


def token_from_header(value: str) -> str | None:
    """The key of an ``Authorization: Token <key>`` header's value, or None."""
    kind, _, key = value.partition(" ")
    return key.strip() if kind.lower() == "token" and key.strip() else None


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for header, value in scope.get("headers", []):
        if header == name:
            return str(value.decode("latin-1"))
    return None


def _query(scope: dict[str, Any], name: str) -> str | None:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return (query.get(name) or [None])[0]


def token_from_scope(scope: dict[str, Any]) -> str | None:
    return token_from_header(_header(scope, b"authorization") or "") or _query(scope, "token")


def ticket_from_scope(scope: dict[str, Any]) -> str | None:
    return _query(scope, "ticket")


class TokenAuthMiddleware:
    """Sets ``scope["user"]`` from a ticket or an API token when one is presented; otherwise leaves
    it alone. A presented ticket or token decides: a bad one is anonymous, never the cookie's user."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        # A ticket alone decides: OriginValidator let a foreign origin in for it, not for a token.
        if ticket := ticket_from_scope(scope):
            user = await _user_for_ticket(ticket, _header(scope, b"origin"))
        elif key := token_from_scope(scope):
            user = await _user_for_key(key)
        else:
            return await self.inner(scope, receive, send)
        scope = {**scope, "user": user if user is not None and user.is_active else AnonymousUser()}
        return await self.inner(scope, receive, send)


def TokenAuthMiddlewareStack(inner: Any) -> Any:  # noqa: N802 - named like Channels' AuthMiddlewareStack
    """Session auth, then ticket or token auth on top (a valid one wins)."""
    return AuthMiddlewareStack(TokenAuthMiddleware(inner))


class OriginValidator:
    """Channels' ``AllowedHostsOriginValidator``, which also lets in the pages of ``TICKET_ORIGINS``
    that bring a ticket.

    Without ``?ticket=`` the handshake is judged by ``AllowedHostsOriginValidator`` alone, so a page
    elsewhere still cannot ride on the user's cookie. With one, the Origin must be one of
    ``TICKET_ORIGINS`` or an allowed host, and ``TokenAuthMiddleware`` then signs in by the ticket
    only (bound to that origin), never by the cookie or a token.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.allowed_hosts = AllowedHostsOriginValidator(inner)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if not ticket_from_scope(scope):
            return await self.allowed_hosts(scope, receive, send)
        if origin_allowed(_header(scope, b"origin")):
            return await self.inner(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
