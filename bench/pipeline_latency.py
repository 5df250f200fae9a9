"""Latency and CPU of the streaming pipeline at real time, one configuration against another.

    python bench/pipeline_latency.py [--speed 1] [--clips jfk.wav,...] [--baseline key=value,...] [--verbose]

Replays the speech clips of ../shared/audio through ``OptimizedRealtimeSTT`` in this process (no
socket), once with the baseline configuration (partials and finals encoded over Whisper's full
30 s window, no speculative finals) and once with the product's defaults (PARTIAL_ENCODER_SECONDS,
FINAL_ENCODER_SECONDS, SPECULATE_AFTER), and prints one JSON line: final
latency p50/p95 after the last word, first-partial latency, inference seconds per audio second,
corpus WER, and their ratios baseline/ours.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import django  # noqa: E402

django.setup()

from _harness import word_error_counts  # noqa: E402

from tests.conftest import corpus_wer  # noqa: E402
from transcribe.engines import get_engine  # noqa: E402
from transcribe.streaming.replay import replay  # noqa: E402

AUDIO = Path(os.environ.get("TRANSCRIBE_TEST_AUDIO", ROOT.parent / "shared" / "audio"))
CONFIGS = {
    "baseline": {
        "partial_encoder_seconds": 0.0,
        "final_encoder_seconds": 0.0,
        "speculate_after": 0.0,
        "partial_share": 1.0,
    },
    "ours": {},
}


def load(name: str) -> np.ndarray:
    with wave.open(str(AUDIO / name)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768


async def run(
    config: dict[str, float], clips: list[str], refs: dict[str, str], speed: float
) -> dict[str, float | None]:
    finals, partials, pairs, busy, audio = [], [], [], 0.0, 0.0
    for name in clips:
        report = await replay(load(name), speed=speed, **config)
        finals += report.final_latencies
        partials += report.first_partial_latencies
        busy += report.inference_seconds
        audio += report.duration
        pairs.append((refs[name], report.text))

    def pct(values: list[float], q: float) -> float | None:
        return round(1000 * float(np.percentile(values, q)), 1) if values else None

    return {
        "final_p50_ms": pct(finals, 50),
        "final_p95_ms": pct(finals, 95),
        "first_partial_p50_ms": pct(partials, 50),
        "inference_s_per_audio_s": round(busy / audio, 3),
        "wer": round(corpus_wer([p for p in pairs if p[0]]), 4),
        "word_errors": word_error_counts(pairs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument(
        "--clips", default="jfk.wav,librispeech_1272-128104-0000.wav,librispeech_2412-153948-0000.wav"
    )
    parser.add_argument(
        "--baseline",
        metavar="KEY=VALUE,...",
        help="compare against the defaults with these overrides instead of the seed-like baseline, "
        "to measure one lever (e.g. partial_share=1 or final_encoder_seconds=0)",
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if args.baseline:
        pairs = (item.split("=", 1) for item in args.baseline.split(","))
        CONFIGS["baseline"] = {key.strip(): json.loads(value) for key, value in pairs}  # 5 → int
    refs = {k: v["text"] for k, v in json.loads((AUDIO / "refs.json").read_text()).items()}
    clips = args.clips.split(",")
    get_engine()  # load once, outside the timings
    started = time.perf_counter()
    results = {name: asyncio.run(run(config, clips, refs, args.speed)) for name, config in CONFIGS.items()}
    base, ours = results["baseline"], results["ours"]
    ratios = {k: round(base[k] / ours[k], 2) for k in base if isinstance(base[k], float) and ours[k]}
    if args.verbose:
        for name, row in results.items():
            print(f"{name:<9} " + "  ".join(f"{k}={v}" for k, v in row.items()), file=sys.stderr)
    print(
        json.dumps(
            {
                "bench": "pipeline_latency",
                "speed": args.speed,
                "clips": clips,
                **results,
                "ratio_baseline_over_ours": ratios,
                "wall_s": round(time.perf_counter() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
