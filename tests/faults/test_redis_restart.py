"""Redis restarts under the channel layer while sessions run with remote inference: a private
redis-server (this test's own, on a free port) is killed and started again mid-stream. Jobs and
answers lost with it are sent again; the client resumes if its socket dropped; every final the client
got is stored, once."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import wer
from tests.live import ROOT, LiveServer, free_port

pytestmark = pytest.mark.slow
REDIS = shutil.which("redis-server")


class PrivateRedis:
    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS is not None
        self.process = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while (
            subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True
            ).stdout.strip()
            != "PONG"
        ):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.mark.skipif(
    REDIS is None or shutil.which("redis-cli") is None, reason="redis-server is not installed"
)
def test_sessions_survive_a_redis_restart(tmp_path: Path, audio_dir: Path, refs: dict[str, str]) -> None:
    redis = PrivateRedis()
    redis.start()
    env = {
        "REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
        "TRANSCRIBE_INFERENCE": "channels",
        "TRANSCRIBE_INFERENCE_TIMEOUT": "5",
        "TRANSCRIBE_STORE_AUDIO": "0",
    }
    server = LiveServer(tmp_path, **env)
    server.manage("migrate", "--noinput")
    token = server.manage("transcribe_token", "restart", "--create-user").strip()
    worker_log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "runworker", "transcribe-inference"],
        cwd=ROOT,
        env=server.env,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    clip = "ljspeech_LJ001-0001_to_0008.wav"
    result: dict[str, subprocess.CompletedProcess[str]] = {}
    try:
        server.start()
        client = threading.Thread(
            target=lambda: result.__setitem__(
                "run",
                subprocess.run(
                    [sys.executable, "-m", "transcribe.client", server.ws_url, str(audio_dir / clip)]
                    + ["--token", token, "--speed", "2", "--quiet", "--retries", "8"],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=240,
                ),
            )
        )
        client.start()
        time.sleep(8)  # mid-stream, with finals already stored
        redis.kill()
        time.sleep(2)
        redis.start()
        client.join(timeout=240)
    finally:
        server.stop()
        worker.terminate()
        worker.wait(timeout=15)
        redis.kill()
        worker_log.close()
    done = result["run"]
    assert done.returncode == 0, done.stderr[-2000:]
    events = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    finals = [(e["seq"], e["text"]) for e in events if e["type"] == "final"]
    assert [seq for seq, _ in finals] == list(range(1, len(finals) + 1)), finals
    session = next(e["session"] for e in events if e["type"] == "ready")
    import sqlite3

    with sqlite3.connect(server.env["DATABASE_URL"].removeprefix("sqlite:///")) as db:
        stored = db.execute(
            "SELECT seq, text FROM transcribe_transcriptsegment WHERE session_id = ? ORDER BY seq",
            (session.replace("-", ""),),
        ).fetchall()
    assert stored == finals
    # The speech around the outage may be cut differently, but none of it is lost.
    assert wer(refs[clip], " ".join(text for _, text in finals)) <= 0.15
