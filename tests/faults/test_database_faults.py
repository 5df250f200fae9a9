"""The database goes away while finals are due: a real daphne on a real PostgreSQL whose connections
are killed, and which refuses new ones for a while, during a real-time stream of real speech.

Finals are retried until stored and never sent before; every final the client got is stored once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wer
from tests.live import PG_ADMIN_URL, ROOT, LiveServer, fresh_pg_database, pg_url

psycopg = pytest.importorskip("psycopg", reason='psycopg is missing: pip install -e ".[dev]"')
pytestmark = pytest.mark.slow
ADMIN_URL = PG_ADMIN_URL


@pytest.fixture
def pg_database() -> Iterator[str]:
    with fresh_pg_database() as name:
        yield name


class Saboteur(threading.Thread):
    """Every ``every`` seconds: kill the server's database connections. Once, refuse new ones as
    well (a database restart) until the server has had to retry a final (``retried()``), or for
    ``outage`` seconds at most."""

    def __init__(
        self, database: str, retried: Callable[[], bool], every: float = 1.5, outage: float = 20
    ) -> None:
        super().__init__(daemon=True)
        self.database, self.retried, self.every, self.outage = database, retried, every, outage
        self.stop = threading.Event()
        self.kills = 0
        self.refused_for = 0.0

    def run(self) -> None:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            rounds = 0
            while not self.stop.wait(self.every):
                rounds += 1
                if rounds == 3:
                    admin.execute(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS false')
                self.kills += admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (self.database,),
                ).fetchone()[0]
                if rounds == 3:
                    began = time.monotonic()
                    while not self.retried() and time.monotonic() - began < self.outage:
                        time.sleep(0.2)
                    time.sleep(1.0)  # a few more failed tries
                    self.refused_for = time.monotonic() - began
                    admin.execute(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS true')


def stored(database: str, session: str) -> list[tuple[int, str]]:
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{database}") as db:
        return db.execute(
            "SELECT seq, text FROM transcribe_transcriptsegment WHERE session_id = %s ORDER BY seq",
            (session,),
        ).fetchall()


def test_finals_survive_a_database_that_drops_and_restarts(
    pg_database: str, tmp_path: Path, audio_dir: Path, refs: dict[str, str]
) -> None:
    server = LiveServer(tmp_path, database_url=pg_url(pg_database))
    server.manage("migrate", "--noinput")
    token = server.manage("transcribe_token", "faulty", "--create-user").strip()
    server.start()
    saboteur = Saboteur(pg_database, retried=lambda: "retrying" in server.log.read_text())
    clip = "ljspeech_LJ001-0001_to_0008.wav"
    try:
        saboteur.start()
        client = subprocess.run(
            [sys.executable, "-m", "transcribe.client", server.ws_url, str(audio_dir / clip)]
            + ["--token", token, "--speed", "3", "--quiet"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        saboteur.stop.set()
        saboteur.join(timeout=30)
        server.stop()
    events: list[dict[str, Any]] = [json.loads(line) for line in client.stdout.splitlines() if line.strip()]
    assert client.returncode == 0, client.stderr[-2000:]
    log = server.log.read_text()
    assert "retrying" in log, "no final had to be retried: the fault was not exercised"
    finals = [e for e in events if e["type"] == "final"]
    session = next(e["session"] for e in events if e["type"] == "ready")
    # Every final the client saw is stored, once, in order; none is missing from what it saw.
    assert [(f["seq"], f["text"]) for f in finals] == stored(pg_database, session)
    assert [f["seq"] for f in finals] == list(range(1, len(finals) + 1))
    assert wer(refs[clip], " ".join(f["text"] for f in finals)) <= 0.1
