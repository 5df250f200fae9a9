"""Recording in a real browser: Debian's Chromium, the page's AudioWorklet (or MediaRecorder), a real
daphne server with the real tiny.en model, and a WAV file of real speech as the microphone."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

import pytest

from tests.conftest import wer

from .conftest import PASSWORD, USERNAME, LiveServer, screenshot_dir

pytestmark = pytest.mark.slow
PlaywrightTimeout = pytest.importorskip(
    "playwright.sync_api", reason='playwright is missing: pip install -e ".[dev]"'
).TimeoutError

# The page now hands the server the clip nearly as it is (a 16 kHz context, no voice processing):
# measured 0.0 on its three clips in both runs printed. With echo cancellation, gain control and a
# box-filter resampler it was 0.0 to 0.32 ("and so am i fell in american as not"), failing CI.
# Streaming at real time still cuts utterances where a CPU's timing puts them ("am I" for "my" in
# jfk.wav is 0.09); lost or repeated text is what the exact checks against the database catch.
MAX_WER = 0.15


def log_in(context: Any, server: LiveServer) -> Any:
    page = context.new_page()
    page.goto(f"{server.url}/accounts/login/?next=/transcribe/")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/transcribe/")
    return page


def record(page: Any, seconds_of_speech: float, during: Any = None) -> list[dict[str, Any]]:
    """Press start, let the clip play out, press stop; the finals the page shows, in order."""
    page.click("#record-button")
    page.wait_for_selector("#recorder[data-state=recording]", timeout=30_000)
    page.wait_for_selector("#finals .final", timeout=30_000)  # text while still speaking
    if during is not None:
        during(page)
    page.wait_for_timeout(int(seconds_of_speech * 1000) + 1500)
    page.click("#record-button")
    page.wait_for_selector("#recorder[data-state=finished]", timeout=60_000)
    return page.eval_on_selector_all(
        "#finals .final",
        "spans => spans.map(s => ({seq: Number(s.dataset.seq), text: s.textContent.trim()}))",
    )


def stored_segments(server: LiveServer, session: str) -> list[tuple[int, str]]:
    with sqlite3.connect(server.env["DATABASE_URL"].removeprefix("sqlite:///")) as db:
        return db.execute(
            "SELECT seq, text FROM transcribe_transcriptsegment WHERE session_id = ? ORDER BY seq",
            (session.replace("-", ""),),
        ).fetchall()


def keep_screenshot(page: Any, name: str) -> None:
    folder = screenshot_dir()
    if folder is not None:
        page.screenshot(path=str(folder / name), full_page=True)


def test_record_in_the_browser_and_find_the_session(
    site_server: LiveServer, open_browser: Any, refs: dict[str, str]
) -> None:
    page = log_in(open_browser("jfk.wav"), site_server)
    partials: list[str] = []
    page.expose_function("notePartial", lambda text: partials.append(text))

    def watch(page: Any) -> None:
        page.evaluate(
            "window.transcribeClient.addEventListener('partial', e => window.notePartial(e.detail.text))"
        )
        # Catch a moment with words that may still change (grey) for the picture, if one comes.
        with contextlib.suppress(PlaywrightTimeout):
            page.wait_for_function(
                "document.getElementById('partial-unstable').textContent.length > 12", timeout=8000
            )
        keep_screenshot(page, "record-live.png")

    finals = record(page, 11.0, during=watch)
    keep_screenshot(page, "record-finished.png")
    assert page.get_attribute("#recorder", "data-format") == "pcm_s16le"
    assert partials, "no partial text was shown while speaking"
    assert [f["seq"] for f in finals] == list(range(1, len(finals) + 1))
    text = " ".join(f["text"] for f in finals)
    assert wer(refs["jfk.wav"], text) <= MAX_WER, text
    session = page.get_attribute("#recorder", "data-session")
    assert [t for _, t in stored_segments(site_server, session)] == [f["text"] for f in finals]

    # The saved session is in the user's list, with the words, a player and downloads.
    page.click("#session-link")
    page.wait_for_selector("audio")
    assert wer(refs["jfk.wav"], " ".join(page.locator(".seg-text").all_inner_texts())) <= MAX_WER
    keep_screenshot(page, "session-detail.png")
    page.goto(f"{site_server.url}/transcribe/sessions/")
    assert page.locator(f"a[href*='{session}']").count() >= 1
    keep_screenshot(page, "session-list.png")

    # A reviewer finds it in the admin by a word it contains, listens, and corrects a segment.
    page.goto(f"{site_server.url}/admin/transcribe/transcriptsession/?q=country")
    assert page.locator("#result_list tbody tr").count() == 1
    keep_screenshot(page, "admin-list.png")
    page.click("#result_list tbody tr th a")
    page.wait_for_selector("audio")
    assert page.evaluate("document.querySelector('audio').readyState") >= 0
    keep_screenshot(page, "admin-session.png")
    page.fill("textarea[name$='-edited_text']", "And so, my fellow Americans:")
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist .success")
    export = page.request.get(f"{site_server.url}/transcribe/sessions/{session}/export.txt").text()
    assert export.startswith("And so, my fellow Americans:")


def test_the_page_resumes_after_the_server_restarts(
    site_server: LiveServer, open_browser: Any, refs: dict[str, str]
) -> None:
    clip = "librispeech_2412-153948-0000.wav"
    page = log_in(open_browser(clip), site_server)
    states: list[str] = []
    page.expose_function("noteState", lambda state: states.append(state))

    def crash(page: Any) -> None:
        page.evaluate(
            "window.transcribeClient.addEventListener('state', e => window.noteState(e.detail.state))"
        )
        site_server.restart()  # a hard kill: the server forgets everything not yet stored
        page.wait_for_selector("#recorder[data-state=recording]", timeout=30_000)
        keep_screenshot(page, "record-resumed.png")

    finals = record(page, 11.7, during=crash)
    assert "reconnecting" in states and page.locator("#record-notice").is_visible()
    seqs = [f["seq"] for f in finals]
    assert seqs == list(range(1, len(seqs) + 1)), f"a final was lost or repeated: {seqs}"
    text = " ".join(f["text"] for f in finals)
    assert wer(refs[clip], text) <= MAX_WER, text
    session = page.get_attribute("#recorder", "data-session")
    assert [t for _, t in stored_segments(site_server, session)] == [f["text"] for f in finals]


def test_mediarecorder_fallback_streams_webm(
    site_server: LiveServer, open_browser: Any, refs: dict[str, str]
) -> None:
    clip = "librispeech_1272-128104-0000.wav"
    page = log_in(open_browser(clip), site_server)
    page.goto(f"{site_server.url}/transcribe/?capture=mediarecorder")
    finals = record(page, 5.9)
    assert page.get_attribute("#recorder", "data-format") == "webm"
    text = " ".join(f["text"] for f in finals)
    assert wer(refs[clip], text) <= MAX_WER, text


def test_denied_microphone_says_so(site_server: LiveServer, open_browser: Any) -> None:
    context = open_browser("jfk.wav")
    page = log_in(context, site_server)
    page.evaluate(
        "() => { navigator.mediaDevices.getUserMedia ="
        " () => Promise.reject(new DOMException('Permission denied', 'NotAllowedError')); }"
    )
    page.click("#record-button")
    page.wait_for_selector("#recorder[data-state=failed]")
    assert "microphone access was denied" in page.inner_text("#record-error").lower()
    assert page.inner_text("#record-button") == "Start recording"  # the user can try again
