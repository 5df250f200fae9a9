"""End-to-end latency, lag, CPU and memory through the real server, at real time.

    python bench/latency.py [--clips a.wav,b.wav] [--chunk-ms 250] [--format pcm_s16le|webm] [--baseline KEY=VALUE,...] [--verbose] [--smoke]
    python bench/latency.py --soak 60 [--format pcm_s16le|webm] [--verbose]

Starts daphne on a free localhost port with the demo project's settings (DJANGO_DEBUG=0, a temporary
SQLite file, the bundled tiny.en) and streams each speech clip of ../shared/audio through its own
session with the reference client (``transcribe.client.stream_audio``): pcm_s16le frames of
``--chunk-ms`` (or WebM/Opus cut into pieces of that much audio, ``--format webm``, as a browser's
MediaRecorder sends it) paced at real time, half a second of the recorded noise clip before the speech and 1.5 s
after it, as an open microphone would send. Per utterance it measures

- final latency: when the final arrived minus when the frame holding its ``end`` was sent;
- first-partial latency: the first partial after ``speech_started`` minus when the frame holding
  ``speech_started.at`` was sent;
- lag: ``status.lag_ms`` over the session;

and over the run, the server's CPU seconds per audio second (utime+stime of daphne and its children,
such as the recorder's ffmpeg, from /proc) and its RSS (sampled every second). The baseline runs first
in the same process, on a second daphne with the seed-like streaming settings of
bench/pipeline_latency.py (partials and finals over Whisper's full 30 s window, no speculative finals); ratios
are baseline / ours.

``--soak MINUTES`` streams one session of the clips looped with 3 s of noise between them for that
long (ours only), samples lag and server RSS every 10 s, and reports their least-squares slopes (lag
in ms per minute, RSS in MiB per hour, both over the samples after the first minute): a bounded
pipeline keeps both flat. ``--smoke`` streams one short clip only.

Prints one JSON line; ``--verbose`` adds a table on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402

from transcribe.client import AudioFormat, encode_webm  # noqa: E402

TARGETS = {"final_p50_ms": 1000, "final_p95_ms": 2000, "first_partial_p50_ms": 600, "cpu_s_per_audio_s": 0.5}


def summarize(
    sessions: list[h.SessionMetrics], audio_s: float, cpu_s: float, sampler: h.Sampler
) -> dict[str, Any]:
    finals = [x for m in sessions for x in m.finals]
    partials = [x for m in sessions for x in m.first_partials]
    lags = [lag for m in sessions for _, lag in m.lag]
    return {
        "utterances": sum(m.utterances for m in sessions),
        "finals": len(finals),
        "final_p50_ms": h.pct_ms(finals, 50),
        "final_p95_ms": h.pct_ms(finals, 95),
        "final_max_ms": h.pct_ms(finals, 100),
        "first_partial_p50_ms": h.pct_ms(partials, 50),
        "first_partial_p95_ms": h.pct_ms(partials, 95),
        "lag_p50_ms": h.pct(lags, 50, 0),
        "lag_p95_ms": h.pct(lags, 95, 0),
        "lag_max_ms": h.pct(lags, 100, 0),
        "end_lag_max_ms": max((m.end_lag_ms or 0.0 for m in sessions), default=None),
        "cpu_s_per_audio_s": round(cpu_s / audio_s, 3) if audio_s else None,
        # of which the children (the recorder's ffmpeg encoding Opus for STORE_AUDIO)
        "children_cpu_s_per_audio_s": round(sampler.delta("children_cpu_s") / audio_s, 3)
        if audio_s
        else None,
        "rss_max_mib": sampler.max("rss_mib"),
        "children_rss_max_mib": sampler.max("children_rss_mib"),
        "children_pss_max_mib": sampler.max("children_pss_mib"),
        "audio_s": round(audio_s, 1),
        "other_load_cores": sampler.other_load,
        "errors": sorted({e for m in sessions for e in m.errors}),
        "close_codes": sorted({m.close_code for m in sessions if m.close_code is not None}),
        "timed_out": sum(m.timed_out for m in sessions),
    }


async def run_config(
    site: h.Site, name: str, overrides: dict[str, Any], clips: list[str], chunk_ms: float, fmt: AudioFormat
) -> dict[str, Any]:
    server = site.server(name, overrides)
    try:
        await h.warm_up(server)
        await server.wait_idle(timeout=30)
        tree = server.tree
        sessions, pairs = [], []
        texts = h.refs()
        with h.Sampler(tree, 1.0) as sampler:
            cpu0 = tree.cpu_seconds()
            for clip in clips:
                audio = h.program([clip])
                m = await h.stream(server, audio.pcm, chunk_ms=chunk_ms, title=f"latency {clip}", fmt=fmt)
                sessions.append(m)
                pairs.append((texts[clip], m.text))
            await server.wait_idle(timeout=60)  # work still running for the last session counts
            cpu_s = tree.cpu_seconds() - cpu0
        row = summarize(sessions, sum(m.audio_s for m in sessions), cpu_s, sampler)
        row["wer"] = round(h.corpus_wer(pairs), 4)
        row["word_errors"] = h.word_error_counts(pairs)
        row["per_clip"] = {
            clip: {
                "final_ms": [round(1000 * x) for x in m.finals],
                "first_partial_ms": [round(1000 * x) for x in m.first_partials],
                "lag_max_ms": max((lag for _, lag in m.lag), default=None),
                "text": m.text,
            }
            for clip, m in zip(clips, sessions, strict=True)
        }
        row["lost_finals"] = h.lost_finals(site, sessions)
        row["server_log_problems"] = server.log_problems()[-5:]
        return row
    finally:
        server.stop()


async def run_soak(
    site: h.Site, minutes: float, chunk_ms: float, clips: list[str], fmt: AudioFormat
) -> dict[str, Any]:
    server = site.server("soak", {})
    try:
        await h.warm_up(server)
        await server.wait_idle(timeout=30)
        audio = h.program(clips, gap=3.0, minutes=minutes)
        webm = await encode_webm(audio.pcm) if fmt == "webm" else None  # before the clock starts
        tree = server.tree
        latest: dict[str, Any] = {"lag_ms": 0.0}

        def on_event(event: dict[str, Any]) -> None:
            if event.get("type") == "status":
                latest["lag_ms"] = float(event["lag_ms"])

        with h.Sampler(tree, 10.0, extra=lambda: dict(latest)) as sampler:
            cpu0 = tree.cpu_seconds()
            m = await h.stream(
                server,
                audio.pcm,
                chunk_ms=chunk_ms,
                title="soak",
                on_event=on_event,
                stop_timeout=120,
                fmt=fmt,
                webm=webm,
            )
            await server.wait_idle(timeout=60)
            cpu_s = tree.cpu_seconds() - cpu0
        samples = sampler.samples[:-1] or sampler.samples  # the last one is after the stream ended
        settled = [s for s in samples if s["t"] >= 60] or samples
        minutes_t = [s["t"] / 60 for s in settled]
        lag_slope = h.slope(minutes_t, [s["lag_ms"] for s in settled])
        # status lag from the session itself, every second of audio, is the denser series
        status_slope = h.slope([t / 60 for t, _ in m.lag if t >= 60], [lag for t, lag in m.lag if t >= 60])
        rss_slope = h.slope([s["t"] / 3600 for s in settled], [s["rss_mib"] for s in settled])
        half = len(m.finals) // 2
        early, late = m.finals[:half], m.finals[half:]
        row = summarize([m], audio.duration, cpu_s, sampler)
        row.update(
            {
                "minutes": round(audio.duration / 60, 1),
                "samples": len(samples),
                "lag_slope_ms_per_min": None if lag_slope is None else round(lag_slope, 2),
                "status_lag_slope_ms_per_min": None if status_slope is None else round(status_slope, 2),
                "rss_slope_mib_per_hour": None if rss_slope is None else round(rss_slope, 2),
                "rss_first_mib": round(settled[0]["rss_mib"], 1),
                "rss_last_mib": round(settled[-1]["rss_mib"], 1),
                "final_p95_first_half_ms": h.pct_ms(early, 95),
                "final_p95_second_half_ms": h.pct_ms(late, 95),
                "ratio_final_p95_second_over_first_half": h.ratio(h.pct_ms(late, 95), h.pct_ms(early, 95)),
                "wer": round(h.wer(audio.reference, m.text), 4),
                "lost_finals": h.lost_finals(site, [m]),
                "server_log_problems": server.log_problems()[-5:],
                "series": [
                    {"t_s": round(s["t"]), "lag_ms": s["lag_ms"], "rss_mib": round(s["rss_mib"], 1)}
                    for s in samples
                ],
            }
        )
        return row
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", help="comma-separated clip names (default: every speech clip)")
    parser.add_argument("--chunk-ms", type=float, default=250.0, help="audio per frame (100-250 ms)")
    h.add_format_argument(parser)
    parser.add_argument("--soak", type=float, metavar="MINUTES", help="one long session instead (ours only)")
    parser.add_argument("--smoke", action="store_true", help="one short clip only, a quick check")
    parser.add_argument(
        "--baseline",
        metavar="KEY=VALUE,...",
        help="TRANSCRIBE overrides for the baseline instead of the seed-like ones, to measure one lever "
        "against the shipped defaults (e.g. BLAS_THREADS=0)",
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    h.exit_on_sigterm()
    baseline = h.parse_overrides(args.baseline) if args.baseline else h.BASELINE_OVERRIDES
    clips = args.clips.split(",") if args.clips else h.speech_clips()
    if args.smoke:
        clips = [h.speech_clips()[0]]
    started = time.perf_counter()
    if args.soak:
        # The stream itself, plus start-up and the final drain.
        with h.deadline(args.soak * 60 * 1.2 + 300, "latency --soak"), h.Site() as site:
            soak = asyncio.run(run_soak(site, args.soak, args.chunk_ms, clips, args.format))
        series = soak.pop("series")
        if args.verbose:
            print(h.table(series, ["t_s", "lag_ms", "rss_mib"]), file=sys.stderr)
            for key, value in soak.items():
                print(f"{key:<40} {value}", file=sys.stderr)
        h.emit(
            {
                "bench": "latency_soak",
                "chunk_ms": args.chunk_ms,
                "format": args.format,
                "clips": clips,
                **soak,
                "series": series,
                "wall_s": round(time.perf_counter() - started, 1),
            }
        )
        return

    audio_s = sum(h.program([c]).duration for c in clips)
    results: dict[str, dict[str, Any]] = {}
    with h.deadline(2 * (audio_s * 1.5 + 240), "latency"), h.Site() as site:
        for name, overrides in (("baseline", baseline), ("ours", {})):
            results[name] = asyncio.run(run_config(site, name, overrides, clips, args.chunk_ms, args.format))
    base, ours = results["baseline"], results["ours"]
    keys = [
        "final_p50_ms",
        "final_p95_ms",
        "first_partial_p50_ms",
        "first_partial_p95_ms",
        "lag_p95_ms",
        "cpu_s_per_audio_s",
        "rss_max_mib",
    ]
    ratios = {k: h.ratio(base[k], ours[k]) for k in keys}
    targets = {
        k: {"target": v, "ours": ours[k], "met": ours[k] is not None and ours[k] <= v}
        for k, v in TARGETS.items()
    }
    if args.verbose:
        columns = ["config", *keys, "wer", "finals", "other_load_cores", "errors"]
        print(h.table([{"config": n, **r} for n, r in results.items()], columns), file=sys.stderr)
        for name, row in results.items():
            for clip, per in row["per_clip"].items():
                print(f"{name:<9} {clip:<34} {per}", file=sys.stderr)
    h.emit(
        {
            "bench": "latency",
            "speed": 1.0,
            "chunk_ms": args.chunk_ms,
            "format": args.format,
            "clips": clips,
            "baseline_overrides": baseline,
            **results,
            "ratio_baseline_over_ours": ratios,
            "targets": targets,
            "wall_s": round(time.perf_counter() - started, 1),
        }
    )


if __name__ == "__main__":
    main()
