"""Load on the multi-node set-up: two daphne nodes, N inference workers, Redis, PostgreSQL.

    python bench/load.py [--levels 2,4,8] [--workers 2] [--clips a.wav,b.wav] [--verbose] [--smoke]

Starts what README "Scaling out and production" describes, on this machine: a fresh PostgreSQL
database (created here, dropped at the end), two ``daphne project.asgi:application`` nodes and
``--workers`` ``manage.py runworker transcribe-inference`` processes, all with ``DATABASE_URL`` on that
database, ``REDIS_URL`` (``--redis``, default redis://127.0.0.1:6379/0) with a ``REDIS_PREFIX`` no other
run uses, ``TRANSCRIBE_INFERENCE=channels`` (the nodes load no weights; every decode is a job on the
shared channel) and ``DJANGO_DEBUG=0``. For each level N it opens N sessions at once (each starting
within ``--stagger`` s), session i on node i % 2, each a different user (MAX_SESSIONS_PER_USER is 4),
with the reference client's ``stream_audio`` in this process streaming the same program at real
time: the clips with 1.5 s of the recorded noise clip after each, pcm_s16le in 250 ms frames.

Per level: sessions held (closed with 1000 and not timed out), final latency p50/p95 (after the frame
holding the final's last audio was sent), errors and close codes, lost finals (finals a client got
that are not rows of ``transcribe_transcriptsegment`` for its session: must be 0), and CPU seconds
(utime+stime from /proc) of the redis-server process, of the workers and of the nodes, each also per
second of audio streamed. ``other_load_cores``: the CPU the rest of the box used meanwhile (the
machine is shared). Ratios are level / smallest level of the same run (2.0: twice the smallest's).

Paper estimate: sessions one worker carries = 1 / (worker CPU s per audio s), measured at the
smallest level (least contention). It assumes the worker has a core to itself and that the cost per
audio second stays what it was at that level; with more sessions a saturated worker makes sessions
decode longer windows less often, so the real number can be somewhat higher, and latency grows
before it. N workers on N free cores: N times that. For GPU workers it must be measured (bench/gpu.sh);
nothing here says anything about a GPU.

Prints one JSON line; ``--verbose`` adds a table on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402

DEFAULT_CLIPS = "jfk.wav,librispeech_2412-153948-0000.wav"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new PostgreSQL database for this run, dropped afterwards (whatever happened)."""
    import psycopg

    name = f"transcribe_load_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise SystemExit(f"PostgreSQL is not reachable at {admin_url}: {exc}") from exc
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield admin_url.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def redis_pid(port: int) -> int | None:
    """The redis-server process listening on ``port`` (by its command line), if this box can see it."""
    candidates = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("redis-server") or "/redis-server" in cmd.split(" ", 1)[0]:
            candidates.append((f":{port}" in cmd, int(entry.name)))
    return max(candidates)[1] if candidates else None


class PgSite(h.Site):
    """The bench site (generated settings, tokens), on PostgreSQL and Redis with remote inference."""

    def __init__(self, database_url: str, redis_url: str) -> None:
        super().__init__()
        self.database_url = database_url
        self.cluster_env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "REDIS_PREFIX": f"transcribe-load-{uuid.uuid4().hex[:8]}",  # never meets another run
            "TRANSCRIBE_INFERENCE": "channels",
            "TRANSCRIBE_STORE_AUDIO": "0",
        }
        self.workers: list[subprocess.Popen[bytes]] = []

    def env(self, settings_module: str = "project.settings") -> dict[str, str]:
        return {**super().env(settings_module), **self.cluster_env}

    def start_workers(self, n: int) -> list[h.ProcessTree]:
        env = {**self.env(), "TRANSCRIBE_LOG_LEVEL": "INFO"}  # for "Inference worker ready"
        for i in range(n):
            with (self.folder / f"worker-{i}.log").open("wb") as log:
                self.workers.append(
                    subprocess.Popen(
                        [sys.executable, str(h.ROOT / "manage.py"), "runworker", "transcribe-inference"],
                        cwd=h.ROOT,
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                    )
                )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            logs = [(self.folder / f"worker-{i}.log").read_text(errors="replace") for i in range(n)]
            if all("Inference worker ready" in log for log in logs):
                return [h.ProcessTree(w.pid) for w in self.workers]
            if any(w.poll() is not None for w in self.workers):
                break
            time.sleep(0.2)
        raise SystemExit(f"inference workers did not start:\n{self.worker_problems()}")

    def worker_problems(self) -> list[str]:
        keys = ("Traceback", "ERROR", "WARNING", "CRITICAL", "Exception")
        out = []
        for i in range(len(self.workers)):
            path = self.folder / f"worker-{i}.log"
            if path.is_file():
                out += [
                    f"worker-{i}: {x}"
                    for x in path.read_text(errors="replace").splitlines()
                    if any(k in x for k in keys)
                ]
        return out

    def close(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in self.workers:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=10)
        super().close()

    def segments(self, session: str) -> list[tuple[int, str]]:
        import psycopg

        with psycopg.connect(self.database_url.replace("postgres://", "postgresql://")) as db:
            rows = db.execute(
                "SELECT seq, text FROM transcribe_transcriptsegment WHERE session_id = %s ORDER BY seq",
                (session,),
            ).fetchall()
        return [(int(seq), str(text)) for seq, text in rows]


async def wait_idle(trees: list[h.ProcessTree], timeout: float = 180, below: float = 0.1) -> float:
    """Until nodes and workers together use under ``below`` of a core over 1 s; seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = sum(t.cpu_seconds() for t in trees)
        await asyncio.sleep(1.0)
        if sum(t.cpu_seconds() for t in trees) - before < below:
            break
    return round(time.monotonic() - started, 1)


def self_cpu() -> float:
    usage = os.times()
    return usage.user + usage.system


async def run_level(
    site: PgSite,
    nodes: list[h.Server],
    workers: list[h.ProcessTree],
    rpid: int | None,
    n: int,
    audio: h.Program,
    args: argparse.Namespace,
    tokens: list[str],
) -> dict[str, Any]:
    rng = random.Random(args.seed + n)
    node_trees = [s.tree for s in nodes]

    async def one(i: int) -> h.SessionMetrics:
        await asyncio.sleep(rng.uniform(0, args.stagger) if i else 0.0)
        return await h.stream(
            nodes[i % len(nodes)], audio.pcm, title=f"load {n}.{i}", stop_timeout=90, token=tokens[i]
        )

    def snapshot() -> dict[str, float | None]:
        return {
            "nodes": sum(t.cpu_seconds() for t in node_trees),
            "workers": sum(t.cpu_seconds() for t in workers),
            "redis": h.pid_cpu_seconds(rpid),
            "self": self_cpu(),
            "busy": h.machine_busy_seconds(),
            "t": time.monotonic(),
        }

    before = snapshot()
    sessions = list(await asyncio.gather(*(one(i) for i in range(n))))
    wall = time.monotonic() - before["t"]
    drained = await wait_idle(node_trees + workers)
    after = snapshot()
    d = {
        k: (after[k] - before[k]) if after[k] is not None and before[k] is not None else None for k in before
    }
    ours = sum(d[k] or 0.0 for k in ("nodes", "workers", "redis", "self"))
    finals = [x for m in sessions for x in m.finals]
    codes: dict[str, int] = {}
    for m in sessions:
        codes[str(m.close_code)] = codes.get(str(m.close_code), 0) + 1
    streamed = [m for m in sessions if m.session]
    audio_s = sum(m.audio_s for m in streamed)
    held = sum(1 for m in sessions if m.session and m.close_code == 1000 and not m.timed_out and not m.errors)

    def per_audio(x: float | None) -> float | None:
        return round(x / audio_s, 4) if x is not None and audio_s else None

    return {
        "n": n,
        "held": held,
        "final_p50_ms": h.pct_ms(finals, 50),
        "final_p95_ms": h.pct_ms(finals, 95),
        "finals": len(finals),
        "close_codes": codes,
        "errors": sorted({e for m in sessions for e in m.errors}),
        "timed_out": sum(m.timed_out for m in sessions),
        "lost_finals": h.lost_finals(site, sessions),
        "wer": round(h.corpus_wer([(audio.reference, m.text) for m in streamed]), 4) if streamed else None,
        "audio_s": round(audio_s, 1),
        "redis_cpu_s": None if d["redis"] is None else round(d["redis"], 2),
        "workers_cpu_s": round(d["workers"] or 0.0, 2),
        "nodes_cpu_s": round(d["nodes"] or 0.0, 2),
        "redis_cpu_s_per_audio_s": per_audio(d["redis"]),
        "workers_cpu_s_per_audio_s": per_audio(d["workers"]),
        "nodes_cpu_s_per_audio_s": per_audio(d["nodes"]),
        # 1 / workers_cpu_s_per_audio_s: the paper estimate at this level (see the module doc)
        "sessions_per_worker": round(audio_s / d["workers"], 1) if d["workers"] else None,
        # cores the workers had on average: next to other_load_cores, shows when the box is saturated
        "workers_cores": round((d["workers"] or 0.0) / (wall + drained), 2),
        "wall_s": round(wall, 1),
        "drain_s": drained,
        "other_load_cores": round(max(0.0, (d["busy"] or 0.0) - ours) / (wall + drained), 2),
    }


async def run(args: argparse.Namespace, site: PgSite, levels: list[int], audio: h.Program) -> dict[str, Any]:
    overrides = {"MAX_SESSIONS": max(levels) + 4}  # the load measured is the cluster's, not the limit
    nodes = [site.server(name, overrides) for name in ("node-a", "node-b")]
    workers = site.start_workers(args.workers)
    tokens = site.tokens(max(*levels, 2 * args.workers))
    rpid = redis_pid(int(args.redis.rsplit(":", 1)[1].split("/")[0]))
    # Warm-up: short sessions at full speed on both nodes, so that every worker loads its weights.
    clip = h.read_pcm(h.speech_clips()[0])[: 3 * h.BYTES_PER_SECOND]
    for attempt in range(3):
        warm = await asyncio.gather(
            *(
                h.stream(nodes[i % 2], clip, speed=0, stop_timeout=90, token=tokens[i])
                for i in range(2 * args.workers)
            )
        )
        bad = [m.errors or m.close_code for m in warm if m.errors or m.close_code not in (None, 1000)]
        if bad:
            raise SystemExit(f"warm-up failed: {bad}\n{nodes[0].log_tail()}")
        if all(w.cpu_seconds() > 1.0 for w in workers) or attempt == 2:
            break
    await wait_idle([n.tree for n in nodes] + workers, timeout=60)
    rows = []
    for n in levels:
        row = await run_level(site, nodes, workers, rpid, n, audio, args, tokens)
        rows.append(row)
        if args.verbose:
            print(f"N={n}: " + " ".join(f"{k}={v}" for k, v in row.items() if k != "n"), file=sys.stderr)
    problems = [f"{s.name}: {x}" for s in nodes for x in s.log_problems()] + site.worker_problems()
    return {"rows": rows, "redis_pid_found": rpid is not None, "problems": problems}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="2,4,8", help="numbers of simultaneous sessions")
    parser.add_argument("--workers", type=int, default=2, help="inference worker processes")
    parser.add_argument("--clips", default=DEFAULT_CLIPS, help="what each session streams, in order")
    parser.add_argument("--stagger", type=float, default=2.0, help="sessions start within this many seconds")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--pg-admin", default=PG_ADMIN, help="a PostgreSQL URL allowed to CREATE DATABASE")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="level 2 only, with one short clip")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    h.exit_on_sigterm()
    levels = [2] if args.smoke else sorted({int(x) for x in args.levels.split(",")})
    clips = [h.speech_clips()[0]] if args.smoke else args.clips.split(",")
    audio = h.program(clips)
    started = time.perf_counter()
    # Start-up and warm-up, then per level: the stream, the stagger, up to 90 s for `closed`, the drain.
    budget = 180 + len(levels) * (audio.duration + args.stagger + 280)
    with h.deadline(budget, "load"), fresh_database(args.pg_admin) as url, PgSite(url, args.redis) as site:
        out = asyncio.run(run(args, site, levels, audio))
    rows = out["rows"]
    base = rows[0]
    for row in rows:
        row["ratio_final_p95"] = h.ratio(row["final_p95_ms"], base["final_p95_ms"])
        for key in ("redis", "workers", "nodes"):
            col = f"{key}_cpu_s_per_audio_s"
            row[f"ratio_{key}_cpu_per_audio"] = h.ratio(row[col], base[col])
    cost = base["workers_cpu_s_per_audio_s"]
    per_worker = round(1 / cost, 1) if cost else None
    estimate = {
        "worker_cpu_s_per_audio_s": cost,
        "measured_at_level": base["n"],
        "sessions_per_worker": per_worker,
        f"sessions_for_{args.workers}_workers": round(per_worker * args.workers, 1) if per_worker else None,
        "assumption": (
            "this CPU; each worker has one free core (a worker takes one job at a time) and the per-session "
            "cost stays as measured at the smallest level; GPU workers: measure with bench/gpu.sh"
        ),
    }
    if args.verbose:
        columns = [
            "n", "held", "final_p50_ms", "final_p95_ms", "ratio_final_p95", "close_codes", "errors",
            "lost_finals", "redis_cpu_s", "workers_cpu_s", "nodes_cpu_s", "redis_cpu_s_per_audio_s",
            "workers_cpu_s_per_audio_s", "nodes_cpu_s_per_audio_s", "sessions_per_worker", "workers_cores",
            "wer", "other_load_cores",
        ]  # fmt: skip
        print(h.table(rows, columns), file=sys.stderr)
        print(f"estimate: {estimate}", file=sys.stderr)
    h.emit(
        {
            "bench": "load",
            "nodes": 2,
            "workers": args.workers,
            "clips": clips,
            "session_audio_s": round(audio.duration, 1),
            "levels": rows,
            "lost_finals": sum(r["lost_finals"] for r in rows),
            "estimate": estimate,
            "redis_pid_found": out["redis_pid_found"],
            "log_problems": out["problems"][-8:],
            "log_problem_lines": len(out["problems"]),
            "wall_s": round(time.perf_counter() - started, 1),
        }
    )


if __name__ == "__main__":
    main()
