"""What must not leak: transcript text into logs, recordings through a public URL, user input into
file names or headers, and the demo's secrets and debug switch (read from the environment)."""

from __future__ import annotations

import ast
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.test import Client, override_settings
from django.urls import get_resolver, reverse

from tests.conftest import load_wav
from tests.test_consumers import CHUNK, communicator, receive_until, start
from transcribe.models import TranscriptSegment, TranscriptSession
from transcribe.streaming.replay import pcm_s16le

ROOT = Path(__file__).resolve().parents[2]
SECRET_TITLE = "Quarterly layoffs plan"
LEVELS_ABOVE_DEBUG = ("info", "warning", "error", "exception", "critical")


# -- logs ---------------------------------------------------------------------------------------


def logger_calls_with_user_content() -> tuple[int, list[str]]:
    """Logger calls above DEBUG in the app (how many), and those whose arguments name transcript
    text, words or titles."""
    suspicious = re.compile(r"\b(text|texts|words?|title|transcript|prompt|committed_text|stable|unstable)\b")
    calls, found = 0, []
    for path in sorted((ROOT / "transcribe").rglob("*.py")):
        if "migrations" in path.parts:
            continue
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LEVELS_ABOVE_DEBUG
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "logger"
            ):
                calls += 1
                for arg in [*node.args[1:], *(k.value for k in node.keywords)]:
                    segment = ast.get_source_segment(source, arg) or ""
                    if suspicious.search(segment):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {segment}")
    return calls, found


def test_no_logger_call_above_debug_is_given_transcript_text() -> None:
    calls, found = logger_calls_with_user_content()
    assert calls > 20  # the scan sees the app's logging
    assert found == []


@pytest.mark.django_db(transaction=True)
async def test_a_real_session_logs_no_transcript_text_or_title(
    alice: Any, audio_dir: Path, caplog: Any
) -> None:
    caplog.set_level(logging.INFO)
    comm = communicator(alice)
    await start(comm, title=SECRET_TITLE)
    speech = load_wav(audio_dir / "librispeech_61-70968-0002.wav")
    data = pcm_s16le(np.concatenate((speech, np.zeros(16000, dtype=np.float32))))
    for i in range(0, len(data), CHUNK):
        await comm.send_to(bytes_data=data[i : i + CHUNK])
    await comm.send_to(bytes_data=b"\x00")  # half a sample: harmless, but exercises the decoder
    await comm.send_json_to({"type": "stop"})
    closed = (await receive_until(comm, "closed"))[-1]
    await comm.disconnect()
    assert "golden fortune" in closed["text"].lower()
    logged = "\n".join(record.getMessage() for record in caplog.records if record.levelno >= logging.INFO)
    assert "Session" in logged  # the session is logged, by id
    for secret in ("golden", "fortune", "happy life", SECRET_TITLE):
        assert secret.lower() not in logged.lower(), secret


# -- recordings are never public ---------------------------------------------------------------


@pytest.fixture
def kept(alice: Any) -> TranscriptSession:
    session = TranscriptSession.objects.create(owner=alice, title="Kept")
    session.audio.save("../../../../etc/passwd", ContentFile(b"OggS" + bytes(100)))
    return session


@pytest.mark.django_db
def test_audio_file_names_come_from_ids_not_from_the_client(kept: TranscriptSession, alice: Any) -> None:
    assert kept.audio.name == f"transcribe/audio/{alice.pk}/{kept.pk}.ogg"
    assert Path(kept.audio.path).resolve().is_relative_to(Path(settings.MEDIA_ROOT).resolve())


@pytest.mark.django_db
def test_recordings_are_not_served_from_a_media_url(kept: TranscriptSession, alice: Any) -> None:
    """Only transcribe:session-audio (which checks who asks) serves a recording; no route serves
    MEDIA_ROOT, so the file's storage path is no URL at all, not even for its owner."""
    from django.views.static import serve

    def views(resolver: Any) -> list[Any]:
        found = []
        for pattern in resolver.url_patterns:
            found += views(pattern) if hasattr(pattern, "url_patterns") else [pattern.callback]
        return found

    assert serve not in views(get_resolver())
    owner = Client()
    owner.force_login(alice)
    name = kept.audio.name
    for path in (f"/media/{name}", f"/{name}", f"/transcribe/{name}", f"/static/../media/{name}"):
        assert owner.get(path).status_code == 404, path
    assert owner.get(reverse("transcribe:session-audio", args=[kept.pk])).status_code == 200


# -- names in headers --------------------------------------------------------------------------


HOSTILE_TITLES = [
    "../../etc/passwd\"; filename*=UTF-8''evil.exe",
    "report\r\nSet-Cookie: session=stolen",
    "日本語のタイトル",  # nothing ASCII left: the id stands in
    "<script>alert(1)</script>",
]


@pytest.mark.django_db
@pytest.mark.parametrize("title", HOSTILE_TITLES)
def test_download_names_are_safe_whatever_the_title(title: str, alice: Any) -> None:
    session = TranscriptSession.objects.create(owner=alice, title=title)
    TranscriptSegment.objects.create(session=session, seq=1, start=0, end=1, text="hi")
    session.audio.save("a.ogg", ContentFile(b"OggS" + bytes(100)))
    owner = Client()
    owner.force_login(alice)
    safe = re.compile(r'^(attachment|inline); filename="[a-z0-9_-]+\.(txt|srt|vtt|json|ogg)"$')
    urls = [
        reverse("transcribe:session-export", args=[session.pk, ext]) for ext in ("txt", "srt", "vtt", "json")
    ]
    for url in [*urls, reverse("transcribe:session-audio", args=[session.pk])]:
        response = owner.get(url)
        assert response.status_code == 200, url
        assert safe.match(response["Content-Disposition"]), response["Content-Disposition"]
        assert "Set-Cookie" not in response.headers or "stolen" not in response.headers["Set-Cookie"]
    page = owner.get(reverse("transcribe:session-detail", args=[session.pk])).content.decode()
    assert "<script>alert(1)</script>" not in page  # titles are escaped in pages


# -- the demo project's secrets and switches ---------------------------------------------------


def demo_settings(env: dict[str, str], *names: str) -> list[str]:
    """Values of the demo project's settings under ``env`` (a fresh interpreter: they are read once)."""
    code = f"import project.settings as s; print('\\n'.join(repr(getattr(s, n)) for n in {names!r}))"
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL", "TRANSCRIBE_"))
    }
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.splitlines()


def test_demo_secrets_and_debug_come_from_the_environment() -> None:
    production = {
        "DJANGO_SECRET_KEY": "k" * 60,
        "DJANGO_DEBUG": "0",
        "DJANGO_ALLOWED_HOSTS": "transcribe.example.org",
        "DATABASE_URL": "postgres://app:s3cret@db.example.org:5432/transcribe",
    }
    key, debug, hosts, databases = demo_settings(
        production, "SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "DATABASES"
    )
    assert key == repr("k" * 60) and debug == "False" and hosts == repr(["transcribe.example.org"])
    assert "'PASSWORD': 's3cret'" in databases
    # Without the environment: a developer's machine (DEBUG on, a key that says it is not secret).
    key, debug = demo_settings({}, "SECRET_KEY", "DEBUG")
    assert debug == "True" and "insecure" in key


def test_deploy_check_flags_the_developer_defaults() -> None:
    """``manage.py check --deploy`` catches a demo started without its environment."""

    def deploy_warnings(env: dict[str, str]) -> set[str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL"))}
        result = subprocess.run(
            [sys.executable, "manage.py", "check", "--deploy"],
            cwd=ROOT,
            env={**clean, "DJANGO_SETTINGS_MODULE": "project.settings", **env},
            capture_output=True,
            text=True,
        )
        return set(re.findall(r"\(security\.(W\d+)\)", result.stdout + result.stderr))

    developer = deploy_warnings({})
    assert {"W009", "W018"} <= developer  # weak SECRET_KEY, DEBUG on
    production = deploy_warnings({"DJANGO_SECRET_KEY": os.urandom(40).hex(), "DJANGO_DEBUG": "0"})
    assert not {"W009", "W018"} & production


@override_settings(DEBUG=False)
@pytest.mark.django_db
def test_errors_show_no_debug_page(alice: Any) -> None:
    owner = Client()
    owner.force_login(alice)
    response = owner.get("/transcribe/sessions/not-a-uuid/")
    assert (
        response.status_code == 404
        and b"Traceback" not in response.content
        and b"URLconf" not in response.content
    )
