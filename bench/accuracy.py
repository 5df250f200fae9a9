"""Word error rate of streaming against offline transcription, on every clip of ../shared/audio.

    python bench/accuracy.py [--speed 1] [--server] [--verbose] [--smoke]

Offline (the baseline) is ``manage.py transcribe_file PATH --format json``: the engine on the whole
file, beam 5, Whisper's temperature fallback. Streaming replays the same audio through the real
streaming pipeline (``transcribe.streaming.replay``, in this process) at ``--speed`` times real time
with the product's defaults; ``--server`` streams it through a real daphne instead (demo settings,
DJANGO_DEBUG=0, a temporary SQLite file) with the reference client. Both are scored with
tests/conftest.py's ``normalize``/``wer``: per clip, and overall as corpus WER (all words of all clips).
The noise-only clip has no reference; what counts there is the number of words each mode emits on it
(DESIGN §6: 0).

Prints one JSON line with the streaming-minus-offline difference in WER points (DESIGN §6: within 1);
``--verbose`` adds a per-clip table on stderr. ``--smoke`` runs jfk.wav and the noise clip only.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import _harness as h  # noqa: E402
import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402

from transcribe.engines import get_engine  # noqa: E402
from transcribe.streaming.replay import replay  # noqa: E402


def offline(name: str) -> str:
    out = io.StringIO()
    call_command("transcribe_file", str(h.AUDIO / name), output_format="json", stdout=out)
    return str(json.loads(out.getvalue())["text"])


async def streaming_in_process(name: str, speed: float) -> str:
    report = await replay(h.read_float(name), speed=speed)
    return report.text


async def streaming_via_server(names: list[str], speed: float) -> dict[str, str]:
    texts: dict[str, str] = {}
    with h.Site() as site:
        server = site.server("accuracy")
        await h.warm_up(server)
        for name in names:
            m = await h.stream(server, h.read_pcm(name), speed=speed, title=f"accuracy {name}")
            if m.errors or m.close_code not in (None, 1000):
                raise SystemExit(f"{name}: session failed ({m.errors or m.close_code})\n{server.log_tail()}")
            texts[name] = m.text
    return texts


def words(text: str) -> int:
    return len(h.normalize(text).split())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--speed", type=float, default=1.0, help="streaming speed; 0 = as fast as possible")
    parser.add_argument("--server", action="store_true", help="stream through a real daphne")
    parser.add_argument("--smoke", action="store_true", help="jfk.wav and the noise clip only")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    h.exit_on_sigterm()
    refs = h.refs()
    names = ["jfk.wav", h.NOISE_CLIP] if args.smoke else [*h.speech_clips(), h.NOISE_CLIP]
    started = time.perf_counter()
    get_engine()  # load once, outside the timings
    audio_s = sum(len(h.read_pcm(n)) / h.BYTES_PER_SECOND for n in names)
    with h.deadline(300 + 3 * audio_s / max(args.speed, 0.5), "accuracy"):
        offline_text = {n: offline(n) for n in names}
        if args.server:
            stream_text = asyncio.run(streaming_via_server(names, args.speed))
        else:
            stream_text = {n: asyncio.run(streaming_in_process(n, args.speed)) for n in names}
    clips: list[dict[str, Any]] = []
    for n in names:
        row: dict[str, Any] = {"clip": n, "ref_words": words(refs[n])}
        if refs[n].strip():
            row["offline_wer"] = round(h.wer(refs[n], offline_text[n]), 4)
            row["streaming_wer"] = round(h.wer(refs[n], stream_text[n]), 4)
            row["diff_points"] = round(100 * (row["streaming_wer"] - row["offline_wer"]), 2)
            row["offline_errors"] = h.word_errors(refs[n], offline_text[n])
            row["streaming_errors"] = h.word_errors(refs[n], stream_text[n])
        else:
            row["offline_words"] = words(offline_text[n])
            row["streaming_words"] = words(stream_text[n])
        row["offline_text"] = offline_text[n]
        row["streaming_text"] = stream_text[n]
        clips.append(row)
    speech = [n for n in names if refs[n].strip()]
    overall_offline = h.corpus_wer([(refs[n], offline_text[n]) for n in speech])
    overall_stream = h.corpus_wer([(refs[n], stream_text[n]) for n in speech])
    noise = next((r for r in clips if r["clip"] == h.NOISE_CLIP), {})
    if args.verbose:
        columns = [
            "clip",
            "ref_words",
            "offline_wer",
            "streaming_wer",
            "diff_points",
            "offline_words",
            "streaming_words",
        ]
        print(h.table(clips, columns), file=sys.stderr)
        for r in clips:
            if r.get("diff_points"):
                print(
                    f"{r['clip']}\n  offline:   {r['offline_text']}\n  streaming: {r['streaming_text']}"
                    f"\n  errors, offline {r['offline_errors']}, streaming {r['streaming_errors']}",
                    file=sys.stderr,
                )
    h.emit(
        {
            "bench": "accuracy",
            "mode": "server" if args.server else "in-process replay",
            "speed": args.speed,
            "offline_wer": round(overall_offline, 4),
            "streaming_wer": round(overall_stream, 4),
            "diff_points": round(100 * (overall_stream - overall_offline), 2),
            "noise_words_offline": noise.get("offline_words"),
            "noise_words_streaming": noise.get("streaming_words"),
            "clips": clips,
            "wall_s": round(time.perf_counter() - started, 1),
        }
    )


if __name__ == "__main__":
    main()
