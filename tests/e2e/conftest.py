"""A real daphne server (demo project, DEBUG off, WhiteNoise, collected static files) and Debian's
Chromium driven by Playwright, with a WAV file as the microphone.

The browser is never downloaded: these tests skip, saying why, where /usr/bin/chromium or the
playwright package is missing (``.ci/run`` installs both).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("TRANSCRIBE_CHROMIUM", "/usr/bin/chromium")
USERNAME, PASSWORD = "reviewer", "correct horse battery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """daphne serving project.asgi on a fixed port; ``restart()`` kills it hard, like a crash."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "daphne.log"
        self.env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DJANGO_DEBUG": "0",
            "DJANGO_STATIC_ROOT": str(workdir / "static"),
            "DJANGO_MEDIA_ROOT": str(workdir / "media"),
            "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def manage(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=True, capture_output=True
        )

    def setup(self) -> None:
        self.manage("migrate", "--noinput")
        self.manage("collectstatic", "--noinput")
        self.manage("createsuperuser", "--noinput", "--username", USERNAME, "--email", "r@example.com")

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "daphne",
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "project.asgi:application",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"daphne did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self, hard: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            if hard:
                self.process.kill()
            else:
                self.process.terminate()
            self.process.wait(timeout=15)
        self.process = None

    def restart(self) -> None:
        self.stop(hard=True)
        self.start()


@pytest.fixture(scope="session")
def browser_available() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` (the README's set-up does)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip('playwright is missing: `pip install -e ".[dev]"`')


@pytest.fixture(scope="module")
def site_server(browser_available: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("e2e"))
    server.setup()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def open_browser(tmp_path: Path, audio_dir: Path) -> Iterator[Any]:
    """``open_browser(clip)``: a fresh Chromium profile whose microphone plays ``clip`` once."""
    from playwright.sync_api import sync_playwright

    contexts: list[Any] = []
    with sync_playwright() as playwright:

        def launch(clip: str) -> Any:
            wav = tmp_path / clip
            shutil.copy(audio_dir / clip, wav)
            context = playwright.chromium.launch_persistent_context(
                str(tmp_path / f"profile-{len(contexts)}"),
                executable_path=CHROMIUM,
                headless=True,
                viewport={"width": 1280, "height": 800},
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--use-fake-ui-for-media-stream",
                    "--use-fake-device-for-media-stream",
                    f"--use-file-for-fake-audio-capture={wav}%noloop",
                    "--autoplay-policy=no-user-gesture-required",
                ],
            )
            contexts.append(context)
            return context

        yield launch
        for context in contexts:
            context.close()


def screenshot_dir() -> Path | None:
    """Where to keep screenshots for people to look at (TRANSCRIBE_SCREENSHOTS), if anywhere."""
    folder = os.environ.get("TRANSCRIBE_SCREENSHOTS")
    if not folder:
        return None
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path
