"""A real daphne server (demo project, DEBUG off, WhiteNoise, collected static files) and Debian's
Chromium driven by Playwright, with a WAV file as the microphone.

The browser is never downloaded: these tests skip, saying why, where /usr/bin/chromium or the
playwright package is missing (``.ci/run`` installs both).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.live import PASSWORD, USERNAME, LiveServer

__all__ = ["PASSWORD", "USERNAME", "LiveServer", "screenshot_dir"]

CHROMIUM = os.environ.get("TRANSCRIBE_CHROMIUM", "/usr/bin/chromium")


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
