"""Resident memory over many inference calls: glibc's and oneDNN's defaults against the server's.

    python bench/memory.py [--rounds 15] [--calls 40] [--verbose] [--smoke]

A long session makes thousands of engine calls, each over a window of a different length (partials,
finals, speculative finals, beam 1 or 5, 10 / 15 / 30 s encoder windows). This replays that mix, as
fast as the machine goes, on the inference executor (``TRANSCRIBE["WORKERS"]`` threads, two calls in
flight, the product's ``then_trim`` around each), and reads the process's RSS after every round of
``--calls`` calls, when no call is running: memory that stays resident then is kept, not in use.

Each configuration runs in a fresh interpreter, one after the other:

- baseline: glibc's own allocator settings (``MALLOC_ARENA_MAX`` set to glibc's default, 8 per core,
  which also makes ``transcribe.heap.tune_allocator`` stand aside), no ``malloc_trim`` and oneDNN's
  primitive cache at its default size;
- uncapped: the shipped settings but oneDNN's primitive cache at its own default size (1024,
  ``ONEDNN_PRIMITIVE_CACHE_CAPACITY``, which makes ``transcribe.heap.cap_primitive_cache`` stand aside);
- ours: the shipped settings (``tune_allocator`` and ``cap_primitive_cache`` at app start, trims
  after jobs).

Prints one JSON line: per configuration the RSS after the first and the last round, the growth per
100 calls after the first round (least squares), and the seconds per call (the settings must not
cost inference time); ratios are baseline / ours and uncapped / ours.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402

from transcribe.heap import PRIMITIVE_CACHE_ENVIRONMENT  # noqa: E402

CONFIGS = ("baseline", "uncapped", "ours")
ONEDNN_DEFAULT_CAPACITY = "1024"


def child(config: str, rounds: int, calls: int) -> dict[str, Any]:
    """Runs in its own interpreter (see main)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()  # the app's ready() tunes the allocator unless MALLOC_* says otherwise

    from transcribe import heap
    from transcribe.engines import DecodeOptions, get_engine
    from transcribe.streaming.executor import get_executor

    if config == "baseline":
        heap.TRIM_INTERVAL = float("inf")
    audio = np.concatenate([h.read_float(c) for c in h.speech_clips()])
    engine, executor = get_engine(), get_executor()
    rng = random.Random(0)  # the same calls, in the same order, for every configuration

    def job() -> Future[Any]:
        seconds = rng.uniform(0.5, 14.0)
        start = int(rng.uniform(0, len(audio) / h.SAMPLE_RATE - seconds) * h.SAMPLE_RATE)
        options = DecodeOptions(
            beam_size=rng.choice((1, 5)),
            word_timestamps=True,
            encoder_seconds=rng.choice((10.0, 15.0, 0.0)),
        )
        window = audio[start : start + int(seconds * h.SAMPLE_RATE)]
        return executor.submit(heap.then_trim, engine.transcribe_numpy, window, "en", options)

    process = h.ProcessTree(os.getpid())
    samples, busy = [], 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        in_flight: list[Future[Any]] = []
        for _ in range(calls):
            if len(in_flight) == 2:
                in_flight.pop(0).result()
            in_flight.append(job())
        for future in in_flight:
            future.result()
        busy += time.perf_counter() - started
        samples.append(round(process.rss_mib(), 1))
    xs = [calls * (i + 1) for i in range(1, rounds)]
    growth = h.slope(xs, samples[1:])
    return {
        "rss_first_mib": samples[0],
        "rss_last_mib": samples[-1],
        "rss_max_mib": max(samples),
        "growth_mib_per_100_calls": round(100 * growth, 2) if growth is not None else None,
        "seconds_per_call": round(busy / (rounds * calls), 3),
        "rss_mib": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=40, help="engine calls per round")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="3 rounds of 6 calls: that it runs")
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rounds, args.calls)))
        return

    if args.smoke:
        args.rounds, args.calls = 3, 6
    results: dict[str, Any] = {}
    for config in CONFIGS:
        env = {**os.environ}
        malloc = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
        for key in (*malloc, *PRIMITIVE_CACHE_ENVIRONMENT):
            env.pop(key, None)
        if config == "baseline":
            env["MALLOC_ARENA_MAX"] = str(8 * (os.cpu_count() or 1))  # glibc's default on 64-bit
        if config in ("baseline", "uncapped"):
            env[PRIMITIVE_CACHE_ENVIRONMENT[0]] = ONEDNN_DEFAULT_CAPACITY
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                config,
                "--rounds",
                str(args.rounds),
                "--calls",
                str(args.calls),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise SystemExit(f"{config} failed:\n{out.stderr[-3000:]}")
        results[config] = json.loads(out.stdout.strip().splitlines()[-1])

    base, uncapped, ours = results["baseline"], results["uncapped"], results["ours"]

    def ratios(other: dict[str, Any]) -> dict[str, float | None]:
        return {
            "rss_last": h.ratio(other["rss_last_mib"], ours["rss_last_mib"]),
            "growth": h.ratio(other["growth_mib_per_100_calls"], ours["growth_mib_per_100_calls"]),
            "seconds_per_call": h.ratio(other["seconds_per_call"], ours["seconds_per_call"]),
        }

    report = {
        "bench": "memory",
        "calls": args.rounds * args.calls,
        **{config: {k: v for k, v in r.items() if k != "rss_mib"} for config, r in results.items()},
        "ratios": ratios(base),
        "ratios_uncapped": ratios(uncapped),
    }
    if args.verbose:
        rows = [{"config": config, **r} for config, r in results.items()]
        columns = [
            "config",
            "rss_first_mib",
            "rss_last_mib",
            "rss_max_mib",
            "growth_mib_per_100_calls",
            "seconds_per_call",
        ]
        print(h.table(rows, columns), file=sys.stderr)
        for config, r in results.items():
            print(f"{config} RSS by round: {r['rss_mib']}", file=sys.stderr)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
