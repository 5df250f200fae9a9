"""``transcribe_file``: offline and streaming transcription of real speech, in every output format."""

from __future__ import annotations

import json
import re
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from tests.conftest import wer

CLIP = "librispeech_61-70968-0002.wav"


def run(*args: str) -> str:
    out = StringIO()
    call_command("transcribe_file", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_offline_text(audio_dir: Path, refs: dict[str, str]) -> None:
    assert wer(refs[CLIP], run(str(audio_dir / CLIP))) == 0.0  # measured 0.0


def test_offline_json_contract(audio_dir: Path, refs: dict[str, str]) -> None:
    payload = json.loads(run(str(audio_dir / "jfk.wav"), "--format", "json"))
    assert set(payload) >= {"text", "segments", "latency", "rtf"}
    assert wer(refs["jfk.wav"], payload["text"]) <= 0.05
    assert payload["rtf"] > 0 and payload["segments"][0]["start"] >= 0
    assert all(s["start"] < s["end"] <= 11.1 for s in payload["segments"])


@pytest.mark.parametrize(
    "fmt, pattern",
    [("srt", r"^1\n00:00:0\d,\d{3} --> 00:00:\d\d,\d{3}\n"), ("vtt", r"^WEBVTT\n\n00:00:0\d\.\d{3} --> ")],
)
def test_subtitle_formats(audio_dir: Path, fmt: str, pattern: str) -> None:
    assert re.match(pattern, run(str(audio_dir / CLIP), "--format", fmt))


def test_stream_reports_latency(audio_dir: Path, refs: dict[str, str]) -> None:
    payload = json.loads(run(str(audio_dir / CLIP), "--stream", "--speed", "4", "--format", "json"))
    assert wer(refs[CLIP], payload["text"]) == 0.0
    latency = payload["latency"]
    assert latency["final_p50_ms"] is not None and latency["final_p50_ms"] > 0
    assert len(payload["final_latencies_ms"]) == len(payload["segments"]) >= 1


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="could not read"):
        run(str(tmp_path / "nope.wav"))


def test_unknown_model_names_the_setting(audio_dir: Path) -> None:
    with pytest.raises(CommandError, match=r"TRANSCRIBE\['MODEL'\]"):
        run(str(audio_dir / CLIP), "--model", "no-such-model")
