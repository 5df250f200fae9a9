"""Tickets: a page on another origin opens the socket with a short-lived ``?ticket=``, nothing more.

Through the real routing (``project.asgi.application``, explicit Origin headers) and the real view.
The handshake helpers are those of test_close_codes.py.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client, override_settings
from django.urls import reverse
from django.utils.crypto import get_random_string

from tests.security.test_close_codes import GOOD_ORIGIN, closed_with, session_cookie
from tests.test_consumers import start
from transcribe.models import ApiToken, TranscriptSession
from transcribe.protocol import CloseCode
from transcribe.tickets import issue_ticket, user_for_ticket

pytestmark = pytest.mark.django_db(transaction=True)

APP = "https://app.example.com"  # the other site that embeds the recorder
TICKETS_ON = override_settings(TRANSCRIBE={"TICKET_ORIGINS": [APP, "https://other.example.com"]})


def handshake(ticket: str | None, origin: str | None, *headers: tuple[bytes, bytes]) -> WebsocketCommunicator:
    from project.asgi import application

    path = "/ws/transcribe/" + (f"?ticket={ticket}" if ticket is not None else "")
    origins = [(b"origin", origin.encode())] if origin is not None else []
    return WebsocketCommunicator(application, path, headers=[*origins, *headers])


async def refused_at_handshake(comm: WebsocketCommunicator) -> bool:
    connected, _ = await comm.connect()
    return not connected


async def closes_4401(comm: WebsocketCommunicator) -> bool:
    connected, _ = await comm.connect()
    assert connected
    return bool((await closed_with(comm))["code"] == CloseCode.NOT_AUTHENTICATED)


def issued_ago(seconds: float, user: Any, origin: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A ticket signed ``seconds`` ago (django.core.signing stamps it with time.time())."""
    now = time.time()
    with monkeypatch.context() as patch:
        patch.setattr(time, "time", lambda: now - seconds)
        return issue_ticket(user, origin)


# The socket ------------------------------------------------------------------------------------


@TICKETS_ON
async def test_a_ticket_from_the_view_opens_the_socket_from_the_other_site(alice: Any) -> None:
    """The other site's backend asks with its API token; the page connects from its own origin."""
    token = await ApiToken.objects.acreate(user=alice)
    response = await sync_to_async(Client(enforce_csrf_checks=True).post)(
        reverse("transcribe:ticket"), {"origin": APP}, headers={"authorization": f"Token {token.key}"}
    )
    assert response.status_code == 200, response.content
    answer = response.json()
    assert (answer["origin"], answer["expires_in"]) == (APP, 60)
    comm = handshake(answer["ticket"], APP)
    ready = await start(comm)
    assert (await TranscriptSession.objects.aget(pk=ready["session"])).owner_id == alice.pk
    await comm.disconnect()


@TICKETS_ON
@pytest.mark.parametrize(
    ("origin", "refused"),
    [
        ("https://evil.example", True),  # not in TICKET_ORIGINS: the handshake is refused
        ("https://app.example.com.evil.example", True),
        ("http://app.example.com", True),  # another scheme is another origin
        ("https://app.example.com:8443", True),  # and so is another port
        ("null", True),
        (None, True),
        ("https://other.example.com", False),  # may use tickets, but not this one: 4401
        ("http://localhost", False),  # the site's own origin, ditto
    ],
)
async def test_a_ticket_opens_the_socket_only_from_its_own_origin(
    alice: Any, origin: str | None, refused: bool
) -> None:
    comm = handshake(issue_ticket(alice, APP), origin)
    if refused:
        assert await refused_at_handshake(comm)
    else:
        assert await closes_4401(comm)
    assert not await TranscriptSession.objects.aexists()


async def test_no_foreign_origin_may_use_tickets_by_default(alice: Any) -> None:
    """TICKET_ORIGINS is empty by default: a ticket for another site is refused at the handshake."""
    assert await refused_at_handshake(handshake(issue_ticket(alice, APP), APP))


@TICKETS_ON
@pytest.mark.parametrize(("seconds_ago", "accepted"), [(50, True), (61, False), (3600, False)])
async def test_a_ticket_expires_after_ticket_seconds(
    alice: Any, monkeypatch: pytest.MonkeyPatch, seconds_ago: float, accepted: bool
) -> None:
    comm = handshake(issued_ago(seconds_ago, alice, APP, monkeypatch), APP)
    if accepted:
        await start(comm)
        await comm.disconnect()
    else:
        assert await closes_4401(comm)


@override_settings(TRANSCRIBE={"TICKET_ORIGINS": [APP], "TICKET_SECONDS": 5})
async def test_ticket_seconds_is_the_lifetime(alice: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    assert await closes_4401(handshake(issued_ago(10, alice, APP, monkeypatch), APP))


@TICKETS_ON
async def test_a_tampered_ticket_is_anonymous_4401(alice: Any, bob: Any) -> None:
    good = issue_ticket(alice, APP)
    payload, stamp, signature = good.rsplit(":", 2)
    bobs_payload = issue_ticket(bob, APP).rsplit(":", 2)[0]
    for ticket in (
        f"{payload}:{stamp}:{'B' if signature[0] == 'A' else 'A'}{signature[1:]}",  # another signature
        f"{bobs_payload}:{stamp}:{signature}",  # someone else's payload under alice's signature
        f"{payload}:{stamp}",  # no signature
        "not-a-ticket",
    ):
        assert await closes_4401(handshake(ticket, APP)), ticket
    with override_settings(SECRET_KEY="another-site's-key"):  # signed elsewhere
        forged = issue_ticket(alice, APP)
    assert await closes_4401(handshake(forged, APP))


@TICKETS_ON
async def test_a_bad_ticket_does_not_fall_back_to_the_cookie_or_a_token(alice: Any) -> None:
    """A presented ticket decides alone, even beside a valid cookie or token."""
    token = await ApiToken.objects.acreate(user=alice)
    for headers in ([await session_cookie(alice)], [(b"authorization", f"Token {token.key}".encode())]):
        assert await closes_4401(handshake("not-a-ticket", "http://localhost", *headers))
        assert await closes_4401(handshake("not-a-ticket", APP, *headers))


@TICKETS_ON
async def test_a_password_change_revokes_outstanding_tickets(alice: Any) -> None:
    ticket = issue_ticket(alice, APP)
    alice.set_password("a-new-password")
    await alice.asave()
    assert await closes_4401(handshake(ticket, APP))
    comm = handshake(issue_ticket(alice, APP), APP)  # a ticket issued after the change works
    await start(comm)
    await comm.disconnect()


@TICKETS_ON
async def test_the_ticket_of_a_deactivated_user_is_anonymous_4401(alice: Any) -> None:
    ticket = issue_ticket(alice, APP)
    alice.is_active = False
    await alice.asave()
    assert await closes_4401(handshake(ticket, APP))


@TICKETS_ON
async def test_a_foreign_origin_without_a_ticket_is_still_refused(alice: Any) -> None:
    """Cross-site WebSocket hijacking stays closed for the origins that may use tickets."""
    token = await ApiToken.objects.acreate(user=alice)
    for headers in ([await session_cookie(alice)], [(b"authorization", f"Token {token.key}".encode())]):
        assert await refused_at_handshake(handshake(None, APP, *headers))
        assert await refused_at_handshake(handshake("", APP, *headers))  # an empty ticket is none
    comm = handshake(None, GOOD_ORIGIN[1].decode(), await session_cookie(alice))  # the site itself: as before
    await start(comm)
    await comm.disconnect()


# The view ------------------------------------------------------------------------------------


def post(client: Client, data: Any = None, **kwargs: Any) -> Any:
    return client.post(reverse("transcribe:ticket"), data if data is not None else {"origin": APP}, **kwargs)


@TICKETS_ON
def test_the_view_wants_a_session_or_a_token(alice: Any) -> None:
    for response in (
        post(Client()),
        post(Client(), headers={"authorization": "Token not-a-key"}),
        post(Client(), headers={"authorization": "Bearer something"}),
    ):
        assert response.status_code == 401  # not a redirect to the login page
        assert "Token" in response.json()["error"]
    # A wrong token beside a valid session is refused too: a presented token decides.
    signed_in = Client()
    signed_in.force_login(alice)
    assert post(signed_in, headers={"authorization": "Token not-a-key"}).status_code == 401


@TICKETS_ON
def test_the_view_enforces_csrf_with_the_session_cookie(alice: Any) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    assert post(browser).status_code == 403
    secret = get_random_string(32)
    browser.cookies["csrftoken"] = secret
    response = post(browser, headers={"x-csrftoken": secret})
    assert response.status_code == 200
    assert user_for_ticket(response.json()["ticket"], APP) == alice


@TICKETS_ON
def test_the_view_takes_a_token_without_csrf(alice: Any, bob: Any) -> None:
    token = ApiToken.objects.create(user=alice)
    backend = Client(enforce_csrf_checks=True)
    backend.force_login(bob)  # the token decides, not the cookie beside it
    auth = {"authorization": f"Token {token.key}"}
    for response in (
        post(backend, headers=auth),
        post(backend, {"origin": APP}, content_type="application/json", headers=auth),
    ):
        assert response.status_code == 200, response.content
        assert "no-store" in response["Cache-Control"]
        answer = response.json()
        assert (answer["origin"], answer["expires_in"]) == (APP, 60)
        assert user_for_ticket(answer["ticket"], APP) == alice
        assert user_for_ticket(answer["ticket"], "https://other.example.com") is None


def test_the_view_refuses_origins_that_may_not_use_tickets(alice: Any) -> None:
    backend = Client()
    backend.force_login(alice)
    for data, why in (
        ({"origin": APP}, "TICKET_ORIGINS"),  # tickets are off for other sites by default
        ({"origin": "https://evil.example"}, "TICKET_ORIGINS"),
        ({"origin": "null"}, "TICKET_ORIGINS"),
        ({}, "origin"),
        ({"origin": ["a", "list"]}, "origin"),
    ):
        response = post(backend, data, content_type="application/json")
        assert response.status_code == 400, data
        assert why in response.json()["error"], data
    # The site's own origins need no setting.
    assert post(backend, {"origin": "http://localhost"}).status_code == 200
    with override_settings(TRANSCRIBE={"TICKET_ORIGINS": [APP]}):
        assert post(backend).status_code == 200


def test_the_view_is_post_only(alice: Any) -> None:
    backend = Client()
    backend.force_login(alice)
    assert backend.get(reverse("transcribe:ticket"), {"origin": APP}).status_code == 405
