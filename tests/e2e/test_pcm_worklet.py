"""The page's AudioWorklet in Chromium, fed a known signal through an OfflineAudioContext: at 16 kHz
it passes samples through untouched, at device rates it resamples to 16 kHz keeping speech whole and
removing what would fold back into it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .conftest import CHROMIUM

WORKLET = Path(__file__).resolve().parents[2] / "transcribe/static/transcribe/pcm-worklet.js"
ORIGIN = "http://localhost:9"  # never reached (the route below answers); a secure context, as worklets need
SECONDS = 2.0
KEPT_HZ = (440.0, 3000.0, 7000.0)  # speech band: must come out at the same level
FOLDING_HZ = 11000.0  # above 8 kHz: sampled at 16 kHz it would fold back onto 5 kHz
# Output samples short of the input's length or past it: rendering rounds up to whole 128-frame
# quanta, and the filter holds back its half-width (2-5 ms).
HELD_BACK = 128

RENDER = """
async ([source, rate, seconds, tones]) => {
  const context = new OfflineAudioContext(1, Math.round(rate * seconds), rate);
  await context.audioWorklet.addModule(URL.createObjectURL(new Blob([source], { type: "text/javascript" })));
  const buffer = context.createBuffer(1, context.length, rate);
  const samples = buffer.getChannelData(0);
  for (let i = 0; i < samples.length; i++) {
    for (const [hz, amplitude] of tones) samples[i] += amplitude * Math.sin(2 * Math.PI * hz * i / rate);
  }
  const player = context.createBufferSource();
  player.buffer = buffer;
  const node = new AudioWorkletNode(context, "transcribe-pcm");
  const frames = [];
  node.port.onmessage = (event) => frames.push(Array.from(event.data.pcm));
  player.connect(node).connect(context.destination);
  player.start();
  await context.startRendering();
  node.port.postMessage("flush");
  await new Promise((resolve) => setTimeout(resolve, 200));
  return frames.flat();
}
"""


@pytest.fixture(scope="module")
def worklet_page(browser_available: None) -> Any:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
        )
        page = browser.new_page()
        page.route(f"{ORIGIN}/", lambda route: route.fulfill(body="<html></html>", content_type="text/html"))
        page.goto(f"{ORIGIN}/")
        yield page
        browser.close()


def render(page: Any, rate: int, tones: list[tuple[float, float]]) -> np.ndarray:
    samples = page.evaluate(RENDER, [WORKLET.read_text(), rate, SECONDS, tones])
    return np.asarray(samples, dtype=np.float64) / 32768.0


def level_at(signal: np.ndarray, hz: float) -> float:
    """Amplitude of the tone at ``hz`` (Hann-windowed spectrum, steady middle second only)."""
    middle = signal[len(signal) // 4 : len(signal) // 4 + 16000]
    window = np.hanning(len(middle))
    spectrum = np.abs(np.fft.rfft(middle * window)) * 2 / window.sum()
    bin_ = round(hz * len(middle) / 16000)
    return float(spectrum[bin_ - 2 : bin_ + 3].max())


def test_at_16_khz_samples_pass_through_unchanged(worklet_page: Any) -> None:
    out = render(worklet_page, 16000, [(440.0, 0.5)])
    i = np.arange(len(out))
    expected = np.round(0.5 * np.sin(2 * np.pi * 440.0 * i / 16000) * 32767) / 32768
    assert len(out) == int(16000 * SECONDS)
    assert np.max(np.abs(out - expected)) <= 2 / 32768


@pytest.mark.parametrize("rate", [44100, 48000])
def test_device_rates_are_resampled_keeping_speech_and_removing_what_would_fold_back(
    worklet_page: Any, rate: int
) -> None:
    out = render(worklet_page, rate, [(hz, 0.2) for hz in (*KEPT_HZ, FOLDING_HZ)])
    assert len(out) == pytest.approx(16000 * SECONDS, abs=HELD_BACK)
    for hz in KEPT_HZ:
        assert level_at(out, hz) == pytest.approx(0.2, rel=0.03), hz  # within 0.25 dB
    folded = abs(16000 - FOLDING_HZ)
    assert level_at(out, folded) < 0.2 * 10 ** (-60 / 20)  # at least 60 dB down


def test_a_rate_below_16_khz_is_upsampled_keeping_its_band(worklet_page: Any) -> None:
    # A context can run at 8 kHz (a Bluetooth headset in call mode): nothing above 4 kHz to keep.
    out = render(worklet_page, 8000, [(440.0, 0.2), (3000.0, 0.2)])
    assert len(out) == pytest.approx(16000 * SECONDS, abs=HELD_BACK)
    for hz in (440.0, 3000.0):
        assert level_at(out, hz) == pytest.approx(0.2, rel=0.03), hz
    assert level_at(out, 8000 - 3000.0) < 0.2 * 10 ** (-60 / 20)  # no image of the 3 kHz tone
