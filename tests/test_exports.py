"""Tests of ``transcribe.exports``: text, SRT, WebVTT and JSON renderings of (start, end, text) cues.

SRT and WebVTT output is parsed back twice: by a small strict parser here (always), and by the
``srt`` and ``webvtt-py`` packages where they are installed, to prove other tools read our files.
"""

from __future__ import annotations

import json
import re

import pytest

from transcribe.exports import FORMATS, Cue, render, to_json, to_srt, to_text, to_vtt

CUES = [
    Cue(0.0, 1.5, " And so, my fellow Americans,"),
    Cue(1.5, 2.0, "   "),  # empty: skipped by text/srt/vtt
    Cue(2.25, 4.0049, "ask not what your country can do for you"),
    Cue(3725.5, 3726.001, "an hour later"),  # 01:02:05.500
    Cue(2 * 3600 + 59 * 60 + 59.9996, 3 * 3600 + 0.0004, "past two hours, with a round-up"),
    Cue(36 * 3600 + 0.123, 36 * 3600 + 1.2344, "a day and a half in"),
]
SPOKEN = [c for c in CUES if c.text.strip()]

TIME = r"(\d{2,}):([0-5]\d):([0-5]\d)[,.](\d{3})"


def seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def parse_blocks(body: str, sep: str, numbered: bool) -> list[Cue]:
    """A strict SRT/VTT cue parser: blocks split by one blank line, exact timestamp syntax."""
    cues = []
    blocks = body.strip("\n").split("\n\n") if body.strip() else []
    for i, block in enumerate(blocks, start=1):
        lines = block.split("\n")
        if numbered:
            assert lines.pop(0) == str(i)
        m = re.fullmatch(
            TIME.replace("[,.]", re.escape(sep)) + " --> " + TIME.replace("[,.]", re.escape(sep)), lines[0]
        )
        assert m, f"bad timing line {lines[0]!r}"
        g = m.groups()
        assert lines[1:] and all(line.strip() for line in lines[1:])
        cues.append(Cue(seconds(*g[:4]), seconds(*g[4:]), "\n".join(lines[1:])))
    return cues


def parse_srt(text: str) -> list[Cue]:
    return parse_blocks(text, ",", numbered=True)


def parse_vtt(text: str) -> list[Cue]:
    assert text.startswith("WEBVTT\n\n")
    return parse_blocks(text[len("WEBVTT\n\n") :], ".", numbered=False)


def assert_round_trip(parsed: list[Cue], original: list[Cue]) -> None:
    assert len(parsed) == len(original)
    for p, o in zip(parsed, original, strict=True):
        assert p.text == o.text.strip()
        assert p.start == pytest.approx(o.start, abs=0.0005 + 1e-9)  # millisecond precision
        assert p.end == pytest.approx(o.end, abs=0.0005 + 1e-9)
        assert p.start == round(p.start, 3) and p.end == round(p.end, 3)


# -- text and JSON ----------------------------------------------------------------------------


def test_text():
    assert to_text(CUES) == "\n".join(c.text.strip() for c in SPOKEN) + "\n"
    assert render(CUES, "text") == to_text(CUES)
    assert to_text([]) == "\n"


def test_json():
    data = json.loads(to_json(CUES, rtf=0.05, latency={"final_p50_ms": 800}))
    assert data["text"] == " ".join(c.text.strip() for c in SPOKEN)
    assert data["rtf"] == 0.05 and data["latency"] == {"final_p50_ms": 800}
    assert [s["text"] for s in data["segments"]] == [c.text.strip() for c in CUES]
    assert data["segments"][2] == {
        "start": 2.25,
        "end": 4.005,
        "text": "ask not what your country can do for you",
    }
    assert data["segments"][3]["start"] == 3725.5
    assert json.loads(render(CUES, "json")) == json.loads(to_json(CUES))


def test_json_of_nothing():
    assert json.loads(to_json([])) == {"text": "", "segments": []}


def test_render_formats():
    assert FORMATS == ("text", "srt", "vtt", "json")
    for fmt in FORMATS:
        assert render(CUES, fmt)
    with pytest.raises(KeyError):
        render(CUES, "docx")


# -- SRT --------------------------------------------------------------------------------------


def test_srt_layout():
    out = to_srt(CUES[:4])
    assert out == (
        "1\n00:00:00,000 --> 00:00:01,500\nAnd so, my fellow Americans,\n"
        "\n"
        "2\n00:00:02,250 --> 00:00:04,005\nask not what your country can do for you\n"
        "\n"
        "3\n01:02:05,500 --> 01:02:06,001\nan hour later\n"
    )


def test_srt_round_trip():
    out = render(CUES, "srt")
    assert_round_trip(parse_srt(out), SPOKEN)
    assert "02:59:59,999 --> 02:59:59,999" not in out
    assert "03:00:00,000 --> 03:00:00,000" in out  # 2:59:59.9996 rounds up into the next hour
    assert "36:00:00,123 --> 36:00:01,234" in out  # hours past 24 keep counting


def test_srt_with_the_srt_package():
    srt = pytest.importorskip("srt")
    parsed = [Cue(s.start.total_seconds(), s.end.total_seconds(), s.content) for s in srt.parse(to_srt(CUES))]
    assert_round_trip(parsed, SPOKEN)
    assert [s.index for s in srt.parse(to_srt(CUES))] == list(range(1, len(SPOKEN) + 1))


def test_srt_clamps_negative_times():
    assert to_srt([Cue(-0.3, 0.5, "early")]).splitlines()[1] == "00:00:00,000 --> 00:00:00,500"


def test_srt_of_nothing():
    assert to_srt([]) == "" and parse_srt(to_srt([Cue(0, 1, " ")])) == []


# -- WebVTT -----------------------------------------------------------------------------------


def test_vtt_layout():
    out = to_vtt(CUES[:3])
    assert out == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:01.500\nAnd so, my fellow Americans,\n"
        "\n"
        "00:00:02.250 --> 00:00:04.005\nask not what your country can do for you\n"
    )


def test_vtt_round_trip():
    assert_round_trip(parse_vtt(render(CUES, "vtt")), SPOKEN)


def test_vtt_with_webvtt_py():
    webvtt = pytest.importorskip("webvtt")
    captions = webvtt.from_string(to_vtt(CUES)).captions
    parsed = [
        Cue(
            seconds(*re.fullmatch(TIME, c.start).groups()),
            seconds(*re.fullmatch(TIME, c.end).groups()),
            c.text,
        )
        for c in captions
    ]
    assert_round_trip(parsed, SPOKEN)


def test_vtt_of_nothing():
    assert to_vtt([]) == "WEBVTT\n\n"
    assert parse_vtt(to_vtt([])) == []


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_cue_text_with_a_blank_line_stays_one_cue(fmt):
    """Regression: cue text was written as is, so a blank line in it (an edited_text typed in
    the admin, say) ended the cue early; cue payloads must not contain blank lines, nor '-->' in
    WebVTT.
    """
    cues = [Cue(0.0, 1.0, "first paragraph\n\nsecond paragraph"), Cue(1.0, 2.0, "next")]
    parsed = (parse_srt if fmt == "srt" else parse_vtt)(render(cues, fmt))
    assert [c.start for c in parsed] == [0.0, 1.0]
    assert "first paragraph" in parsed[0].text and "second paragraph" in parsed[0].text
    arrow = render([Cue(0.0, 1.0, "A --> B")], fmt)
    assert arrow.count("-->") == 1 and len((parse_srt if fmt == "srt" else parse_vtt)(arrow)) == 1
