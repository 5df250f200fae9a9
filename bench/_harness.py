"""Shared pieces of the server benchmarks: a real daphne on a free port, audio programs, /proc readings.

Used by bench/latency.py, bench/concurrency.py and bench/accuracy.py (``--server``). Nothing here is
product code: it starts ``python -m daphne project.asgi:application`` exactly as a deployment would,
with a settings module generated in a temporary folder that imports the demo's ``project.settings``
and overrides a few ``TRANSCRIBE`` keys (so ``project/settings.py`` stays untouched), a migrated
SQLite file in the same folder, ``DJANGO_DEBUG=0``, and a user with an API token. The clients are
the reference client's ``stream_audio`` (``transcribe.client``), in this process.

Times: the client stamps every event with ``t``, seconds since its first audio frame went out. Frames
of ``chunk_ms`` leave at ``i * chunk_ms / speed`` on that clock, so the audio at session second ``s``
was sent at ``sent_at(s)``; a final's latency is ``t - sent_at(end)``, a first partial's
``t - sent_at(speech_started.at)``. This is one frame stricter than ``StreamResult.final_latencies``
(``t - end / speed``), which measures from the moment the word was spoken, not from the moment the
frame that carries it was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import corpus_wer, normalize, wer, word_errors  # noqa: E402
from transcribe.client import AudioFormat, StreamResult, encode_webm, stream_audio  # noqa: E402

__all__ = ["corpus_wer", "normalize", "wer"]

AUDIO = Path(os.environ.get("TRANSCRIBE_TEST_AUDIO") or ROOT.parent / "shared" / "audio")
NOISE_CLIP = "silence_noise.wav"  # pink noise at about -54 dBFS, expected text ""
SAMPLE_RATE = 16_000
BYTES_PER_SECOND = 2 * SAMPLE_RATE  # pcm_s16le mono
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The product's streaming knobs that the seed-like baseline turns off (as bench/pipeline_latency.py
# does): partials and finals encoded over Whisper's full 30 s window, no speculative finals at pauses,
# partials every STEP whatever they cost, numpy's BLAS with its default threads.
BASELINE_OVERRIDES: dict[str, Any] = {
    "PARTIAL_ENCODER_SECONDS": 0.0,
    "FINAL_ENCODER_SECONDS": 0.0,
    "SPECULATE_AFTER": 0.0,
    "PARTIAL_SHARE": 1.0,
    "BLAS_THREADS": 0,
}


def add_format_argument(parser: argparse.ArgumentParser) -> None:
    """``--format``: what the clients send, raw PCM or WebM/Opus as a browser does."""
    parser.add_argument(
        "--format",
        choices=get_args(AudioFormat),
        default="pcm_s16le",
        help="what the clients send: raw PCM, or WebM/Opus as a browser does",
    )


def parse_overrides(text: str) -> dict[str, Any]:
    """``KEY=VALUE,...`` of TRANSCRIBE settings (values as JSON: 0 → int, 0.5 → float, false; a
    value that is not JSON is a string: VAD_RUNTIME=onnxruntime)."""
    pairs = (item.split("=", 1) for item in text.split(",") if item.strip())
    return {key.strip().upper(): _setting_value(value.strip()) for key, value in pairs}


def _setting_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def write_settings(folder: Path, module: str, overrides: dict[str, Any], extra: str = "") -> str:
    """Write ``folder/module.py``: the demo project's settings with these ``TRANSCRIBE`` overrides
    (and ``extra`` lines); returns the module's name, for DJANGO_SETTINGS_MODULE with ``folder`` on
    the path."""
    (folder / f"{module}.py").write_text(
        "from project.settings import *  # noqa: F403\n\n"
        f"TRANSCRIBE = {{**TRANSCRIBE, **{overrides!r}}}  # noqa: F405\n{extra}"
    )
    return module


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so the ``finally`` that stops the server runs on ``kill`` too."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


# -- audio -------------------------------------------------------------------------------------


def refs() -> dict[str, str]:
    if not (AUDIO / "refs.json").is_file():
        raise SystemExit(f"No test audio at {AUDIO}: set TRANSCRIBE_TEST_AUDIO to a folder with refs.json")
    return {name: entry["text"] for name, entry in json.loads((AUDIO / "refs.json").read_text()).items()}


def speech_clips() -> list[str]:
    """Every clip with a non-empty reference, shortest first."""
    return sorted((n for n, text in refs().items() if text.strip()), key=lambda n: len(read_pcm(n)))


def read_pcm(name: str) -> bytes:
    """A clip as pcm_s16le bytes (the clips are 16 kHz mono 16-bit WAV; anything else is refused)."""
    with wave.open(str(AUDIO / name)) as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            raise SystemExit(f"{name}: expected 16 kHz mono 16-bit WAV")
        return w.readframes(w.getnframes())


def read_float(name: str) -> np.ndarray:
    return np.frombuffer(read_pcm(name), dtype="<i2").astype(np.float32) / 32768


def noise(seconds: float, offset: float = 0.0) -> bytes:
    """``seconds`` of the recorded noise clip (looped), a realistic open microphone between sentences."""
    clip = read_pcm(NOISE_CLIP)
    want = int(seconds * SAMPLE_RATE) * 2
    start = int(offset * SAMPLE_RATE) * 2 % len(clip)
    reps = (start + want) // len(clip) + 1
    return (clip * reps)[start : start + want]


@dataclass
class Program:
    """One session's audio: clips with noise around them, and the reference text in order."""

    pcm: bytes
    reference: str
    clips: list[str]

    @property
    def duration(self) -> float:
        return len(self.pcm) / BYTES_PER_SECOND


def program(clips: list[str], *, lead: float = 0.5, gap: float = 1.5, minutes: float = 0.0) -> Program:
    """``lead`` s of noise, then each clip followed by ``gap`` s of noise; looped up to ``minutes``."""
    texts = refs()
    parts, words, names = [noise(lead)], [], []
    total = lead
    while True:
        for name in clips:
            pcm = read_pcm(name)
            parts += [pcm, noise(gap, offset=total)]
            total += len(pcm) / BYTES_PER_SECOND + gap
            words.append(texts[name])
            names.append(name)
            if minutes and total >= minutes * 60:
                break
        if not minutes or total >= minutes * 60:
            break
    return Program(b"".join(parts), " ".join(w for w in words if w.strip()), names)


# -- numbers -----------------------------------------------------------------------------------


def pct_ms(values: list[float], q: float) -> float | None:
    """The q-th percentile of ``values`` (seconds) in milliseconds, or None when there are none."""
    return round(1000 * float(np.percentile(values, q)), 1) if values else None


def pct(values: list[float], q: float, digits: int = 1) -> float | None:
    return round(float(np.percentile(values, q)), digits) if values else None


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs (None with fewer than 3 points)."""
    if len(xs) < 3 or len(set(xs)) < 2:
        return None
    return float(np.polyfit(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), 1)[0])


def ratio(base: float | None, ours: float | None) -> float | None:
    return round(base / ours, 2) if base is not None and ours else None


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table of ``rows`` (dicts) for --verbose output."""
    cells = [[str(c) for c in columns]] + [
        ["-" if r.get(c) is None else str(r.get(c)) for c in columns] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells)


# -- /proc -------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid:  # fields[1] is ppid
                found.append(int(entry.name))
    return found


@dataclass
class ProcessTree:
    """CPU and memory of a server process and its children (the recorder's ffmpeg, one per session)."""

    pid: int

    def descendants(self) -> list[int]:
        out, todo = [], [self.pid]
        while todo:
            kids = _children(todo.pop())
            out += kids
            todo += kids
        return out

    def cpu_seconds(self) -> float:
        """user+system CPU of the server, its live descendants, and the children it has reaped."""
        fields = _stat(self.pid)
        if fields is None:
            return float("nan")
        # utime, stime, cutime, cstime are fields 14-17 of stat (1-based); ours start at field 3.
        ticks = sum(int(v) for v in fields[11:15])
        for pid in self.descendants():
            kid = _stat(pid)
            if kid is not None:
                ticks += int(kid[11]) + int(kid[12])
        return ticks / CLK_TCK

    def rss_mib(self) -> float:
        """Resident memory of the server process itself (VmRSS)."""
        return _status_mib(self.pid, "VmRSS")

    def peak_rss_mib(self) -> float:
        return _status_mib(self.pid, "VmHWM")

    def children_rss_mib(self) -> float:
        return sum(_status_mib(pid, "VmRSS") for pid in self.descendants())

    def children_pss_mib(self) -> float:
        """Proportional set size of the children: one ffmpeg binary's pages shared by N sessions are
        counted once, not N times as in their RSS."""
        return sum(_pss_mib(pid) for pid in self.descendants())

    def children_cpu_seconds(self) -> float:
        """The children's part of ``cpu_seconds`` (live descendants and reaped children)."""
        fields = _stat(self.pid)
        if fields is None:
            return float("nan")
        ticks = int(fields[13]) + int(fields[14])
        for pid in self.descendants():
            kid = _stat(pid)
            if kid is not None:
                ticks += int(kid[11]) + int(kid[12])
        return ticks / CLK_TCK


def pid_cpu_seconds(pid: int | None) -> float | None:
    """user+system CPU of one process (not its children), or None when it is not visible here."""
    fields = _stat(pid) if pid else None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK if fields else None


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have spent busy (not idle or iowait), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


def _pss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0.0


def _status_mib(pid: int, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


class Sampler:
    """Samples the server's RSS (and whatever ``extra`` returns) every ``interval`` seconds."""

    def __init__(
        self, tree: ProcessTree, interval: float, extra: Callable[[], dict[str, Any]] | None = None
    ) -> None:
        self.tree = tree
        self.interval = interval
        self.extra = extra
        self.samples: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._t0 = 0.0
        self._busy0 = self._ours0 = 0.0
        self.other_load: float | None = None

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def sample(self) -> None:
        row = {
            "t": time.monotonic() - self._t0,
            "rss_mib": self.tree.rss_mib(),
            "children_rss_mib": self.tree.children_rss_mib(),
            "children_pss_mib": self.tree.children_pss_mib(),
            "cpu_s": self.tree.cpu_seconds(),
            "children_cpu_s": self.tree.children_cpu_seconds(),
        }
        if self.extra is not None:
            row.update(self.extra())
        self.samples.append(row)

    def __enter__(self) -> Sampler:
        self._t0 = time.monotonic()
        self._busy0 = machine_busy_seconds()
        self._ours0 = self.tree.cpu_seconds() + _self_cpu()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        self.sample()
        wall = time.monotonic() - self._t0
        others = machine_busy_seconds() - self._busy0 - (self.tree.cpu_seconds() + _self_cpu() - self._ours0)
        # Cores kept busy by everything but the server and this benchmark: timings are only
        # comparable between runs where this is about the same (the box has os.cpu_count() cores).
        self.other_load = round(max(0.0, others) / wall, 2) if wall > 0 else None

    def delta(self, key: str) -> float:
        """Last minus first sample of ``key`` (e.g. CPU seconds spent while sampling)."""
        return self.samples[-1][key] - self.samples[0][key] if len(self.samples) > 1 else 0.0

    def max(self, key: str) -> float | None:
        values = [s[key] for s in self.samples if s.get(key) is not None]
        return round(max(values), 1) if values else None


def _self_cpu() -> float:
    usage = os.times()
    return usage.user + usage.system


# -- the server --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Site:
    """A temporary folder with a migrated SQLite database and a user with a token.

    ``server(name, overrides)`` starts daphne on it with ``TRANSCRIBE`` overrides; every server is
    stopped when the site closes, whatever happened (use it as a context manager).
    """

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="transcribe-bench-"))
        self.db = self.folder / "db.sqlite3"
        self.servers: list[Server] = []
        self.token = ""

    def env(self, settings_module: str = "project.settings") -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(self.folder), str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "DJANGO_SETTINGS_MODULE": settings_module,
            "DJANGO_DEBUG": "0",
            "DATABASE_URL": f"sqlite:///{self.db}",
            "DJANGO_MEDIA_ROOT": str(self.folder / "media"),  # kept recordings stay out of the checkout
            "TRANSCRIBE_LOG_LEVEL": "WARNING",  # one INFO line per session is noise here
        }

    def __enter__(self) -> Site:
        try:
            manage = [sys.executable, str(ROOT / "manage.py")]
            _run([*manage, "migrate", "--noinput"], self.env(), "migrate")
            self.token = _run(
                [*manage, "transcribe_token", "bench", "--create-user"], self.env(), "create a token"
            ).strip()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        if os.environ.get("BENCH_KEEP_TMP"):
            print(f"kept {self.folder}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(self.folder, ignore_errors=True)

    def tokens(self, n: int) -> list[str]:
        """API tokens of ``n`` users (bench0, bench1, ...): one per simulated person, since the server
        also limits the sessions of one user (MAX_SESSIONS_PER_USER)."""
        script = (
            "import io\n"
            "from django.core.management import call_command\n"
            f"for i in range({n}):\n"
            "    out = io.StringIO()\n"
            "    call_command('transcribe_token', f'bench{i}', create_user=True, stdout=out, stderr=io.StringIO())\n"
            "    print(out.getvalue().strip())\n"
        )
        manage = [sys.executable, str(ROOT / "manage.py"), "shell", "--verbosity", "0", "-c", script]
        out = _run(manage, self.env(), "create tokens")
        tokens = out.split()[-n:]  # after anything the shell itself prints
        if len(tokens) != n:
            raise SystemExit(f"expected {n} tokens, got: {out[-500:]}")
        return tokens

    def server(self, name: str, overrides: dict[str, Any] | None = None) -> Server:
        server = Server(self, name, overrides or {})
        self.servers.append(server)
        server.start()
        return server

    def segments(self, session: str) -> list[tuple[int, str]]:
        """(seq, text) of a session's stored finals."""
        with contextlib.closing(sqlite3.connect(self.db, timeout=30)) as db:
            return db.execute(
                "SELECT seq, text FROM transcribe_transcriptsegment WHERE session_id = ? ORDER BY seq",
                (uuid.UUID(session).hex,),
            ).fetchall()


def _run(cmd: list[str], env: dict[str, str], what: str) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"could not {what} (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


class Server:
    """One daphne process serving project.asgi with ``TRANSCRIBE`` overrides."""

    def __init__(self, site: Site, name: str, overrides: dict[str, Any]) -> None:
        self.site = site
        self.name = name
        self.overrides = overrides
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws/transcribe/"
        self.log_path = site.folder / f"daphne-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def token(self) -> str:
        return self.site.token

    @property
    def tree(self) -> ProcessTree:
        assert self.process is not None
        return ProcessTree(self.process.pid)

    def start(self, timeout: float = 60) -> None:
        module = write_settings(
            self.site.folder,
            f"bench_settings_{self.name}",
            self.overrides,
            # The level on every line, so that log_problems() can find warnings and errors.
            "LOGGING = {**LOGGING, 'formatters': {'bench': {'format': '%(levelname)s %(name)s %(message)s'}},  # noqa: F405\n"
            "    'handlers': {'console': {'class': 'logging.StreamHandler', 'formatter': 'bench'}}}\n",
        )
        with self.log_path.open("wb") as log:  # a pipe nobody reads could fill up and stall daphne
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port)]
                + ["project.asgi:application"],
                cwd=ROOT,
                env=self.site.env(module),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise SystemExit(f"daphne ({self.name}) did not start:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def log_problems(self) -> list[str]:
        """Log lines at WARNING or above and tracebacks: anything the server complained about."""
        keys = ("Traceback", "ERROR", "WARNING", "CRITICAL", "Exception")
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        return [line for line in lines if any(k in line for k in keys)]

    async def wait_idle(self, timeout: float = 120.0, below: float = 0.05) -> float:
        """Wait until the server uses less than ``below`` of a core over 1 s; returns seconds waited.

        A session whose client gave up is still transcribed to its end (it may be resumed); its work
        must not be counted in the next measurement.
        """
        started = time.monotonic()
        tree = self.tree
        while time.monotonic() - started < timeout:
            before = tree.cpu_seconds()
            await asyncio.sleep(1.0)
            if tree.cpu_seconds() - before < below:
                break
        return round(time.monotonic() - started, 1)


# -- streaming ---------------------------------------------------------------------------------


@dataclass
class SessionMetrics:
    """What one streamed session measured, in seconds (latencies) and milliseconds (lag)."""

    finals: list[float] = field(default_factory=list)  # final latency after its last audio was sent
    first_partials: list[float] = field(default_factory=list)
    lag: list[tuple[float, float]] = field(default_factory=list)  # (t, lag_ms) from status events
    utterances: int = 0
    text: str = ""
    close_code: int | None = None
    timed_out: bool = False
    errors: list[str] = field(default_factory=list)
    session: str | None = None
    final_seqs: list[tuple[int, str]] = field(default_factory=list)
    audio_s: float = 0.0

    @property
    def end_lag_ms(self) -> float | None:
        return self.lag[-1][1] if self.lag else None


def sent_at(second: float, chunk_ms: float, speed: float, frames: int) -> float:
    """Client-clock time at which the frame holding session audio ``second`` was sent."""
    index = min(int(second * 1000 // chunk_ms), frames - 1)
    return index * chunk_ms / 1000 / speed


def measure(result: StreamResult, chunk_ms: float, speed: float) -> SessionMetrics:
    frames = max(1, -(-int(result.duration * 1000) // int(chunk_ms)))
    m = SessionMetrics(
        text=result.text,
        close_code=result.close_code,
        timed_out=result.timed_out,
        session=result.session,
        audio_s=result.duration,
    )
    m.errors = [str(e.get("code")) for e in result.errors]
    pending: float | None = None
    onset = 0.0  # session second at which the current utterance started
    timed = speed > 0  # at full speed there is no wall clock to measure against
    for event in result.events:
        kind, t = event.get("type"), event.get("t")
        if t is None or not timed and kind != "final":
            continue
        if kind == "speech_started":
            onset = float(event["at"])
            pending = sent_at(onset, chunk_ms, speed, frames)
            m.utterances += 1
        elif kind == "partial" and pending is not None and float(event["end"]) > onset:
            # (a partial ending before the onset is the previous utterance's last one)
            m.first_partials.append(t - pending)
            pending = None
        elif kind == "final":
            if timed and not event.get("recovered"):
                m.finals.append(t - sent_at(float(event["end"]), chunk_ms, speed, frames))
            m.final_seqs.append((int(event["seq"]), str(event["text"])))
            if float(event["end"]) > onset:  # not the previous utterance's, decoded after this onset
                pending = None  # an utterance that ended before any partial has no first-partial latency
        elif kind == "status":
            m.lag.append((t, float(event["lag_ms"])))
    return m


async def stream(
    server: Server,
    pcm: bytes,
    *,
    speed: float = 1.0,
    chunk_ms: float = 250,
    title: str = "bench",
    on_event: Callable[[dict[str, Any]], None] | None = None,
    stop_timeout: float = 60.0,
    token: str | None = None,
    fmt: AudioFormat = "pcm_s16le",
    webm: bytes | None = None,
) -> SessionMetrics:
    """Stream ``pcm`` through one session of ``server`` (no resume: a drop is an error here), as
    pcm_s16le or encoded to WebM/Opus (``fmt="webm"``: the browser's path, cut at even byte
    offsets; the first piece also holds the header, so every piece's audio leaves about 0.1 s
    later than the time it is counted from). ``webm``: that encoding, made once by the caller."""
    audio = (webm or await encode_webm(pcm)) if fmt == "webm" else pcm
    try:
        result = await stream_audio(
            server.url,
            audio,
            len(pcm) / BYTES_PER_SECOND,
            token=token or server.token,
            fmt=fmt,
            speed=speed,
            chunk_ms=chunk_ms,
            title=title,
            on_event=on_event,
            stop_timeout=stop_timeout,
            retries=0,
        )
    except (OSError, ValueError) as exc:  # refused, no ready in time, bad frame size
        return SessionMetrics(errors=[f"{type(exc).__name__}: {exc}"], audio_s=len(pcm) / BYTES_PER_SECOND)
    except Exception as exc:  # websockets' InvalidStatus/InvalidHandshake (HTTP 403, 500 ...)
        return SessionMetrics(errors=[f"{type(exc).__name__}: {exc}"], audio_s=len(pcm) / BYTES_PER_SECOND)
    return measure(result, chunk_ms, speed)


async def warm_up(server: Server) -> None:
    """One short session at full speed, so loading the weights is not in any measurement."""
    m = await stream(server, read_pcm(speech_clips()[0])[: 3 * BYTES_PER_SECOND], speed=0, stop_timeout=60)
    if m.errors or m.close_code not in (None, 1000):
        raise SystemExit(f"warm-up session failed: {m.errors or m.close_code}\n{server.log_tail()}")


def word_error_counts(pairs: list[tuple[str, str]]) -> dict[str, int]:
    """The runs of wrong words over (reference, text) pairs, most frequent first: what a WER is made
    of, so that two runs or two systems can be compared word by word."""
    counts = collections.Counter(e for ref, text in pairs if ref.strip() for e in word_errors(ref, text))
    return dict(counts.most_common())


def lost_finals(site: Site, sessions: list[SessionMetrics]) -> int:
    """Finals a client received that are not in the database (DESIGN §6: nothing lost)."""
    lost = 0
    for m in sessions:
        if m.session:
            stored = set(site.segments(m.session))
            lost += sum(1 for f in m.final_seqs if f not in stored)
    return lost


def emit(result: dict[str, Any]) -> None:
    """The one JSON line on stdout."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Abort (SIGALRM → SystemExit, so the servers are stopped) when a run exceeds ``seconds``."""

    def expired(signum: int, frame: Any) -> None:
        raise SystemExit(f"{what}: no result after {seconds:.0f} s; giving up")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(max(1, int(seconds)))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
