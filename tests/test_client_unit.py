"""Unit tests of the reference client, ``transcribe.client``.

Encoding runs the real ffmpeg on real speech. Streaming runs against a small fake ``stt.v1`` server
(``FakeServer``): a boundary double for the client's side of the protocol, not for the product's
consumer, which is tested against the real server elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from transcribe.audio.ffmpeg import find_ffmpeg
from transcribe.client import (
    RETRYABLE_CLOSE_CODES,
    ReconnectAttempt,
    RetryPolicy,
    StreamResult,
    encode_audio,
    is_retryable,
    iter_chunks,
    main,
    stream_audio,
    stream_file,
)
from transcribe.exceptions import DecodeError

REPO_ROOT = Path(__file__).resolve().parent.parent
EBML_MAGIC = b"\x1a\x45\xdf\xa3"
SHORT_CLIP = "librispeech_61-70968-0002.wav"  # 3.0 s
# How the server's streaming decoder reads WebM: the format named before the input, PCM out as it comes.
FFMPEG_WEBM_TO_PCM = (
    find_ffmpeg(), "-hide_banner", "-loglevel", "error",
    "-f", "webm", "-i", "pipe:0", "-f", "s16le", "-ac", "1", "-ar", "16000", "pipe:1",
)  # fmt: skip


def wav_frames(path: Path) -> int:
    with wave.open(str(path)) as w:
        return int(w.getnframes())


@dataclass
class FakeServer:
    """A minimal stt.v1 server that records what the client sent.

    Like Channels' AllowedHostsOriginValidator it answers HTTP 403 to a handshake whose Origin is not
    ``allowed_origin`` (by default, the server's own http://host:port). It answers ``ready`` to a valid
    ``start``, a ``partial`` after the first audio, then ``final`` and ``closed`` after ``stop`` and
    closes with 1000; or, with ``close_with``, closes with that code once ``close_after_bytes`` arrived
    (a client that comes back to resume after that gets ``ready`` and ``closed`` at once).
    """

    allowed_origin: str | None = None
    close_with: int | None = None
    close_after_bytes: int = 0
    port: int = 0
    starts: list[dict[str, Any]] = field(default_factory=list)
    headers: Headers | None = None
    start: dict[str, Any] | None = None
    frames: list[bytes] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    stopped: bool = False

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/transcribe/"

    @property
    def audio(self) -> bytes:
        return b"".join(self.frames)

    def check_origin(self, connection: ServerConnection, request: Request) -> Response | None:
        expected = self.allowed_origin or f"http://127.0.0.1:{self.port}"
        if request.headers.get("Origin") != expected:
            return connection.respond(HTTPStatus.FORBIDDEN, "Origin not allowed\n")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        self.headers = ws.request.headers if ws.request else None
        start = json.loads(await ws.recv())
        self.starts.append(start)
        if start.get("type") != "start" or start.get("sample_rate") != 16000:
            await ws.close(4400, "start must come first")
            return
        if start.get("session"):  # a client resuming after close_with: end the session at once
            await ws.send(json.dumps({"type": "ready", "session": "s-1", "resumed": True, "finals": [],
                                      "offset": len(self.audio) / 32000}))  # fmt: skip
            await ws.send(json.dumps({"type": "closed", "session": "s-1", "text": "", "duration": 0}))
            await ws.close(1000)
            return
        self.start = start
        await ws.send(json.dumps({"type": "ready", "session": "s-1", "resumed": False, "finals": [], "offset": 0,
                                  "limits": {"max_frame_bytes": 1 << 20}}))  # fmt: skip
        async for message in ws:
            if isinstance(message, bytes):
                self.frames.append(message)
                self.arrivals.append(time.monotonic())
                if len(self.frames) == 1:
                    await ws.send(json.dumps({"type": "partial", "text": "and so", "stable": "", "unstable": "and so",
                                              "start": 0.0, "end": 0.25}))  # fmt: skip
                if self.close_with and len(self.audio) >= self.close_after_bytes:
                    await ws.close(self.close_with, "fake server says no")
                    return
            elif json.loads(message).get("type") == "stop":
                self.stopped = True
                break
        seconds = len(self.audio) / 32000 if start["format"] == "pcm_s16le" else 1.0
        await ws.send(json.dumps({"type": "final", "id": 1, "seq": 0, "text": " And so, my fellow Americans.",
                                  "start": 0.0, "end": seconds}))  # fmt: skip
        await ws.send(json.dumps({"type": "final", "id": 2, "seq": 1, "text": " Ask not.", "start": seconds,
                                  "end": seconds}))  # fmt: skip
        await ws.send(json.dumps({"type": "closed", "session": "s-1", "text": "done", "duration": seconds}))
        await ws.close(1000)


async def start_server(fake: FakeServer) -> Server:
    server = await serve(fake.handler, "127.0.0.1", 0, process_request=fake.check_origin, compression=None)
    fake.port = server.sockets[0].getsockname()[1]
    return server


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    """A well-behaved fake server on a free port, shut down after the test."""
    fake = FakeServer()
    server = await start_server(fake)
    yield fake
    server.close()
    await server.wait_closed()


async def run_cli(*args: str) -> tuple[int, list[dict[str, Any]], str]:
    """Run ``python -m transcribe.client`` as a user would, without blocking the fake server's loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "transcribe.client", *args,
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, [json.loads(line) for line in out.decode().splitlines()], err.decode()


# --- encoding ---------------------------------------------------------------------------------


async def test_encode_pcm_is_16k_mono_s16le_of_the_whole_clip(audio_dir: Path) -> None:
    path = audio_dir / "jfk.wav"
    pcm, duration = await encode_audio(path, "pcm_s16le")
    assert abs(len(pcm) - 2 * 16000 * duration) <= 2  # within one frame
    assert abs(len(pcm) // 2 - wav_frames(path)) <= 1
    assert duration == pytest.approx(11.0, abs=0.05)
    assert np.frombuffer(pcm, "<i2").std() > 100  # speech, not silence


async def test_encode_webm_is_opus_that_decodes_back_to_the_same_audio(audio_dir: Path) -> None:
    path = audio_dir / "jfk.wav"
    webm, duration = await encode_audio(path, "webm")
    assert webm[:4] == EBML_MAGIC
    assert b"webm" in webm[:64] and b"A_OPUS" in webm[:512]
    assert len(webm) < 0.2 * 2 * 16000 * duration  # compressed: 32 kb/s against 256 kb/s of PCM

    proc = await asyncio.create_subprocess_exec(
        *FFMPEG_WEBM_TO_PCM, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    decoded, _ = await proc.communicate(webm)
    assert proc.returncode == 0
    assert len(decoded) / 32000 == pytest.approx(duration, abs=0.05)
    original, _ = await encode_audio(path, "pcm_s16le")
    a = np.frombuffer(original, "<i2").astype(np.float32)
    b = np.frombuffer(decoded, "<i2").astype(np.float32)
    n = min(len(a), len(b))
    assert np.corrcoef(a[:n], b[:n])[0, 1] > 0.8  # same audio, sample-aligned (Opus pre-skip removed)


async def test_encode_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await encode_audio(tmp_path / "missing.wav")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(os.urandom(4000))
    with pytest.raises(DecodeError, match="ffmpeg could not decode"):
        await encode_audio(garbage, "webm")
    with pytest.raises(ValueError, match="Unsupported format"):
        await encode_audio(garbage, "mp3")  # type: ignore[arg-type]


def test_pcm_chunks_carry_exactly_chunk_ms() -> None:
    data = bytes(32000 * 3 + 1000)
    chunks = list(iter_chunks(data, "pcm_s16le", len(data) / 32000, 250))
    assert [len(c) for c in chunks[:-1]] == [8000] * 12
    assert len(chunks[-1]) == 1000
    assert b"".join(chunks) == data


async def test_webm_chunks_carry_about_chunk_ms_and_decode_as_they_arrive(audio_dir: Path) -> None:
    """Each piece, fed to a streaming ffmpeg as the server's decoder does, yields about its audio."""
    webm, duration = await encode_audio(audio_dir / "jfk.wav", "webm")
    pieces = list(iter_chunks(webm, "webm", duration, 250))
    assert b"".join(pieces) == webm
    assert len(pieces) == pytest.approx(duration / 0.25, abs=1)

    proc = await asyncio.create_subprocess_exec(
        *FFMPEG_WEBM_TO_PCM, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin and proc.stdout
    decoded = 0
    behind: list[float] = []
    for i, piece in enumerate(pieces[:-1]):
        proc.stdin.write(piece)
        await proc.stdin.drain()
        wanted = (i + 1) * 0.25 - 0.5  # allow half a second of codec and container delay
        deadline = time.monotonic() + 5
        while decoded / 32000 < wanted and time.monotonic() < deadline:
            decoded += len(await asyncio.wait_for(proc.stdout.read(65536), 5))
        behind.append((i + 1) * 0.25 - decoded / 32000)
    proc.stdin.write(pieces[-1])
    proc.stdin.close()
    decoded += len(await proc.stdout.read())
    assert await proc.wait() == 0
    assert max(behind) <= 0.5
    assert decoded / 32000 == pytest.approx(duration, abs=0.05)


# --- streaming --------------------------------------------------------------------------------


async def test_stream_file_pcm_end_to_end(fake: FakeServer, audio_dir: Path) -> None:
    path = audio_dir / SHORT_CLIP
    seen: list[dict[str, Any]] = []
    result = await stream_file(
        fake.url, path, token="tok123", session_cookie="abc", speed=0, language="en", on_event=seen.append
    )

    assert fake.headers is not None
    assert fake.headers["Authorization"] == "Token tok123"
    assert fake.headers["Cookie"] == "sessionid=abc"
    assert fake.start == {"type": "start", "format": "pcm_s16le", "sample_rate": 16000, "language": "en",
                          "title": SHORT_CLIP}  # fmt: skip
    pcm, duration = await encode_audio(path, "pcm_s16le")
    assert fake.audio == pcm
    assert {len(f) for f in fake.frames[:-1]} == {8000}
    assert fake.stopped

    assert [e["type"] for e in result.events] == ["ready", "partial", "final", "final", "closed"]
    assert seen == result.events
    assert result.events[0]["t"] is None  # before the first audio frame
    ts = [e["t"] for e in result.events[1:]]
    assert all(isinstance(t, float) and t >= 0 for t in ts) and ts == sorted(ts)
    assert result.text == "And so, my fellow Americans. Ask not."
    assert len(result.finals) == 2
    assert result.session == "s-1"
    assert result.close_code == 1000 and result.ok and result.closed
    assert result.duration == pytest.approx(duration) and result.bytes_sent == len(pcm)


async def test_stream_file_webm_sends_the_container_in_timed_pieces(
    fake: FakeServer, audio_dir: Path
) -> None:
    result = await stream_file(fake.url, audio_dir / SHORT_CLIP, fmt="webm", speed=0, chunk_ms=500, title="T")
    webm, duration = await encode_audio(audio_dir / SHORT_CLIP, "webm")
    assert fake.start is not None and fake.start["format"] == "webm" and fake.start["title"] == "T"
    assert fake.frames[0][:4] == EBML_MAGIC
    assert fake.audio == webm
    assert len(fake.frames) == pytest.approx(duration / 0.5, abs=1)
    assert result.ok and len(result.finals) == 2


async def test_audio_is_paced_against_the_clock(fake: FakeServer, audio_dir: Path) -> None:
    pcm, duration = await encode_audio(audio_dir / SHORT_CLIP, "pcm_s16le")
    result = await stream_audio(fake.url, pcm, duration, speed=4, chunk_ms=100)
    interval = 0.1 / 4
    offsets = [t - fake.arrivals[0] for t in fake.arrivals]
    assert len(offsets) == 30
    # Never early, never drifting: frame i goes out at i * interval after the first, give or take jitter.
    for i, offset in enumerate(offsets):
        assert i * interval - 0.01 <= offset <= i * interval + 0.15, (i, offset)
    assert result.elapsed == pytest.approx(duration / 4, abs=0.3)
    assert result.final_latencies()  # speed > 0: latency of each final, t - end / speed


async def test_language_none_and_no_credentials(fake: FakeServer, audio_dir: Path) -> None:
    await stream_file(fake.url, audio_dir / SHORT_CLIP, speed=0, language=None)
    assert fake.start is not None and fake.start["language"] is None
    assert fake.headers is not None and "Authorization" not in fake.headers and "Cookie" not in fake.headers


async def test_server_close_code_is_reported_and_sending_stops(audio_dir: Path) -> None:
    fake = FakeServer(close_with=4429, close_after_bytes=16000)
    server = await start_server(fake)
    try:
        result = await stream_file(fake.url, audio_dir / "jfk.wav", speed=1)  # would take 11 s if not stopped
    finally:
        server.close()
        await server.wait_closed()
    assert isinstance(result, StreamResult)
    assert result.close_code == 4429 and result.close_reason == "fake server says no"
    assert not result.ok and not result.closed
    assert result.elapsed < 2  # the sender was cancelled instead of pacing into a dead socket
    assert fake.stopped is False


# --- command line -----------------------------------------------------------------------------


async def test_cli_prints_events_as_json_lines_and_exits_0(fake: FakeServer, audio_dir: Path) -> None:
    code, lines, err = await run_cli(fake.url, str(audio_dir / SHORT_CLIP), "--speed", "0", "--token", "t")
    assert code == 0, err
    assert [e["type"] for e in lines] == ["ready", "partial", "final", "final", "closed"]
    assert all("t" in e for e in lines)
    assert "finals:   2" in err and "And so, my fellow Americans. Ask not." in err

    code, lines, err = await run_cli(fake.url, str(audio_dir / SHORT_CLIP), "--speed", "0", "--quiet",
                                     "--format", "webm", "--language", "auto")  # fmt: skip
    assert code == 0 and err == ""
    assert fake.start is not None and fake.start["format"] == "webm" and fake.start["language"] is None


async def test_cli_abnormal_close_prints_disconnected_and_exits_2(audio_dir: Path) -> None:
    fake = FakeServer(close_with=4500, close_after_bytes=1)
    server = await start_server(fake)
    try:
        code, lines, _ = await run_cli(fake.url, str(audio_dir / SHORT_CLIP), "--speed", "0", "--quiet")
    finally:
        server.close()
        await server.wait_closed()
    assert code == 2
    assert lines[-1] == {"type": "disconnected", "code": 4500, "reason": "fake server says no"}


async def test_cli_http_rejection_exits_2(audio_dir: Path) -> None:
    fake = FakeServer(allowed_origin="http://elsewhere.example")
    server = await start_server(fake)
    try:
        code, lines, err = await run_cli(fake.url, str(audio_dir / SHORT_CLIP), "--quiet")
    finally:
        server.close()
        await server.wait_closed()
    assert code == 2 and lines == []
    assert "HTTP 403" in err


def test_cli_connection_refused_exits_2(audio_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main([f"ws://127.0.0.1:{port}/ws/transcribe/", str(audio_dir / SHORT_CLIP), "--quiet"]) == 2
    assert "could not stream" in capsys.readouterr().err


def test_cli_missing_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ws://127.0.0.1:9/ws/transcribe/", str(tmp_path / "nope.wav")]) == 1
    assert "No such audio file" in capsys.readouterr().err


# --- resume -----------------------------------------------------------------------------------

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen"]  # fmt: skip


@dataclass
class ResumingServer:
    """A stt.v1 server whose connections die without a close frame, as a crashed server's do, and that
    resumes sessions the way the real one does after a crash.

    Every whole second of session audio (four 250 ms frames) becomes a final, stored then sent; the text
    is the second's number in words. Connection ``n`` (0-based) dies after ``drop_after[n]`` frames when
    that is not None; with ``store_on_drop`` the second being received is stored as a final first but
    never sent (a crash between storing and sending). A resumed ``ready`` carries every stored final
    and the offset they cover, its end. ``refuse`` reconnects are answered with HTTP 503 (a server still
    restarting behind a proxy). ``resend_last`` makes a resumed connection send the last stored final
    again as an event, which the client must drop.
    """

    drop_after: list[int | None] = field(default_factory=list)
    store_on_drop: bool = True
    refuse: int = 0
    resend_last: bool = False
    port: int = 0
    handshakes: list[float] = field(default_factory=list)
    starts: list[dict[str, Any]] = field(default_factory=list)
    audio: list[bytes] = field(default_factory=list)  # what each connection received
    stored: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/transcribe/"

    def check(self, connection: ServerConnection, request: Request) -> Response | None:
        self.handshakes.append(time.monotonic())
        if self.starts and self.refuse:
            self.refuse -= 1
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "restarting\n")
        return None

    def store(self, start: float, end: float) -> dict[str, Any]:
        seq = len(self.stored) + 1
        final = {"id": 100 + seq, "seq": seq, "text": f" {WORDS[seq]}", "start": start, "end": end}
        self.stored.append(final)
        return final

    async def handler(self, ws: ServerConnection) -> None:
        index = len(self.starts)
        start = json.loads(await ws.recv())
        self.starts.append(start)
        self.audio.append(b"")
        offset = self.stored[-1]["end"] if self.stored else 0.0
        await ws.send(json.dumps({"type": "ready", "session": "s-1", "resumed": index > 0,
                                  "finals": self.stored, "offset": offset}))  # fmt: skip
        if index and self.resend_last and self.stored:
            await ws.send(json.dumps({"type": "final", **self.stored[-1]}))
        drop = self.drop_after[index] if index < len(self.drop_after) else None
        frames = 0
        async for message in ws:
            if isinstance(message, str):
                if json.loads(message).get("type") == "stop":
                    break
                continue
            frames += 1
            self.audio[index] += message
            now = offset + frames * 0.25
            if drop is not None and frames >= drop:
                if self.store_on_drop and now > (self.stored[-1]["end"] if self.stored else 0.0):
                    self.store(float(int(now - 0.25)), float(int(now - 0.25) + 1))
                ws.transport.abort()  # no close frame, no FIN handshake: the client sees 1006
                return
            if frames % 4 == 0 and now == int(now):
                await ws.send(json.dumps({"type": "final", **self.store(now - 1, now)}))
        end = offset + frames * 0.25
        if end > offset and end != int(end):
            await ws.send(json.dumps({"type": "final", **self.store(float(int(end)), end)}))
        text = " ".join(f["text"].strip() for f in self.stored)
        await ws.send(json.dumps({"type": "closed", "session": "s-1", "text": text, "duration": end}))
        await ws.close(1000)


@pytest.fixture
async def resuming() -> AsyncIterator[ResumingServer]:
    """A resuming fake server on a free port (configure it before the client connects)."""
    fake = ResumingServer()
    server = await serve(fake.handler, "127.0.0.1", 0, process_request=fake.check, compression=None)
    fake.port = server.sockets[0].getsockname()[1]
    yield fake
    server.close()
    await server.wait_closed()


def test_backoff_doubles_up_to_the_cap_less_some_jitter() -> None:
    policy = RetryPolicy(retries=6, backoff=0.5, max_backoff=8.0, jitter=0)
    assert [policy.delay(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 8, 8]
    assert RetryPolicy(jitter=0).delay(10_000) == 8.0  # no overflow on absurd attempt numbers
    jittered = RetryPolicy(backoff=1.0, max_backoff=4.0, jitter=0.1)
    for n, full in [(1, 1.0), (2, 2.0), (3, 4.0), (9, 4.0)]:
        delays = {jittered.delay(n) for _ in range(50)}
        assert all(0.9 * full <= d <= full for d in delays) and len(delays) > 1
    with pytest.raises(ValueError):
        RetryPolicy(retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(jitter=1.0)
    with pytest.raises(ValueError):
        policy.delay(0)


def test_only_drops_are_retried_never_the_servers_decisions() -> None:
    # Lost connection (no close frame, keepalive timeout), going away, server error, restart, try
    # again later, bad gateway: resumed.
    assert {1001, 1006, 1011, 1012, 1013, 1014} == RETRYABLE_CLOSE_CODES
    assert all(is_retryable(code) for code in RETRYABLE_CLOSE_CODES)
    # Normal end, protocol errors, and every stt.v1 close code: final.
    for code in (None, 1000, 1002, 1003, 1007, 1008, 1009, 4400, 4401, 4403, 4408, 4413, 4429, 4500):
        assert not is_retryable(code), code


@pytest.mark.parametrize("code", [4400, 4401, 4403, 4408, 4413, 4429, 4500])
async def test_a_deliberate_close_is_not_retried(audio_dir: Path, code: int) -> None:
    fake = FakeServer(close_with=code, close_after_bytes=8000)
    server = await start_server(fake)
    attempts: list[ReconnectAttempt] = []
    try:
        result = await stream_file(fake.url, audio_dir / SHORT_CLIP, speed=0, on_reconnect=attempts.append)
    finally:
        server.close()
        await server.wait_closed()
    assert len(fake.starts) == 1 and attempts == []
    assert result.close_code == code and result.reconnects == 0 and not result.ok


@pytest.mark.parametrize("code", [1001, 1011, 1012, 1013])
async def test_a_close_that_means_going_away_is_resumed(audio_dir: Path, code: int) -> None:
    fake = FakeServer(close_with=code, close_after_bytes=8000)
    server = await start_server(fake)
    try:
        result = await stream_file(fake.url, audio_dir / SHORT_CLIP, speed=0, backoff=0.01)
    finally:
        server.close()
        await server.wait_closed()
    assert len(fake.starts) == 2 and fake.starts[1]["session"] == "s-1"
    assert result.ok and result.resumes == 1 and result.close_code == 1000


async def test_a_crashed_connection_is_resumed_and_each_final_kept_once(
    resuming: ResumingServer, audio_dir: Path
) -> None:
    """Dropped at 2 s, after final 1 was sent and final 2 only stored: final 2 comes back from
    ``ready``, audio is sent again from its end, and final 3 follows; a re-sent duplicate is dropped."""
    resuming.drop_after = [8]
    resuming.resend_last = True
    pcm, duration = await encode_audio(audio_dir / SHORT_CLIP, "pcm_s16le")
    attempts: list[ReconnectAttempt] = []
    seen: list[dict[str, Any]] = []
    result = await stream_audio(
        resuming.url,
        pcm,
        duration,
        speed=0,
        title="T",
        backoff=0.05,
        on_event=seen.append,
        on_reconnect=attempts.append,
    )

    assert result.ok, result.events
    assert [f["seq"] for f in result.finals] == [1, 2, 3]
    assert result.text == "one two three"
    assert [bool(f.get("recovered")) for f in result.finals] == [False, True, False]
    assert result.finals[1] == {
        **resuming.stored[1],
        "type": "final",
        "recovered": True,
        "t": result.finals[1]["t"],
    }
    assert seen == result.events
    assert [e["type"] for e in result.events if e["type"] in ("ready", "closed")] == [
        "ready",
        "ready",
        "closed",
    ]

    first, second = resuming.starts
    assert first == {
        "type": "start",
        "format": "pcm_s16le",
        "sample_rate": 16000,
        "language": "en",
        "title": "T",
    }
    assert second == {**first, "session": "s-1"}
    assert resuming.audio[0] == pcm[: 8 * 8000]
    assert resuming.audio[1] == pcm[2 * 32000 :]  # from the offset of the resumed ready on
    # At speed 0 everything may be in the dead socket's buffers already; what is after 2 s goes again.
    assert 8 * 8000 + len(pcm) - 2 * 32000 <= result.bytes_sent <= 2 * len(pcm) - 2 * 32000
    assert result.resumes == result.reconnects == 1
    assert [(a.session, a.attempt, a.retries) for a in attempts] == [("s-1", 1, 5)]
    assert attempts[0].reason == "connection lost (no close frame)"
    assert 0.045 <= attempts[0].delay <= 0.05


async def test_reconnects_back_off_exponentially(resuming: ResumingServer, audio_dir: Path) -> None:
    resuming.drop_after = [6]
    resuming.refuse = 3  # a server still restarting
    attempts: list[ReconnectAttempt] = []
    result = await stream_file(
        resuming.url,
        audio_dir / SHORT_CLIP,
        speed=0,
        backoff=0.1,
        max_backoff=0.3,
        on_reconnect=attempts.append,
    )
    assert result.ok and result.resumes == 1 and result.reconnects == 4
    assert [a.attempt for a in attempts] == [1, 2, 3, 4]
    wanted = [0.1, 0.2, 0.3, 0.3]  # doubling, capped at max_backoff
    assert all(0.9 * d <= a.delay <= d for a, d in zip(attempts, wanted, strict=True)), attempts
    assert attempts[0].reason == "connection lost (no close frame)"
    assert all("HTTP 503" in a.reason for a in attempts[1:])
    # The waits really happen between the handshakes (the first reconnect's is after the drop).
    gaps = [b - a for a, b in zip(resuming.handshakes[1:], resuming.handshakes[2:], strict=False)]
    assert all(g >= 0.85 * d for g, d in zip(gaps, wanted[1:], strict=True)), gaps
    assert [f["seq"] for f in result.finals] == [1, 2, 3]


async def test_a_resume_that_gets_nowhere_counts_against_retries(
    resuming: ResumingServer, audio_dir: Path
) -> None:
    """A server that dies on the same audio every time is given up on after ``retries``."""
    resuming.drop_after = [2] * 10
    resuming.store_on_drop = False
    attempts: list[ReconnectAttempt] = []
    result = await stream_file(
        resuming.url, audio_dir / SHORT_CLIP, speed=0, retries=3, backoff=0.01, on_reconnect=attempts.append
    )
    assert len(resuming.starts) == 4 and [a.attempt for a in attempts] == [1, 2, 3]
    assert result.resumes == 3 and result.reconnects == 3
    assert result.close_code == 1006 and not result.ok and result.finals == []


async def test_progress_starts_the_count_again(resuming: ResumingServer, audio_dir: Path) -> None:
    """Each resume that moves the session on is attempt 1 of the next drop, however many drops."""
    resuming.drop_after = [5, 5, 5]  # at 1.25 s, 3.25 s and 5.25 s of session audio
    attempts: list[ReconnectAttempt] = []
    result = await stream_file(
        resuming.url, audio_dir / "jfk.wav", speed=0, retries=1, backoff=0.01, on_reconnect=attempts.append
    )
    assert result.ok and result.resumes == 3 and [a.attempt for a in attempts] == [1, 1, 1]
    assert [f["seq"] for f in result.finals] == list(range(1, 12))
    assert result.text == " ".join(WORDS[1:12])


async def test_retries_0_turns_resuming_off(resuming: ResumingServer, audio_dir: Path) -> None:
    resuming.drop_after = [4]
    result = await stream_file(resuming.url, audio_dir / SHORT_CLIP, speed=0, retries=0)
    assert len(resuming.starts) == 1 and result.reconnects == 0
    assert result.close_code == 1006 and not result.ok


async def test_webm_is_encoded_again_from_the_offset(resuming: ResumingServer, audio_dir: Path) -> None:
    resuming.drop_after = [8]
    pcm, duration = await encode_audio(audio_dir / SHORT_CLIP, "pcm_s16le")
    result = await stream_file(resuming.url, audio_dir / SHORT_CLIP, fmt="webm", speed=0, backoff=0.01)
    assert result.ok and result.resumes == 1
    assert resuming.starts[1]["format"] == "webm"
    resent = resuming.audio[1]
    assert resent[:4] == EBML_MAGIC  # a new stream, with its own header
    proc = await asyncio.create_subprocess_exec(
        *FFMPEG_WEBM_TO_PCM, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    decoded, _ = await proc.communicate(resent)
    assert proc.returncode == 0
    assert len(decoded) / 32000 == pytest.approx(duration - 2.0, abs=0.05)
    a = np.frombuffer(pcm[2 * 32000 :], "<i2").astype(np.float32)
    b = np.frombuffer(decoded, "<i2").astype(np.float32)
    n = min(len(a), len(b))
    assert np.corrcoef(a[:n], b[:n])[0, 1] > 0.8  # the audio from 2.0 s on, sample-aligned


async def test_resent_audio_catches_up_then_keeps_the_original_pace(
    resuming: ResumingServer, audio_dir: Path
) -> None:
    """After a resume, audio a live source would already have is sent at once; the rest at its time."""
    resuming.drop_after = [8]  # at 2 s of audio, 0.44 s into the session
    pcm, duration = await encode_audio(audio_dir / "jfk.wav", "pcm_s16le")
    result = await stream_audio(resuming.url, pcm, duration, speed=4, chunk_ms=250, backoff=0.5, retries=1)
    assert result.ok and result.resumes == 1
    # Resumed at about 0.95 s: audio up to 3.8 s is sent at once, the rest at 4x real time, so the last
    # frame leaves when it would have without the drop ((11 - 0.25) / 4 = 2.69 s), not 0.5 s later, and
    # not at once.
    assert result.elapsed == pytest.approx((duration - 0.25) / 4, abs=0.15)


async def test_cli_reports_resume_progress_and_prints_each_final_once(
    resuming: ResumingServer, audio_dir: Path
) -> None:
    resuming.drop_after = [8]
    code, lines, err = await run_cli(
        resuming.url, str(audio_dir / SHORT_CLIP), "--speed", "0", "--retries", "3", "--backoff", "0.05"
    )
    assert code == 0, err
    finals = [e for e in lines if e["type"] == "final"]
    assert [f["seq"] for f in finals] == [1, 2, 3] and finals[1]["recovered"] is True
    assert "connection lost (no close frame); resuming session s-1 in 0.1 s (attempt 1 of 3)" in err or (
        "connection lost (no close frame); resuming session s-1 in 0.0 s (attempt 1 of 3)" in err
    )
    assert "resumed session s-1 at 2.0 s of audio (2 finals stored)" in err
    assert "resumed:  1 time(s), 1 attempt(s) to reconnect" in err


async def test_cli_gives_up_after_retries_and_exits_2(resuming: ResumingServer, audio_dir: Path) -> None:
    resuming.drop_after = [2] * 5
    resuming.store_on_drop = False
    code, lines, err = await run_cli(
        resuming.url,
        str(audio_dir / SHORT_CLIP),
        "--speed",
        "0",
        "--retries",
        "2",
        "--backoff",
        "0",
        "--quiet",
    )
    assert code == 2
    assert lines[-1] == {"type": "disconnected", "code": 1006, "reason": ""}
    assert err.strip() == "error: could not resume session s-1 after 2 attempt(s)"  # --quiet: no progress
