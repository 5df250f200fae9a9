"""The user's own transcript pages and downloads; nobody else's (404)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import srt
import webvtt
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.test import Client, override_settings
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


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def with_audio(session: TranscriptSession) -> bytes:
    content = b"OggS" + bytes(range(100))
    session.audio.save("a.ogg", ContentFile(content))
    return content


# Rename


def test_owner_renames_a_session(session: TranscriptSession) -> None:
    url = reverse("transcribe:session-rename", args=[session.pk])
    detail = reverse("transcribe:session-detail", args=[session.pk])
    response = client_for("alice").post(url, {"title": "Inaugural address"}, follow=True)
    assert response.redirect_chain == [(detail, 302)]
    assert messages_of(response) == ["Renamed."]
    session.refresh_from_db()
    assert session.title == "Inaugural address"
    assert "<h1>Inaugural address</h1>" in response.content.decode()


def test_blank_title_falls_back_to_the_start_time(session: TranscriptSession) -> None:
    response = client_for("alice").post(
        reverse("transcribe:session-rename", args=[session.pk]), {"title": ""}
    )
    assert response.status_code == 302
    session.refresh_from_db()
    assert session.title == "" and str(session).startswith("Session ")


def test_too_long_title_is_refused(session: TranscriptSession) -> None:
    response = client_for("alice").post(
        reverse("transcribe:session-rename", args=[session.pk]), {"title": "x" * 201}
    )
    assert response.status_code == 200 and "at most 200 characters" in response.content.decode()
    session.refresh_from_db()
    assert session.title == "JFK: inaugural / 1961"


def test_detail_page_has_rename_and_delete(session: TranscriptSession) -> None:
    page = client_for("alice").get(reverse("transcribe:session-detail", args=[session.pk])).content.decode()
    assert f'action="{reverse("transcribe:session-rename", args=[session.pk])}"' in page
    assert 'name="title"' in page and 'value="JFK: inaugural / 1961"' in page
    assert f'href="{reverse("transcribe:session-delete", args=[session.pk])}"' in page


def test_someone_else_cannot_rename(session: TranscriptSession) -> None:
    mallory = client_for("mallory")
    url = reverse("transcribe:session-rename", args=[session.pk])
    assert mallory.get(url).status_code == 404
    assert mallory.post(url, {"title": "pwned"}).status_code == 404
    session.refresh_from_db()
    assert session.title == "JFK: inaugural / 1961"


# Delete


def test_delete_asks_first(session: TranscriptSession) -> None:
    response = client_for("alice").get(reverse("transcribe:session-delete", args=[session.pk]))
    page = response.content.decode()
    assert response.status_code == 200
    assert "Delete JFK: inaugural / 1961?" in page and "Its transcript" in page and 'method="post"' in page
    assert TranscriptSession.objects.filter(pk=session.pk).exists()


def test_owner_deletes_a_session_with_its_segments_and_audio(
    session: TranscriptSession, django_capture_on_commit_callbacks: Any
) -> None:
    with_audio(session)
    storage, name = session.audio.storage, session.audio.name
    assert storage.exists(name)
    page = client_for("alice").get(reverse("transcribe:session-delete", args=[session.pk])).content.decode()
    assert "Its transcript and recording will be deleted." in page
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for("alice").post(
            reverse("transcribe:session-delete", args=[session.pk]), follow=True
        )
    assert response.redirect_chain == [(reverse("transcribe:session-list"), 302)]
    assert messages_of(response) == ["Deleted “JFK: inaugural / 1961”."]
    assert not TranscriptSession.objects.filter(pk=session.pk).exists()
    assert not TranscriptSegment.objects.filter(session_id=session.pk).exists()
    assert not storage.exists(name)


def test_someone_else_cannot_delete(session: TranscriptSession) -> None:
    mallory = client_for("mallory")
    url = reverse("transcribe:session-delete", args=[session.pk])
    assert mallory.get(url).status_code == 404
    assert mallory.post(url).status_code == 404
    assert TranscriptSession.objects.filter(pk=session.pk).exists()
    assert TranscriptSegment.objects.filter(session=session).count() == len(SEGMENTS)


def test_anonymous_is_sent_to_log_in_for_rename_and_delete(session: TranscriptSession) -> None:
    anonymous = Client()
    login = reverse("login")
    for name in ("session-rename", "session-delete", "session-detail", "session-list"):
        url = reverse(f"transcribe:{name}", args=[] if name == "session-list" else [session.pk])
        for response in (anonymous.get(url), anonymous.post(url, {"title": "pwned"})):
            assert response.status_code == 302 and response["Location"].startswith(f"{login}?next=")
    session.refresh_from_db()
    assert session.title == "JFK: inaugural / 1961"


# Log in and out


def test_login_page_renders() -> None:
    response = Client().get(reverse("login") + "?next=/transcribe/sessions/")
    page = response.content.decode()
    assert response.status_code == 200
    assert "csrfmiddlewaretoken" in page and 'name="username"' in page and 'name="password"' in page
    assert 'name="next" value="/transcribe/sessions/"' in page


def test_login_shows_errors_and_then_lets_the_user_in(django_user_model: Any) -> None:
    django_user_model.objects.create_user("alice", password="correct horse")
    client = Client(enforce_csrf_checks=True)
    page = client.get(reverse("login"))
    token = page.cookies["csrftoken"].value
    wrong = client.post(
        reverse("login"), {"username": "alice", "password": "nope", "csrfmiddlewaretoken": token}
    )
    assert wrong.status_code == 200 and "enter a correct username and password" in wrong.content.decode()
    response = client.post(
        reverse("login"), {"username": "alice", "password": "correct horse", "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 302 and response["Location"] == reverse("transcribe:session-list")
    listing = client.get(response["Location"])
    assert listing.status_code == 200 and "alice" in listing.content.decode()


def test_logout_is_a_post_form_in_the_header(session: TranscriptSession) -> None:
    alice = client_for("alice")
    page = alice.get(reverse("transcribe:session-list")).content.decode()
    assert f'<form method="post" action="{reverse("logout")}">' in page
    response = alice.post(reverse("logout"))
    assert response.status_code == 302 and response["Location"] == reverse("login")
    assert alice.get(reverse("transcribe:session-list")).status_code == 302


# Detail and list pages


def test_detail_shows_the_player_only_when_audio_was_kept(session: TranscriptSession) -> None:
    alice = client_for("alice")
    detail = reverse("transcribe:session-detail", args=[session.pk])
    audio = reverse("transcribe:session-audio", args=[session.pk])
    page = alice.get(detail).content.decode()
    assert "<audio" not in page and audio not in page
    with_audio(session)
    page = alice.get(detail).content.decode()
    assert f'<audio controls preload="metadata" src="{audio}">' in page


def test_detail_shows_status_duration_words_and_language(session: TranscriptSession) -> None:
    TranscriptSession.objects.filter(pk=session.pk).update(
        status=TranscriptSession.Status.FINISHED, duration=3727.4, word_count=12
    )
    page = client_for("alice").get(reverse("transcribe:session-detail", args=[session.pk])).content.decode()
    for value in ("Finished", "1:02:07", "<dd>12</dd>", "<dd>en</dd>"):
        assert value in page


def test_list_shows_word_counts_and_durations(session: TranscriptSession) -> None:
    TranscriptSession.objects.filter(pk=session.pk).update(duration=65.4, word_count=1234)
    page = client_for("alice").get(reverse("transcribe:session-list")).content.decode()
    assert '<td class="num">1234</td>' in page and '<td class="num">1:05</td>' in page
    assert "Active" in page and 'class="pagination"' not in page


def test_list_paginates(django_user_model: Any) -> None:
    alice = django_user_model.objects.create_user("alice")
    TranscriptSession.objects.bulk_create(
        TranscriptSession(owner=alice, title=f"Talk {i:02d}", word_count=i) for i in range(60)
    )
    client = client_for("alice")
    first = client.get(reverse("transcribe:session-list"))
    second = client.get(reverse("transcribe:session-list") + "?page=2")
    assert first.context["paginator"].num_pages == 2
    assert len(first.context["rows"]) == 50 and len(second.context["rows"]) == 10
    assert "Page 1 of 2" in first.content.decode() and 'href="?page=2"' in first.content.decode()
    assert "Page 2 of 2" in second.content.decode() and 'href="?page=1"' in second.content.decode()
    assert client.get(reverse("transcribe:session-list") + "?page=3").status_code == 404


def test_empty_list_says_so(django_user_model: Any) -> None:
    page = client_for("nobody").get(reverse("transcribe:session-list")).content.decode()
    assert "No transcripts yet." in page and "<table" not in page


# The recording


def audio_url(session: TranscriptSession) -> str:
    return reverse("transcribe:session-audio", args=[session.pk])


def test_owner_gets_the_recording(session: TranscriptSession) -> None:
    content = with_audio(session)
    response = client_for("alice").get(audio_url(session))
    assert response.status_code == 200 and response["Content-Type"] == "audio/ogg"
    assert response["Accept-Ranges"] == "bytes"
    assert b"".join(response.streaming_content) == content


def test_recording_honours_a_byte_range(session: TranscriptSession) -> None:
    content = with_audio(session)
    response = client_for("alice").get(audio_url(session), headers={"Range": "bytes=0-9"})
    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes 0-9/{len(content)}" and response["Content-Length"] == "10"
    assert b"".join(response.streaming_content) == content[:10]


def test_recording_range_past_the_end_is_416(session: TranscriptSession) -> None:
    content = with_audio(session)
    response = client_for("alice").get(audio_url(session), headers={"Range": "bytes=999999-"})
    assert response.status_code == 416 and response["Content-Range"] == f"bytes */{len(content)}"


def test_recording_is_404_for_someone_else_and_without_audio(session: TranscriptSession) -> None:
    assert client_for("alice").get(audio_url(session)).status_code == 404  # nothing kept yet
    with_audio(session)
    assert client_for("mallory").get(audio_url(session)).status_code == 404


def test_anonymous_is_sent_to_log_in_for_the_recording(session: TranscriptSession) -> None:
    with_audio(session)
    response = Client().get(audio_url(session))
    assert response.status_code == 302 and response["Location"].startswith(f"{reverse('login')}?next=")


def test_recording_page_needs_a_login_and_names_its_assets(session: TranscriptSession) -> None:
    anonymous = Client().get("/transcribe/")
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/accounts/login/")
    page = client_for("alice").get("/transcribe/")
    html = page.content.decode()
    assert page.status_code == 200
    assert 'data-ws-url="/ws/transcribe/"' in html and 'data-capture="auto"' in html
    for asset in ("transcribe/record.js", "transcribe/pcm-worklet.js", "transcribe/record.css"):
        assert f"/static/{asset}" in html
    # tiny.en understands English only: no other language is offered.
    assert page.context["languages"] == [("en", "English")]


@pytest.mark.parametrize(("asked", "used"), [("mediarecorder", "mediarecorder"), ("<script>", "auto")])
def test_recording_page_capture_flag(session: TranscriptSession, asked: str, used: str) -> None:
    page = client_for("alice").get("/transcribe/", {"capture": asked})
    assert page.context["capture"] == used


@override_settings(TRANSCRIBE={"MODEL": "base", "LANGUAGE": None})
def test_multilingual_models_offer_languages_and_detection(session: TranscriptSession) -> None:
    page = client_for("alice").get("/transcribe/")
    codes = [code for code, _ in page.context["languages"]]
    assert {"en", "", "de", "fr"} <= set(codes) and page.context["language"] == ""
