"""Short-lived signed tickets: how a page on another origin opens the socket without our cookie.

A page on another site (``TICKET_ORIGINS``) has no session cookie of ours, and the long-lived API
token must never reach a browser. So that site's backend asks the ``transcribe:ticket`` view for a
ticket with its token, and hands the ticket to the page, which connects with ``?ticket=<ticket>``.

A ticket is signed with ``SECRET_KEY`` (``django.core.signing``), expires after ``TICKET_SECONDS``,
opens the socket only from the one origin it was issued for, and carries a prefix of the user's
session auth hash, so changing the password revokes every ticket still out. Within its lifetime it
may be used more than once (a reconnect): it is short-lived, not single-use.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from channels.security.websocket import AllowedHostsOriginValidator
from django.contrib.auth import get_user_model
from django.core import signing
from django.utils.crypto import constant_time_compare

from .conf import transcribe_settings

SALT = "transcribe.ticket"
# Enough of the hash to notice a password change. The payload is signed, not encrypted: the page
# can read it, and this HMAC tells nothing about the password.
HASH_CHARS = 16


def origin_allowed(origin: str | None) -> bool:
    """Whether a page at ``origin`` may use a ticket: one of ``TICKET_ORIGINS``, or the site's own
    (an origin whose host is in ``ALLOWED_HOSTS``, as Channels' ``AllowedHostsOriginValidator`` says)."""
    if origin is None:
        return False
    if origin in transcribe_settings.TICKET_ORIGINS:
        return True
    return bool(AllowedHostsOriginValidator(None).valid_origin(urlparse(origin)))


def issue_ticket(user: Any, origin: str) -> str:
    """A ticket that lets ``user`` open the socket from ``origin`` for ``TICKET_SECONDS``."""
    payload = {"user": str(user.pk), "origin": origin, "hash": user.get_session_auth_hash()[:HASH_CHARS]}
    return signing.dumps(payload, salt=SALT)


def user_for_ticket(ticket: str, origin: str | None) -> Any:
    """The active user of a valid, unexpired ``ticket`` presented from ``origin``, or None."""
    try:
        payload = signing.loads(ticket, salt=SALT, max_age=transcribe_settings.TICKET_SECONDS)
    except signing.BadSignature:  # SignatureExpired is one too
        return None
    if not isinstance(payload, dict) or origin is None or payload.get("origin") != origin:
        return None
    user = get_user_model()._default_manager.filter(pk=payload.get("user")).first()
    if user is None or not user.is_active:
        return None
    if not constant_time_compare(user.get_session_auth_hash()[:HASH_CHARS], str(payload.get("hash"))):
        return None  # the password changed since the ticket was issued
    return user
