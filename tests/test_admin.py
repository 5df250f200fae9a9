"""The admin review: find, correct, play, export, sign off and delete transcripts; staff only."""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile
from typing import Any

import pytest
import srt
import webvtt
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.core.files.base import ContentFile
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from transcribe.exports import render, session_cues
from transcribe.models import TranscriptSegment, TranscriptSession

pytestmark = pytest.mark.django_db

SEGMENTS = [
    (0.12, 2.1, "And so my fellow Americans."),
    (3.13, 4.27, "Ask not!"),
    (3725.5, 3727.25, "An hour later."),
]
CORRECTED = "Ask not what your country can do for you"
CHANGELIST = "admin:transcribe_transcriptsession_changelist"


def make_session(username: str = "alice", segments: int = 0, **fields: Any) -> TranscriptSession:
    owner, _ = get_user_model().objects.get_or_create(username=username)
    session = TranscriptSession.objects.create(owner=owner, **fields)
    TranscriptSegment.objects.bulk_create(
        TranscriptSegment(
            session=session, seq=seq, start=seq * 2.0, end=seq * 2.0 + 1.5, text=f"Words {seq}."
        )
        for seq in range(1, segments + 1)
    )
    return session


@pytest.fixture
def session() -> TranscriptSession:
    """Alice's finished session of three segments, the second already corrected by a reviewer."""
    session = make_session(
        title="JFK: inaugural / 1961", language="en", status="finished", duration=3727.25, word_count=12
    )
    for seq, (start, end, text) in enumerate(SEGMENTS, start=1):
        TranscriptSegment.objects.create(session=session, seq=seq, start=start, end=end, text=text)
    TranscriptSegment.objects.filter(session=session, seq=2).update(edited_text=CORRECTED)
    return session


def expected() -> list[tuple[float, float, str]]:
    return [(s, e, CORRECTED if t == "Ask not!" else t) for s, e, t in SEGMENTS]


def change_url(session: TranscriptSession) -> str:
    return reverse("admin:transcribe_transcriptsession_change", args=[session.pk])


def export_url(session: TranscriptSession, extension: str) -> str:
    return reverse("admin:transcribe_transcriptsession_export", args=[session.pk, extension])


def listed(client: Client, **params: Any) -> list[TranscriptSession]:
    response = client.get(reverse(CHANGELIST), params)
    assert response.status_code == 200, "an unknown filter would redirect with ?e=1"
    return list(response.context["cl"].result_list)


def act(client: Client, action: str, *sessions: TranscriptSession, **extra: Any) -> Any:
    data = {"action": action, "_selected_action": [str(s.pk) for s in sessions], **extra}
    return client.post(reverse(CHANGELIST), data)


def staff(username: str, *permissions: str) -> Client:
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user(username, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=permissions))
    client = Client()
    client.force_login(user)
    return client


# The list.


def test_changelist_shows_the_columns(admin_client: Client, session: TranscriptSession) -> None:
    TranscriptSession.objects.filter(pk=session.pk).update(reviewed_at=timezone.now())
    make_session("bob", title="Unreviewed")
    page = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert "JFK: inaugural / 1961" in page and "alice" in page and "bob" in page
    assert "1:02:07" in page  # the duration, h:mm:ss
    assert '<td class="field-word_count">12</td>' in page
    assert page.count('<td class="field-reviewed"><img src="/static/admin/img/icon-yes.svg"') == 1
    assert page.count('<td class="field-reviewed"><img src="/static/admin/img/icon-no.svg"') == 1


@pytest.mark.parametrize(
    "query", ["inaugural", "ALICE", "fellow americans", "country can do", "Ask not"], ids=str
)
def test_search_covers_title_owner_text_and_edited_text(
    admin_client: Client, session: TranscriptSession, query: str
) -> None:
    make_session("bob", segments=3, title="Something else")
    assert listed(admin_client, q=query) == [session]


def test_search_matching_many_segments_lists_the_session_once(
    admin_client: Client, session: TranscriptSession
) -> None:
    other = make_session("bob", segments=30)
    assert listed(admin_client, q="Words") == [other]
    assert listed(admin_client, q="nothing like this") == []


def test_filters(admin_client: Client, session: TranscriptSession) -> None:
    bob = make_session("bob", language="de", status="aborted")
    TranscriptSession.objects.filter(pk=bob.pk).update(
        started_at=timezone.now() - dt.timedelta(days=400), reviewed_at=timezone.now()
    )
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    assert listed(admin_client, owner__id__exact=bob.owner_id) == [bob]
    assert listed(admin_client, status__exact="finished") == [session]
    assert listed(admin_client, language__exact="de") == [bob]
    assert listed(
        admin_client, started_at__gte=str(today), started_at__lt=str(today + dt.timedelta(days=1))
    ) == [session]
    assert listed(admin_client, started_at__year=today.year, started_at__month=today.month) == [session]
    assert listed(admin_client, reviewed="yes") == [bob]
    assert listed(admin_client, reviewed="no") == [session]
    assert set(listed(admin_client)) == {session, bob}


def test_owner_filter_offers_only_users_with_sessions(
    admin_client: Client, admin_user: Any, session: TranscriptSession
) -> None:
    make_session("bob")
    response = admin_client.get(reverse(CHANGELIST))
    [owners] = [spec for spec in response.context["cl"].filter_specs if spec.title == "owner"]
    assert sorted(name for _, name in owners.lookup_choices) == ["alice", "bob"]
    assert admin_user.username not in dict(owners.lookup_choices).values()


def test_changelist_queries_do_not_grow_with_the_rows(
    admin_client: Client, django_assert_num_queries: Any
) -> None:
    for n in range(3):
        make_session(f"user{n}", segments=2)
    # Session, user, the owner filter's users, two counts, the page, the date hierarchy's range and
    # days, the language filter's values.
    with django_assert_num_queries(9):
        response = admin_client.get(reverse(CHANGELIST), {"q": "Words"})
    assert response.context["cl"].result_count == 3
    for n in range(3, 40):
        make_session(f"user{n}", segments=2)
    with django_assert_num_queries(9):
        response = admin_client.get(reverse(CHANGELIST), {"q": "Words"})
    assert response.context["cl"].result_count == 40


# The session page.


@pytest.mark.parametrize("segments", [5, 500])
def test_change_page_queries_do_not_grow_with_the_segments(
    admin_client: Client, django_assert_num_queries: Any, segments: int
) -> None:
    session = make_session(segments=segments)
    admin_client.get(change_url(session))  # warms the process-wide content type cache
    # Session, user, the session, its segments (all of them at once), its owner for the link.
    with django_assert_num_queries(5):
        response = admin_client.get(change_url(session))
    assert response.status_code == 200
    [inline] = response.context["inline_admin_formsets"]
    assert len(inline.formset.forms) == segments
    assert f"Words {segments}." in response.content.decode()


def test_segments_show_timings_read_only_and_cannot_be_added_or_deleted(
    admin_client: Client, session: TranscriptSession
) -> None:
    response = admin_client.get(change_url(session))
    page = response.content.decode()
    [inline] = response.context["inline_admin_formsets"]
    assert list(inline.formset.forms[0].fields) == ["edited_text", "id", "session"]
    assert "1:02:05.500" in page and "1:02:07.250" in page  # the third segment's timings
    assert 'name="segments-0-edited_text"' in page and 'name="segments-0-text"' not in page
    assert "segments-0-DELETE" not in page
    assert not inline.has_add_permission


def test_add_page_is_refused(admin_client: Client) -> None:
    assert admin_client.get(reverse("admin:transcribe_transcriptsession_add")).status_code == 403


def form_data(session: TranscriptSession, **edits: str) -> dict[str, Any]:
    """The change form as a browser posts it; ``edits`` maps "seq" to a segment's new edited text."""
    segments = list(session.segments.order_by("seq"))
    data: dict[str, Any] = {
        "title": session.title,
        "status": session.status,
        "language": session.language,
        "segments-TOTAL_FORMS": len(segments),
        "segments-INITIAL_FORMS": len(segments),
        "segments-MIN_NUM_FORMS": 0,
        "segments-MAX_NUM_FORMS": 0,
        "_save": "Save",
    }
    for i, seg in enumerate(segments):
        data[f"segments-{i}-id"] = seg.pk
        data[f"segments-{i}-session"] = session.pk
        data[f"segments-{i}-edited_text"] = edits.get(str(seg.seq), seg.edited_text)
    return data


def test_reviewer_corrects_a_segment_and_the_export_uses_it(
    admin_client: Client, session: TranscriptSession
) -> None:
    data = form_data(session, **{"1": "And so, my fellow Americans:"})
    # Read-only fields are not form fields: a forged value is ignored.
    data |= {"segments-0-text": "forged", "segments-0-start": "99", "word_count": "999"}
    response = admin_client.post(change_url(session), data)
    assert response.status_code == 302 and response["Location"] == reverse(CHANGELIST)
    first = session.segments.get(seq=1)
    assert (first.text, first.start, first.edited_text) == (
        "And so my fellow Americans.",
        0.12,
        "And so, my fellow Americans:",
    )
    session.refresh_from_db()
    assert session.word_count == 12
    lines = admin_client.get(export_url(session, "txt")).content.decode().splitlines()
    assert lines == ["And so, my fellow Americans:", CORRECTED, "An hour later."]


def test_a_session_too_long_to_save_under_the_field_limit_says_so(admin_client: Client) -> None:
    """500 segments post about 1,500 fields, past Django's default DATA_UPLOAD_MAX_NUMBER_FIELDS (1,000)."""
    session = make_session(segments=500)
    response = admin_client.get(change_url(session))
    [warning] = [str(m) for m in get_messages(response.wsgi_request)]
    assert "too long to save here" in warning and "DATA_UPLOAD_MAX_NUMBER_FIELDS allows 1000" in warning
    assert admin_client.post(change_url(session), form_data(session, **{"7": "Fixed."})).status_code == 400
    with override_settings(DATA_UPLOAD_MAX_NUMBER_FIELDS=2000):
        response = admin_client.get(change_url(session))
        assert list(get_messages(response.wsgi_request)) == []
        response = admin_client.post(change_url(session), form_data(session, **{"7": "Fixed."}))
    assert response.status_code == 302
    assert session.segments.get(seq=7).edited_text == "Fixed."


def test_a_short_session_has_no_warning(admin_client: Client, session: TranscriptSession) -> None:
    response = admin_client.get(change_url(session))
    assert response.status_code == 200 and list(get_messages(response.wsgi_request)) == []


def test_clearing_a_correction_brings_back_the_engine_text(
    admin_client: Client, session: TranscriptSession
) -> None:
    response = admin_client.post(change_url(session), form_data(session, **{"2": ""}))
    assert response.status_code == 302
    assert session.segments.get(seq=2).display_text == "Ask not!"


def test_player_appears_only_when_audio_was_kept(admin_client: Client, session: TranscriptSession) -> None:
    audio = reverse("transcribe:session-audio", args=[session.pk])
    page = admin_client.get(change_url(session)).content.decode()
    assert "No audio kept" in page and "<audio" not in page
    session.audio.save("x.ogg", ContentFile(b"OggS" + bytes(60)))
    page = admin_client.get(change_url(session)).content.decode()
    assert f'<audio controls preload="metadata" src="{audio}"></audio>' in page
    assert "No audio kept" not in page
    response = admin_client.get(audio)  # the player's source plays for staff
    assert response.status_code == 200 and response["Content-Type"] == "audio/ogg"
    assert b"".join(response.streaming_content).startswith(b"OggS")


def test_change_page_links_the_admin_exports(admin_client: Client, session: TranscriptSession) -> None:
    page = admin_client.get(change_url(session)).content.decode()
    for extension in ("txt", "srt", "vtt", "json"):
        assert f'href="{export_url(session, extension)}"' in page


# Exports.


def test_export_urls_parse(admin_client: Client, session: TranscriptSession) -> None:
    response = admin_client.get(export_url(session, "srt"))
    assert response["Content-Type"] == "application/x-subrip; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="jfk-inaugural-1961.srt"'
    cues = list(srt.parse(response.content.decode()))
    assert [(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in cues] == expected()

    response = admin_client.get(export_url(session, "vtt"))
    assert response["Content-Type"] == "text/vtt; charset=utf-8"
    captions = webvtt.from_string(response.content.decode())
    assert [(c.start, c.end) for c in captions][-1] == ("01:02:05.500", "01:02:07.250")
    assert [c.text for c in captions] == [t for _, _, t in expected()]

    response = admin_client.get(export_url(session, "json"))
    assert response["Content-Type"] == "application/json"
    payload = json.loads(response.content)
    assert [(s["start"], s["end"], s["text"]) for s in payload["segments"]] == expected()
    assert (payload["session"], payload["title"], payload["language"]) == (
        str(session.pk),
        session.title,
        "en",
    )

    response = admin_client.get(export_url(session, "txt"))
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content.decode().splitlines() == [t for _, _, t in expected()]


@pytest.mark.parametrize(
    "fmt, extension", [("text", "txt"), ("srt", "srt"), ("vtt", "vtt"), ("json", "json")]
)
def test_admin_export_matches_the_owners_export(
    admin_client: Client, session: TranscriptSession, fmt: str, extension: str
) -> None:
    body = render(session_cues(session), fmt, session=str(session.pk), title=session.title, language="en")
    assert admin_client.get(export_url(session, extension)).content.decode() == body


def test_export_url_is_404_for_unknown_format_or_session(
    admin_client: Client, session: TranscriptSession
) -> None:
    assert admin_client.get(export_url(session, "docx")).status_code == 404
    session_id = session.pk
    session.delete()
    missing = reverse("admin:transcribe_transcriptsession_export", args=[session_id, "txt"])
    assert admin_client.get(missing).status_code == 404


@pytest.mark.parametrize(
    "action, content_type",
    [
        ("export_txt", "text/plain; charset=utf-8"),
        ("export_srt", "application/x-subrip; charset=utf-8"),
        ("export_vtt", "text/vtt; charset=utf-8"),
        ("export_json", "application/json"),
    ],
)
def test_export_action_for_one_session_is_its_file(
    admin_client: Client, session: TranscriptSession, action: str, content_type: str
) -> None:
    response = act(admin_client, action, session)
    assert response.status_code == 200 and response["Content-Type"] == content_type
    extension = action.removeprefix("export_")
    assert response["Content-Disposition"] == f'attachment; filename="jfk-inaugural-1961.{extension}"'
    assert response.content == admin_client.get(export_url(session, extension)).content


def test_export_action_for_several_sessions_is_a_zip_with_unique_names(
    admin_client: Client, session: TranscriptSession
) -> None:
    twin = make_session("bob", segments=2, title=session.title)
    untitled = make_session("carol", segments=1)
    response = act(admin_client, "export_srt", session, twin, untitled)
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == 'attachment; filename="transcripts-srt.zip"'
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        members = {name: archive.read(name).decode() for name in archive.namelist()}
    assert len(members) == 3
    assert {
        "jfk-inaugural-1961.srt",
        "jfk-inaugural-1961-2.srt",
        f"transcript-{untitled.pk.hex[:8]}.srt",
    } == set(members)
    texts = sorted([c.content for c in srt.parse(body)] for body in members.values())
    assert texts == [[t for _, _, t in expected()], ["Words 1."], ["Words 1.", "Words 2."]]


def test_zip_of_vtt_and_json_parse(admin_client: Client, session: TranscriptSession) -> None:
    other = make_session("bob", segments=2, title="Other")
    for action, parse in [
        ("export_vtt", lambda body: [c.text for c in webvtt.from_string(body)]),
        ("export_json", lambda body: [s["text"] for s in json.loads(body)["segments"]]),
    ]:
        with zipfile.ZipFile(io.BytesIO(act(admin_client, action, session, other).content)) as archive:
            texts = sorted(parse(archive.read(name).decode()) for name in archive.namelist())
        assert texts == [[t for _, _, t in expected()], ["Words 1.", "Words 2."]], action


def test_export_action_queries_do_not_grow_with_the_selection(
    admin_client: Client, django_assert_num_queries: Any
) -> None:
    sessions = [make_session(f"user{n}", segments=20, title=f"Talk {n}") for n in range(12)]
    admin_client.get(reverse(CHANGELIST))  # warm the process-wide caches (content types)
    # The admin's own (session, user, changelist counts and filters), then the sessions and their segments.
    with django_assert_num_queries(8):
        one = act(admin_client, "export_json", sessions[0])
    with django_assert_num_queries(8):
        many = act(admin_client, "export_json", *sessions)
    assert one["Content-Type"] == "application/json"
    with zipfile.ZipFile(io.BytesIO(many.content)) as archive:
        assert len(archive.namelist()) == 12


# Review and deletion.


def test_mark_reviewed_and_not_reviewed(
    admin_client: Client, admin_user: Any, session: TranscriptSession
) -> None:
    other = make_session("bob")
    untouched = make_session("carol")
    before = timezone.now()
    response = act(admin_client, "mark_reviewed", session, other)
    assert response.status_code == 302
    assert [str(m) for m in get_messages(response.wsgi_request)] == ["2 sessions marked as reviewed."]
    for reviewed in (session, other):
        reviewed.refresh_from_db()
        assert reviewed.reviewed_by == admin_user and reviewed.reviewed_at >= before
    untouched.refresh_from_db()
    assert untouched.reviewed_at is None and untouched.reviewed_by is None
    assert set(listed(admin_client, reviewed="yes")) == {session, other}

    response = act(admin_client, "mark_not_reviewed", session)
    assert [str(m) for m in get_messages(response.wsgi_request)] == ["1 session marked as not reviewed."]
    session.refresh_from_db()
    assert session.reviewed_at is None and session.reviewed_by is None


def with_audio(session: TranscriptSession) -> tuple[Any, str]:
    session.audio.save("x.ogg", ContentFile(b"OggS" + bytes(60)))
    storage, name = session.audio.storage, session.audio.name
    assert storage.exists(name)
    return storage, name


def test_delete_button_removes_the_audio(
    admin_client: Client, session: TranscriptSession, django_capture_on_commit_callbacks: Any
) -> None:
    storage, name = with_audio(session)
    delete = reverse("admin:transcribe_transcriptsession_delete", args=[session.pk])
    assert admin_client.get(delete).status_code == 200  # asks first
    assert storage.exists(name)
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(delete, {"post": "yes"})
    assert response.status_code == 302
    assert not TranscriptSession.objects.filter(pk=session.pk).exists()
    assert not TranscriptSegment.objects.filter(session_id=session.pk).exists()
    assert not storage.exists(name)


def test_delete_selected_removes_each_audio(
    admin_client: Client, session: TranscriptSession, django_capture_on_commit_callbacks: Any
) -> None:
    other = make_session("bob", segments=2)
    kept = make_session("carol")
    files = [with_audio(s) for s in (session, other, kept)]
    with django_capture_on_commit_callbacks(execute=True):
        response = act(admin_client, "delete_selected", session, other, post="yes")
    assert response.status_code == 302
    assert list(TranscriptSession.objects.all()) == [kept]
    assert [storage.exists(name) for storage, name in files] == [False, False, True]


# Who may come in.


def test_non_staff_and_anonymous_are_sent_to_the_admin_login(session: TranscriptSession) -> None:
    owner = Client()
    owner.force_login(session.owner)  # even the session's owner, who is not staff
    urls = [
        reverse(CHANGELIST),
        change_url(session),
        reverse("admin:transcribe_transcriptsession_delete", args=[session.pk]),
        export_url(session, "txt"),
    ]
    for client in (owner, Client()):
        for url in urls:
            response = client.get(url)
            assert response.status_code == 302, url
            assert response["Location"].startswith(reverse("admin:login") + "?next="), url
        response = act(client, "export_txt", session)
        assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))
        response = act(client, "delete_selected", session, post="yes")
        assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))
    assert TranscriptSession.objects.filter(pk=session.pk, reviewed_at=None).exists()


def test_staff_without_permission_is_refused(session: TranscriptSession) -> None:
    client = staff("intern")
    assert client.get(reverse(CHANGELIST)).status_code == 403
    assert client.get(change_url(session)).status_code == 403
    assert client.get(export_url(session, "txt")).status_code == 403


def test_view_permission_exports_but_does_not_review(session: TranscriptSession) -> None:
    client = staff("auditor", "view_transcriptsession")
    response = client.get(export_url(session, "txt"))
    assert response.status_code == 200 and CORRECTED in response.content.decode()
    assert act(client, "export_txt", session).status_code == 200
    page = client.get(reverse(CHANGELIST)).content.decode()
    assert 'value="export_srt"' in page and 'value="mark_reviewed"' not in page
    act(client, "mark_reviewed", session)
    session.refresh_from_db()
    assert session.reviewed_at is None
