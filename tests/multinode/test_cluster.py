"""Beyond one machine, on one machine: two daphne nodes and two inference workers sharing a real
Redis channel layer and a real PostgreSQL. Sessions on both nodes stream real speech at real time;
one worker is killed mid-stream; a session dropped on one node resumes on the other. No final is
lost or stored twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.conftest import load_wav, wer
from tests.live import ROOT, LiveServer, fresh_pg_database, pg_url, redis_available
from transcribe.streaming.replay import pcm_s16le

pytestmark = pytest.mark.slow


class Cluster:
    def __init__(self, workdir: Path, database: str) -> None:
        env = {
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "REDIS_PREFIX": f"transcribe-test-{uuid.uuid4().hex[:8]}",  # never meets another run
            "TRANSCRIBE_INFERENCE": "channels",
            "TRANSCRIBE_INFERENCE_TIMEOUT": "6",
            "TRANSCRIBE_STORE_AUDIO": "0",
        }
        self.nodes = [
            LiveServer(workdir / name, database_url=pg_url(database), **env) for name in ("node-a", "node-b")
        ]
        self.env = self.nodes[0].env
        self.workers: list[subprocess.Popen[bytes]] = []
        self.worker_logs: list[Path] = []
        self.workdir = workdir

    def start(self) -> str:
        for node in self.nodes:
            (node.log.parent).mkdir(parents=True, exist_ok=True)
        self.nodes[0].manage("migrate", "--noinput")
        token = self.nodes[0].manage("transcribe_token", "cluster", "--create-user").strip()
        for i in range(2):
            log = self.workdir / f"worker-{i}.log"
            self.worker_logs.append(log)
            with log.open("ab") as out:
                self.workers.append(
                    subprocess.Popen(
                        [sys.executable, "manage.py", "runworker", "transcribe-inference"],
                        cwd=ROOT,
                        env=self.env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        for node in self.nodes:
            node.start()
        return token

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        for worker in self.workers:
            if worker.poll() is None:
                worker.terminate()
                try:
                    worker.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    worker.kill()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Cluster, str, str]]:
    if not redis_available():
        pytest.skip("Redis is not reachable at 127.0.0.1:6379; .ci/run starts it")
    with fresh_pg_database() as database:
        cluster = Cluster(tmp_path, database)
        try:
            token = cluster.start()
            yield cluster, token, database
        finally:
            cluster.stop()


def run_client(url: str, clip: Path, token: str, speed: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "transcribe.client", url, str(clip), "--token", token, "--speed", str(speed)]
        + ["--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


def finals_of(output: str) -> tuple[str, list[tuple[int, str]]]:
    events = [json.loads(line) for line in output.splitlines() if line.strip()]
    session = next(e["session"] for e in events if e["type"] == "ready")
    return session, [(e["seq"], e["text"]) for e in events if e["type"] == "final"]


def stored(database: str, session: str) -> list[tuple[int, str]]:
    import psycopg

    with psycopg.connect(pg_url(database).replace("postgres://", "postgresql://")) as db:
        return db.execute(
            "SELECT seq, text FROM transcribe_transcriptsegment WHERE session_id = %s ORDER BY seq",
            (session,),
        ).fetchall()


def origin_of(url: str) -> Any:
    return url.replace("ws://", "http://").split("/ws/")[0]


async def drop_on_one_node_resume_on_the_other(a: str, b: str, token: str, data: bytes) -> dict[str, Any]:
    """Half the clip to node A, a dead connection, the rest to node B from the offset B gives."""
    headers = {"Authorization": f"Token {token}"}
    start = {"type": "start", "format": "pcm_s16le", "sample_rate": 16000, "language": "en"}
    seen: list[dict[str, Any]] = []
    frame = 6400  # 200 ms
    async with websockets.connect(a, additional_headers=headers, origin=origin_of(a)) as ws:
        await ws.send(json.dumps(start))
        ready = json.loads(await ws.recv())
        half = len(data) // 2 // frame * frame
        for i in range(0, half, frame):
            await ws.send(data[i : i + frame])
            await asyncio.sleep(0.1)  # 2x real time
        ws.transport.abort()  # the network goes: no close frame
    async with websockets.connect(b, additional_headers=headers, origin=origin_of(b)) as ws:
        await ws.send(json.dumps({**start, "session": ready["session"]}))
        resumed = json.loads(await ws.recv())
        assert resumed["type"] == "ready" and resumed["resumed"], resumed
        seen += resumed["finals"]
        offset = int(resumed["offset"] * 16000) * 2
        for i in range(offset, len(data), frame):
            await ws.send(data[i : i + frame])
            await asyncio.sleep(0.1)
        await ws.send(json.dumps({"type": "stop"}))
        async for message in ws:
            event = json.loads(message)
            if event["type"] == "final":
                seen.append(event)
            if event["type"] == "closed":
                return {
                    "session": ready["session"],
                    "finals": seen,
                    "closed": event,
                    "offset": resumed["offset"],
                }
    raise AssertionError("no closed event")


async def sessions_per_user_across_nodes(a: str, b: str, token: str) -> list[Any]:
    """MAX_SESSIONS_PER_USER (4 in the demo) sessions of one user, alternating nodes, then one more
    on each node: what each start got (the ready event, or the error and close code)."""
    headers = {"Authorization": f"Token {token}"}
    start = json.dumps({"type": "start", "format": "pcm_s16le", "sample_rate": 16000})
    sockets, answers = [], []
    try:
        for url in (a, b, a, b, a, b):
            ws = await websockets.connect(url, additional_headers=headers, origin=origin_of(url))
            sockets.append(ws)
            await ws.send(start)
            answer = json.loads(await ws.recv())
            if answer["type"] == "error":
                await ws.wait_closed()
                answer["close_code"] = ws.close_code
            answers.append(answer)
    finally:
        for ws in sockets:
            await ws.close()
    return answers


def test_two_nodes_two_workers_one_killed(
    cluster: tuple[Cluster, str, str], audio_dir: Path, refs: dict[str, str]
) -> None:
    nodes, token, database = cluster
    a, b = (node.ws_url for node in nodes.nodes)
    long_clip, short_clip = "ljspeech_LJ001-0001_to_0008.wav", "librispeech_2412-153948-0000.wav"
    results: dict[str, subprocess.CompletedProcess[str]] = {}
    threads = [
        threading.Thread(
            target=lambda: results.__setitem__("a", run_client(a, audio_dir / long_clip, token, 3))
        ),
        threading.Thread(
            target=lambda: results.__setitem__("b", run_client(b, audio_dir / short_clip, token, 1))
        ),
    ]
    for thread in threads:
        thread.start()
    time.sleep(6)  # both sessions are mid-stream, each worker has had jobs
    nodes.workers[0].send_signal(signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=240)
    assert nodes.workers[0].wait(timeout=5) == -signal.SIGKILL

    for key, clip in (("a", long_clip), ("b", short_clip)):
        done = results[key]
        assert done.returncode == 0, done.stderr[-2000:]
        session, finals = finals_of(done.stdout)
        assert [seq for seq, _ in finals] == list(range(1, len(finals) + 1)), finals
        assert stored(database, session) == finals, "the stored finals differ from those sent"
        assert wer(refs[clip], " ".join(text for _, text in finals)) <= 0.15

    # Both workers served jobs before one died (the queue is shared).
    logs = [log.read_text() for log in nodes.worker_logs]
    assert all("Inference worker ready" in log for log in logs), logs

    data = pcm_s16le(load_wav(audio_dir / "jfk.wav"))
    moved = asyncio.run(drop_on_one_node_resume_on_the_other(a, b, token, data))
    seqs = [f["seq"] for f in moved["finals"]]
    assert seqs == list(range(1, len(seqs) + 1)), f"lost or repeated: {seqs}"
    assert [tuple(x) for x in stored(database, moved["session"])] == [
        (f["seq"], f["text"]) for f in moved["finals"]
    ]
    assert moved["closed"]["text"] == " ".join(f["text"] for f in moved["finals"])
    assert wer(refs["jfk.wav"], moved["closed"]["text"]) <= 0.15
    assert moved["offset"] == pytest.approx(len(data) // 2 // 6400 * 6400 / 32000, abs=0.3)
    assert os.environ.get("REDIS_PREFIX") is None  # the test never leaked its prefix into this process

    # The per-user limit holds across the nodes: 2 + 2 sessions are open, a fifth is refused on either.
    answers = asyncio.run(sessions_per_user_across_nodes(a, b, token))
    assert [x["type"] for x in answers] == ["ready"] * 4 + ["error"] * 2, answers
    assert all(x["code"] == "rate_limited" and x["close_code"] == 4429 for x in answers[4:]), answers
