"""N simultaneous real-time sessions against one real server: latency, lag, CPU, memory, capacity.

    python bench/concurrency.py [--levels 1,2,4,8,16] [--clips a.wav,b.wav] [--max-sessions 32]
                                [--format pcm_s16le|webm] [--baseline KEY=VALUE,...] [--verbose] [--smoke]

Starts one daphne on a free localhost port (demo project settings, DJANGO_DEBUG=0, a temporary SQLite
file, MAX_SESSIONS raised to ``--max-sessions`` so that the levels measure the pipeline, not the
limit) and, for each level N, opens N sessions with the reference client at once (each starting within
``--stagger`` seconds, as independent users would). Every session streams the same program at real
time: the clips with 1.5 s of the recorded noise clip after each, pcm_s16le in 250 ms frames (or
WebM/Opus cut into 250 ms pieces, ``--format webm``, as browsers send it). Between
levels the server is left to go idle, so a level's leftover work is not charged to the next one.

Per level: final latency p50/p95 (after the frame holding the final's last audio was sent), first
partial p50, the largest ``status.lag_ms`` seen and the largest lag at the end of a session, server CPU
seconds per audio second (daphne and its children, from /proc), peak server RSS, errors and close
codes (4429 once N > MAX_SESSIONS), and finals received but missing from the database.

A level keeps up when every session ends with lag <= 2 s, final p95 <= 2.5 s and no errors; capacity
is the largest N such that every level up to it keeps up, and the suggested MAX_SESSIONS default is
that N (none when not even N=1 keeps up). The baseline is N=1 of the same run: ratios are
p95(N) / p95(1). Levels after one whose sessions timed out are skipped (each would only be worse);
``--keep-going`` runs them anyway. Each session is a different user (MAX_SESSIONS_PER_USER is a
separate limit). ``other_load_cores`` is the CPU that other processes of the box used meanwhile.

``--baseline KEY=VALUE,...`` measures one lever: a second server with those ``TRANSCRIBE`` overrides
runs every level too, just before ours (the two alternate level by level, so both see the box in the
same state), and each level gets ``ratio_baseline_over_ours`` of final p50/p95 and first partial p50.

Prints one JSON line; ``--verbose`` adds a table on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402

from transcribe.client import AudioFormat, encode_webm  # noqa: E402

END_LAG_LIMIT_MS = 2000
FINAL_P95_LIMIT_MS = 2500
DEFAULT_CLIPS = "jfk.wav,librispeech_2412-153948-0000.wav,librispeech_1272-128104-0000.wav"


async def run_level(
    site: h.Site,
    server: h.Server,
    n: int,
    audio: h.Program,
    stagger: float,
    seed: int,
    tokens: list[str],
    fmt: AudioFormat,
) -> dict[str, Any]:
    rng = random.Random(seed + n)
    tree = server.tree
    webm = await encode_webm(audio.pcm) if fmt == "webm" else None  # once, not in every session

    async def one(i: int) -> h.SessionMetrics:
        await asyncio.sleep(rng.uniform(0, stagger) if i else 0.0)
        return await h.stream(
            server,
            audio.pcm,
            title=f"concurrency {n}.{i}",
            stop_timeout=90,
            token=tokens[i % len(tokens)],
            fmt=fmt,
            webm=webm,
        )

    started = time.monotonic()
    with h.Sampler(tree, 1.0) as sampler:
        cpu0 = tree.cpu_seconds()
        sessions = list(await asyncio.gather(*(one(i) for i in range(n))))
        wall = time.monotonic() - started
        drained = await server.wait_idle(timeout=180)  # sessions given up on are still transcribed
        cpu_s = tree.cpu_seconds() - cpu0
    finals = [x for m in sessions for x in m.finals]
    partials = [x for m in sessions for x in m.first_partials]
    lags = [lag for m in sessions for _, lag in m.lag]
    end_lags = [m.end_lag_ms for m in sessions if m.end_lag_ms is not None]
    codes: dict[str, int] = {}
    for m in sessions:
        codes[str(m.close_code)] = codes.get(str(m.close_code), 0) + 1
    streamed = [m for m in sessions if m.session]  # sessions the server accepted
    audio_s = sum(m.audio_s for m in streamed)
    rejected = sum(1 for m in sessions if m.close_code == 4429 and not m.session)
    row: dict[str, Any] = {
        "n": n,
        "final_p50_ms": h.pct_ms(finals, 50),
        "final_p95_ms": h.pct_ms(finals, 95),
        "first_partial_p50_ms": h.pct_ms(partials, 50),
        "lag_max_ms": h.pct(lags, 100, 0),
        "end_lag_max_ms": max(end_lags) if end_lags else None,
        "cpu_s_per_audio_s": round(cpu_s / audio_s, 3) if audio_s else None,
        "children_cpu_s_per_audio_s": round(sampler.delta("children_cpu_s") / audio_s, 3)
        if audio_s
        else None,
        "rss_max_mib": sampler.max("rss_mib"),
        "children_rss_max_mib": sampler.max("children_rss_mib"),
        "children_pss_max_mib": sampler.max("children_pss_mib"),
        "finals": len(finals),
        "wer": round(h.corpus_wer([(audio.reference, m.text) for m in streamed]), 4) if streamed else None,
        "word_errors": h.word_error_counts([(audio.reference, m.text) for m in streamed]),
        "close_codes": codes,
        "errors": sorted({e for m in sessions for e in m.errors}),
        "timed_out": sum(m.timed_out for m in sessions),
        "rejected_4429": rejected,
        "lost_finals": h.lost_finals(site, sessions),
        # cores the server had on average: next to other_load_cores, shows when the box is saturated
        "server_cores": round(cpu_s / (wall + drained), 2),
        "wall_s": round(wall, 1),
        "drain_s": drained,
        "other_load_cores": sampler.other_load,
    }
    # Whether the sessions it accepted kept up; a 4429 past MAX_SESSIONS is the limit working, and
    # shows in rejected_4429 and in the capacity (a level with rejections is not a level it served).
    row["keeps_up"] = bool(
        streamed
        and len(streamed) + rejected == n
        and not row["errors"]
        and not row["timed_out"]
        and (row["end_lag_max_ms"] or 0) <= END_LAG_LIMIT_MS
        and (row["final_p95_ms"] or 0) <= FINAL_P95_LIMIT_MS
    )
    return row


async def run(
    args: argparse.Namespace, site: h.Site, levels: list[int], audio: h.Program
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of ours and of the baseline (empty without ``--baseline``), level by level."""
    limit = {"MAX_SESSIONS": args.max_sessions}
    servers = {"ours": site.server("concurrency", limit)}
    if args.baseline:
        servers = {"baseline": site.server("baseline", {**args.baseline, **limit}), **servers}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    tokens = site.tokens(max(levels))  # one user per session: MAX_SESSIONS_PER_USER is not the limit measured
    problems: list[str] = []
    try:
        for server in servers.values():
            await h.warm_up(server)
            await server.wait_idle(timeout=30)
        for n in levels:
            for name, server in servers.items():
                row = await run_level(site, server, n, audio, args.stagger, args.seed, tokens, args.format)
                rows[name].append(row)
                if args.verbose:
                    print(
                        f"{name} N={n}: " + " ".join(f"{k}={v}" for k, v in row.items() if k != "n"),
                        file=sys.stderr,
                    )
            if rows["ours"][-1]["timed_out"] and not args.keep_going:
                for name in rows:
                    rows[name] += [
                        {"n": m, "skipped": f"N={n} timed out"} for m in levels[levels.index(n) + 1 :]
                    ]
                break
        for server in servers.values():
            problems += server.log_problems()
    finally:
        for server in servers.values():
            server.stop()
    if problems:
        rows["ours"].append({"server_log_problems": problems[-8:], "server_log_problem_lines": len(problems)})
    return rows["ours"], rows.get("baseline", [])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="1,2,4,8,16", help="numbers of simultaneous sessions")
    parser.add_argument("--clips", default=DEFAULT_CLIPS, help="what each session streams, in order")
    parser.add_argument("--max-sessions", type=int, default=32, help="the server's MAX_SESSIONS")
    parser.add_argument("--stagger", type=float, default=2.0, help="sessions start within this many seconds")
    parser.add_argument("--seed", type=int, default=1)
    h.add_format_argument(parser)
    parser.add_argument("--keep-going", action="store_true", help="run the levels after one that timed out")
    parser.add_argument(
        "--baseline",
        type=h.parse_overrides,
        help="TRANSCRIBE overrides of a baseline server measured at every level beside ours",
    )
    parser.add_argument("--smoke", action="store_true", help="levels 1,2 with one short clip")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    h.exit_on_sigterm()
    levels = [1, 2] if args.smoke else sorted({int(x) for x in args.levels.split(",")})
    clips = [h.speech_clips()[0]] if args.smoke else args.clips.split(",")
    if 1 not in levels:
        levels.insert(0, 1)  # the baseline
    audio = h.program(clips)
    started = time.perf_counter()
    # Per level: the stream, the stagger, up to 90 s waiting for `closed` and 180 s of drain.
    budget = 120 + len(levels) * (audio.duration + args.stagger + 300)
    with h.deadline(budget, "concurrency"), h.Site() as site:
        rows, baseline_rows = asyncio.run(run(args, site, levels, audio))
    extra = rows.pop() if rows and "server_log_problems" in rows[-1] else {}
    measured = [r for r in rows if "skipped" not in r]
    base = measured[0]
    for row in measured:
        row["ratio_final_p95_over_n1"] = h.ratio(row["final_p95_ms"], base["final_p95_ms"])
        row["ratio_cpu_over_n1"] = h.ratio(row["cpu_s_per_audio_s"], base["cpu_s_per_audio_s"])
    for row, theirs in zip(measured, baseline_rows, strict=False):  # no baseline: no rows
        if "skipped" not in theirs:
            row["ratio_baseline_over_ours"] = {
                key: h.ratio(theirs[key], row[key])
                for key in ("final_p50_ms", "final_p95_ms", "first_partial_p50_ms")
            }
    capacity = 0
    for row in measured:
        if not row["keeps_up"] or row["rejected_4429"]:
            break
        capacity = row["n"]
    lag_grows_at = next((r["n"] for r in measured if not r["keeps_up"]), None)
    if args.verbose:
        columns = [
            "n", "final_p50_ms", "final_p95_ms", "ratio_final_p95_over_n1", "first_partial_p50_ms",
            "lag_max_ms", "end_lag_max_ms", "cpu_s_per_audio_s", "rss_max_mib", "wer", "close_codes",
            "errors", "lost_finals", "server_cores", "other_load_cores", "keeps_up",
        ]  # fmt: skip
        print(h.table(measured, columns), file=sys.stderr)
        if baseline_rows:
            print(f"baseline {args.baseline}:", file=sys.stderr)
            print(h.table([r for r in baseline_rows if "skipped" not in r], columns[:-1]), file=sys.stderr)
    h.emit(
        {
            "bench": "concurrency",
            "format": args.format,
            "speed": 1.0,
            "clips": clips,
            "session_audio_s": round(audio.duration, 1),
            "max_sessions": args.max_sessions,
            "levels": rows,
            **(
                {"baseline_overrides": args.baseline, "baseline_levels": baseline_rows}
                if args.baseline
                else {}
            ),
            "capacity": capacity,
            # every level kept up: the capacity is at least the largest level run
            "capacity_is_lower_bound": bool(measured)
            and all(r["keeps_up"] and not r["rejected_4429"] for r in measured),
            "lag_grows_at": lag_grows_at,
            # None: not even one session kept up (on this box, at this load)
            "suggested_max_sessions": capacity or None,
            "criteria": {"end_lag_max_ms": END_LAG_LIMIT_MS, "final_p95_ms": FINAL_P95_LIMIT_MS},
            **extra,
            "wall_s": round(time.perf_counter() - started, 1),
        }
    )


if __name__ == "__main__":
    main()
