"""Two users: bob never sees or changes alice's transcripts, whatever URL or socket he tries.

Every URL of ``transcribe.urls`` must have a case in ``APP_CASES`` (a new URL without one fails
``test_every_url_of_the_app_has_an_isolation_case``); every admin URL of the app's models is tried
by a signed-in user who is not staff. Each case first shows that alice herself gets the page, so
that bob's 404 means "not yours" and not "wrong URL".
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib import admin
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import reverse

import transcribe.urls
from tests.conftest import load_wav
from tests.test_consumers import CHUNK, communicator, receive_until, start
from transcribe.consumers import TranscribeConsumer
from transcribe.exports import DOWNLOADS
from transcribe.models import ApiToken, TranscriptSegment, TranscriptSession
from transcribe.protocol import CloseCode
from transcribe.streaming.replay import pcm_s16le

SECRET_TITLE = "Alice's board meeting"
SECRET_TEXT = "The launch code is swordfish."
AUDIO = b"OggS" + bytes(range(200))


@pytest.fixture
def secret(alice: Any) -> TranscriptSession:
    """Alice's session: a title, a segment, a kept recording."""
    session = TranscriptSession.objects.create(owner=alice, title=SECRET_TITLE, language="en", duration=3.0)
    TranscriptSegment.objects.create(session=session, seq=1, start=0.0, end=2.5, text=SECRET_TEXT)
    session.audio.save("upload.ogg", ContentFile(AUDIO))
    return session


def signed_in(user: Any, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def leaks(response: Any, session: TranscriptSession) -> bool:
    body = b"".join(response.streaming_content) if response.streaming else response.content
    secrets = (SECRET_TITLE, SECRET_TEXT, "swordfish", str(session.pk), session.pk.hex)
    return any(s.encode() in body for s in secrets) or AUDIO in body


LOGIN = "login"  # anonymous: sent to the login page


@dataclass
class Request:
    """One request to a URL of the app about alice's session, and who gets what."""

    method: str
    url: str
    alice: int | None  # her status on a GET (None: not checked here; POSTs are in tests/test_views.py)
    bob: int
    anonymous: int | str = LOGIN
    data: dict[str, str] = field(default_factory=dict)


def _record(session: TranscriptSession) -> list[Request]:
    return [Request("get", reverse("transcribe:record"), 200, 200)]  # nobody's data on it


def _list(session: TranscriptSession) -> list[Request]:
    return [Request("get", reverse("transcribe:session-list"), 200, 200)]  # bob's own (empty) list


def _detail(session: TranscriptSession) -> list[Request]:
    url = reverse("transcribe:session-detail", args=[session.pk])
    # A POST is refused before the session is looked up: 405, for anyone's session or none.
    return [Request("get", url, 200, 404), Request("post", url, None, 405, data={"title": "pwned"})]


def _export(session: TranscriptSession) -> list[Request]:
    return [
        Request("get", reverse("transcribe:session-export", args=[session.pk, extension]), 200, 404)
        for extension in DOWNLOADS
    ]


def _rename(session: TranscriptSession) -> list[Request]:
    url = reverse("transcribe:session-rename", args=[session.pk])
    return [Request("get", url, 200, 404), Request("post", url, None, 404, data={"title": "pwned"})]


def _delete(session: TranscriptSession) -> list[Request]:
    url = reverse("transcribe:session-delete", args=[session.pk])
    return [Request("get", url, 200, 404), Request("post", url, None, 404)]


def _audio(session: TranscriptSession) -> list[Request]:
    url = reverse("transcribe:session-audio", args=[session.pk])
    return [Request("get", url, 200, 404)]


def _metrics(session: TranscriptSession) -> list[Request]:
    # Staff or a bearer token only (tests/test_metrics.py); nobody's transcript in it anyway.
    return [Request("get", reverse("transcribe:metrics"), 403, 403, anonymous=403)]


def _healthz(session: TranscriptSession) -> list[Request]:
    # Public, for load balancers: whether the database and channel layer answer, and a count.
    return [Request("get", reverse("transcribe:healthz"), 200, 200, anonymous=200)]


def _ticket(session: TranscriptSession) -> list[Request]:
    # POST only; a ticket is always for the caller (bob gets his own), never for anyone else
    # (tests/security/test_tickets.py). Anonymous: 401, not a login page, for the other site's backend.
    url = reverse("transcribe:ticket")
    return [
        Request("get", url, 405, 405, anonymous=405),
        Request("post", url, None, 200, anonymous=401, data={"origin": "http://localhost"}),
    ]


APP_CASES: dict[str, Callable[[TranscriptSession], list[Request]]] = {
    "record": _record,
    "session-list": _list,
    "session-detail": _detail,
    "session-export": _export,
    "session-rename": _rename,
    "session-delete": _delete,
    "session-audio": _audio,
    "metrics": _metrics,
    "healthz": _healthz,
    "ticket": _ticket,
}


def test_every_url_of_the_app_has_an_isolation_case() -> None:
    names = [pattern.name for pattern in transcribe.urls.urlpatterns]
    assert None not in names, "an unnamed URL cannot be given an isolation case"
    assert set(names) == set(APP_CASES), f"URLs without an isolation case: {set(names) - set(APP_CASES)}"


@pytest.mark.django_db
@pytest.mark.parametrize("name", APP_CASES)
def test_bob_never_sees_or_changes_alices_session(
    name: str, secret: TranscriptSession, alice: Any, bob: Any
) -> None:
    owner, other, anonymous = signed_in(alice), signed_in(bob), Client()
    login = reverse("login")
    for request in APP_CASES[name](secret):
        method, url, data = request.method, request.url, request.data
        if method == "get":  # the URL is right: its owner gets it
            assert owner.get(url).status_code == request.alice, url
        response = getattr(other, method)(url, data)
        assert response.status_code == request.bob, (method, url)
        assert not leaks(response, secret), (method, url)
        response = getattr(anonymous, method)(url, data)
        assert not leaks(response, secret), (method, url)
        if request.anonymous == LOGIN:
            assert response.status_code == 302, (method, url)
            assert response["Location"].startswith(f"{login}?next="), (method, url)
        else:
            assert response.status_code == request.anonymous, (method, url)
    secret.refresh_from_db()
    assert secret.title == SECRET_TITLE and secret.audio
    assert list(secret.segments.values_list("text", flat=True)) == [SECRET_TEXT]


@pytest.mark.django_db
def test_ids_that_are_not_uuids_are_404(secret: TranscriptSession, alice: Any) -> None:
    owner = signed_in(alice)
    for path in (
        "/transcribe/sessions/1/",
        "/transcribe/sessions/../admin/",
        f"/transcribe/sessions/{secret.pk}%2F..%2F..%2F/",
        f"/transcribe/sessions/{secret.pk}/export.txt%2F..%2F..%2Fsettings.py",
        f"/transcribe/sessions/{secret.pk}/export.txt/../../settings.py",
        f"/transcribe/sessions/{secret.pk}/audio.ogg/..%2F..%2F..%2Fdb.sqlite3",
    ):
        assert owner.get(path).status_code == 404, path


# The admin -------------------------------------------------------------------------------------


def admin_urls(session: TranscriptSession, token: ApiToken) -> list[str]:
    """Every named admin URL of the app's models, filled in with alice's objects."""
    objects = {TranscriptSession: session.pk, ApiToken: token.pk}
    urls = []
    for model, model_admin in admin.site._registry.items():
        if model._meta.app_label != "transcribe":
            continue
        for pattern in model_admin.urls:
            if not pattern.name:
                continue  # the catch-all redirect to the change page
            kwargs = {}
            for key in pattern.pattern.converters:
                kwargs[key] = {"object_id": objects[model], "extension": "txt"}[key]
            urls.append(reverse(f"admin:{pattern.name}", kwargs=kwargs))
    return urls


@pytest.mark.django_db
def test_the_admin_sends_users_who_are_not_staff_to_log_in(
    secret: TranscriptSession, alice: Any, bob: Any
) -> None:
    token = ApiToken.objects.create(user=alice)
    urls = admin_urls(secret, token)
    assert any("/export.txt/" in url for url in urls) and any("apitoken" in url for url in urls)
    login = reverse("admin:login")
    for client in (signed_in(bob), signed_in(alice), Client()):  # alice owns it, but is not staff
        for url in urls:
            for response in (client.get(url), client.post(url, {"title": "pwned", "post": "yes"})):
                assert response.status_code == 302, url
                assert response["Location"].startswith(f"{login}?next="), url
                assert not leaks(response, secret) and token.key.encode() not in response.content
    secret.refresh_from_db()
    assert secret.title == SECRET_TITLE and ApiToken.user_for(token.key) == alice


# CSRF ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_forged_cross_site_post_changes_nothing(secret: TranscriptSession, alice: Any) -> None:
    """A page elsewhere can make alice's browser post with her cookie, but not with her CSRF token."""
    forged = signed_in(alice, enforce_csrf_checks=True)
    for name, data in (("session-rename", {"title": "pwned"}), ("session-delete", {})):
        response = forged.post(reverse(f"transcribe:{name}", args=[secret.pk]), data)
        assert response.status_code == 403, name
    response = forged.post(reverse("logout"))
    assert response.status_code == 403
    secret.refresh_from_db()
    assert secret.title == SECRET_TITLE


# The socket ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_bob_cannot_resume_alices_session_over_the_real_routing(alice: Any, bob: Any) -> None:
    from project.asgi import application

    session = await TranscriptSession.objects.acreate(
        owner=alice, title=SECRET_TITLE, status="finished", duration=3.0
    )
    await TranscriptSegment.objects.acreate(session=session, seq=1, start=0.0, end=2.5, text=SECRET_TEXT)
    token = await ApiToken.objects.acreate(user=bob)
    headers = [(b"origin", b"http://localhost"), (b"authorization", f"Token {token.key}".encode())]
    comm = WebsocketCommunicator(application, "/ws/transcribe/", headers=headers)
    assert (await comm.connect())[0]
    await comm.send_json_to({"type": "start", "format": "pcm_s16le", "session": str(session.pk)})
    error = await comm.receive_output(timeout=10)
    assert "swordfish" not in error["text"] and SECRET_TITLE not in error["text"]
    assert (await comm.receive_output(timeout=5))["code"] == CloseCode.NOT_YOUR_SESSION
    await comm.disconnect()
    unchanged = await TranscriptSession.objects.aget(pk=session.pk)
    assert (unchanged.status, unchanged.duration, unchanged.ended_at) == ("finished", 3.0, session.ended_at)
    assert await TranscriptSegment.objects.filter(session=session).acount() == 1


async def outputs_until_closed(comm: WebsocketCommunicator, *send: str) -> list[dict[str, Any]]:
    """Events up to the close, after sending the control messages ``send``."""
    events: list[dict[str, Any]] = []
    for kind in send:
        await comm.send_json_to({"type": kind})
    while True:
        output = await comm.receive_output(timeout=60)
        if output["type"] == "websocket.close":
            events.append({"type": "close", "code": output["code"]})
            return events
        events.append(json.loads(output["text"]))


@pytest.mark.django_db(transaction=True)
async def test_two_sockets_on_one_session_never_lose_a_final(alice: Any, audio_dir: Any) -> None:
    """One user, one session, two sockets at once (a second tab, or a reconnect before the server
    noticed the first socket died): whatever the server does with the first socket, no client is
    told a final that is not stored as told, and no seq is used twice.

    Before the take-over on resume (close 4409), both sockets numbered their finals from the same
    seq and the second to store one got the other's row back (``_store_final`` takes that
    IntegrityError for its own retry): its client was told text the database does not have.
    """
    jfk = pcm_s16le(load_wav(audio_dir / "jfk.wav"))
    golden = pcm_s16le(load_wav(audio_dir / "librispeech_61-70968-0002.wav"))
    first = communicator(alice)
    ready = await start(first)
    # "And so my fellow Americans." then a pause: final #1. Then "Ask not", too soon for its final.
    for i in range(0, int(3.0 * 16000) * 2, CHUNK):
        await first.send_to(bytes_data=jfk[i : i + CHUNK])
    told: list[dict[str, Any]] = [(await receive_until(first, "final"))[-1]]
    for i in range(int(3.0 * 16000) * 2, int(4.1 * 16000) * 2, CHUNK):
        await first.send_to(bytes_data=jfk[i : i + CHUNK])
    await asyncio.sleep(0.5)
    second = communicator(alice)
    resumed = await start(second, session=ready["session"])
    told += resumed["finals"]
    for i in range(0, len(golden), CHUNK):
        await second.send_to(bytes_data=golden[i : i + CHUNK])
    await second.send_json_to({"type": "finalize"})
    told.append((await receive_until(second, "final"))[-1])
    # The first socket ends "Ask not" and stops, if the server still listens to it.
    first_events = await outputs_until_closed(first, "finalize", "stop")
    assert first_events[-1]["code"] in (CloseCode.NORMAL, 4409), first_events[-1]  # 4409: taken over
    told += [e for e in first_events if e["type"] == "final"]
    second_events = await outputs_until_closed(second, "stop")
    told += [e for e in second_events if e["type"] == "final"]
    await second.disconnect()
    await first.disconnect()
    if TranscribeConsumer.draining:
        await asyncio.wait(set(TranscribeConsumer.draining), timeout=60)

    stored = await database_sync_to_async(
        lambda: sorted(
            TranscriptSegment.objects.filter(session_id=ready["session"]).values_list("pk", "seq", "text")
        )
    )()
    told_rows = {(f["id"], f["seq"], f["text"]) for f in told}
    assert told_rows <= set(stored), f"told {told_rows - set(stored)}, which is not stored ({stored})"
    assert [seq for _, seq, _ in sorted(stored, key=lambda r: r[1])] == list(range(1, len(stored) + 1))
    text = " ".join(t for _, _, t in sorted(stored, key=lambda r: r[1])).lower()
    assert "fellow americans" in text and "golden fortune" in text


@pytest.mark.django_db(transaction=True)
async def test_two_users_streaming_at_once_each_get_their_own_words(
    alice: Any, bob: Any, audio_dir: Any
) -> None:
    a, b = communicator(alice), communicator(bob)
    ready_a, ready_b = await start(a), await start(b)
    clips = {
        a: pcm_s16le(load_wav(audio_dir / "librispeech_61-70968-0002.wav")),
        b: pcm_s16le(load_wav(audio_dir / "jfk.wav"))[: 16000 * 2 * 3],
    }
    for i in range(0, max(len(c) for c in clips.values()), CHUNK):
        for comm, data in clips.items():
            if i < len(data):
                await comm.send_to(bytes_data=data[i : i + CHUNK])
    texts = {}
    for comm in (a, b):
        await comm.send_json_to({"type": "stop"})
        events = await receive_until(comm, "closed")
        texts[comm] = events[-1]["text"].lower()
        await comm.disconnect()
    assert "golden" in texts[a] and "americans" not in texts[a]
    assert "americans" in texts[b] and "golden" not in texts[b]
    for ready, user in ((ready_a, alice), (ready_b, bob)):
        session = await TranscriptSession.objects.aget(pk=ready["session"])
        assert session.owner_id == user.pk
