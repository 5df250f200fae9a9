"""The user's own transcript pages and downloads; nobody else's (404)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import srt
import webvtt
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from transcribe.models import TranscriptSegment, TranscriptSession

pytestmark = pytest.mark.django_db

SEGMENTS = [
    (0.12, 2.1, "And so my fellow Americans."),
    (3.13, 4.27, "Ask not!"),
    (3725.5, 3727.25, "An hour later."),
]


@pytest.fixture
def session() -> TranscriptSession:
    owner = get_user_model().objects.create_user("alice", password="pw")
    session = TranscriptSession.objects.create(owner=owner, title="JFK: inaugural / 1961", language="en")
    for seq, (start, end, text) in enumerate(SEGMENTS, start=1):
        TranscriptSegment.objects.create(session=session, seq=seq, start=start, end=end, text=text)
    # A reviewer's correction wins over what the engine heard.
    TranscriptSegment.objects.filter(session=session, seq=2).update(edited_text="Ask not what your country")
    return session


def client_for(username: str) -> Client:
    client = Client()
    user = get_user_model().objects.filter(username=username).first() or get_user_model().objects.create_user(
        username
    )
    client.force_login(user)
    return client


def expected() -> list[tuple[float, float, str]]:
    return [(s, e, "Ask not what your country" if t == "Ask not!" else t) for s, e, t in SEGMENTS]


def export(session: TranscriptSession, extension: str, client: Client) -> Any:
    return client.get(reverse("transcribe:session-export", args=[session.pk, extension]))


def test_srt_round_trips_timings(session: TranscriptSession) -> None:
    response = export(session, "srt", client_for("alice"))
    assert response.status_code == 200 and response["Content-Type"].startswith("application/x-subrip")
    assert response["Content-Disposition"] == 'attachment; filename="jfk-inaugural-1961.srt"'
    cues = list(srt.parse(response.content.decode()))
    assert [(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in cues] == expected()


def test_vtt_round_trips_timings(session: TranscriptSession) -> None:
    response = export(session, "vtt", client_for("alice"))
    captions = webvtt.from_string(response.content.decode())
    assert [c.start for c in captions] == ["00:00:00.120", "00:00:03.130", "01:02:05.500"]
    assert [c.end for c in captions] == ["00:00:02.100", "00:00:04.270", "01:02:07.250"]
    assert [c.text for c in captions] == [t for _, _, t in expected()]


def test_json_and_text(session: TranscriptSession) -> None:
    alice = client_for("alice")
    payload = json.loads(export(session, "json", alice).content)
    assert [(s["start"], s["end"], s["text"]) for s in payload["segments"]] == expected()
    assert payload["session"] == str(session.pk) and payload["text"] == " ".join(t for _, _, t in expected())
    assert export(session, "txt", alice).content.decode().splitlines() == [t for _, _, t in expected()]


def test_pages_list_and_show_own_sessions(session: TranscriptSession) -> None:
    alice = client_for("alice")
    listing = alice.get(reverse("transcribe:session-list"))
    assert listing.status_code == 200 and session.title in listing.content.decode()
    detail = alice.get(reverse("transcribe:session-detail", args=[session.pk])).content.decode()
    assert "Ask not what your country" in detail and "Ask not!" not in detail
    assert reverse("transcribe:session-export", args=[session.pk, "srt"]) in detail


def test_someone_else_gets_404_everywhere(session: TranscriptSession) -> None:
    mallory = client_for("mallory")
    assert session.title not in mallory.get(reverse("transcribe:session-list")).content.decode()
    assert mallory.get(reverse("transcribe:session-detail", args=[session.pk])).status_code == 404
    for extension in ("txt", "srt", "vtt", "json"):
        assert export(session, extension, mallory).status_code == 404


def test_anonymous_is_sent_to_log_in(session: TranscriptSession) -> None:
    response = export(session, "srt", Client())
    assert response.status_code == 302 and "login" in response["Location"]


def test_unknown_format_is_404(session: TranscriptSession) -> None:
    assert export(session, "docx", client_for("alice")).status_code == 404
