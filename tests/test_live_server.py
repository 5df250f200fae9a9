"""A real daphne server on a free port, driven by the reference client over a real socket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wer

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def daphne_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A migrated SQLite file, a user with a token and daphne serving project.asgi, as a newcomer
    would run them; yields (websocket URL, token)."""
    db = tmp_path_factory.mktemp("live") / "db.sqlite3"
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{db}",
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DJANGO_DEBUG": "0",
    }
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput"], cwd=ROOT, env=env, check=True, capture_output=True)
    token = subprocess.run(
        [*manage, "transcribe_token", "newcomer", "--create-user"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "project.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        server.kill()
        pytest.fail(f"daphne did not start: {server.stderr.read().decode() if server.stderr else ''}")
    yield f"ws://127.0.0.1:{port}/ws/transcribe/", token
    server.terminate()
    server.wait(timeout=10)


def run_client(url: str, clip: Path, *args: str) -> tuple[int, list[dict[str, object]]]:
    proc = subprocess.run(
        [sys.executable, "-m", "transcribe.client", url, str(clip), "--quiet", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("fmt", ["pcm_s16le", "webm"])
def test_reference_client_streams_a_file(
    daphne_server: tuple[str, str], audio_dir: Path, refs: dict[str, str], fmt: str
) -> None:
    url, token = daphne_server
    code, events = run_client(
        url, audio_dir / "librispeech_1272-128104-0000.wav", "--token", token, "--format", fmt, "--speed", "2"
    )
    assert code == 0, events
    kinds = [e["type"] for e in events]
    assert kinds[0] == "ready" and kinds[-1] == "closed" and "final" in kinds
    closed = events[-1]
    # Measured 0.0 with tiny.en; a small margin for timing-dependent utterance cuts.
    assert wer(refs["librispeech_1272-128104-0000.wav"], str(closed["text"])) <= 0.1
    assert " ".join(str(e["text"]) for e in events if e["type"] == "final") == closed["text"]


def test_anonymous_client_is_refused_with_4401(daphne_server: tuple[str, str], audio_dir: Path) -> None:
    url, _ = daphne_server
    code, events = run_client(url, audio_dir / "librispeech_61-70968-0002.wav")
    assert code == 2
    assert events[-1]["type"] == "disconnected" and events[-1]["code"] == 4401  # daphne sends no close reason
