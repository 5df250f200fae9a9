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
from transcribe.client import StreamResult, encode_audio, iter_chunks, main, stream_audio, stream_file
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
    closes with 1000; or, with ``close_with``, closes with that code once ``close_after_bytes`` arrived.
    """

    allowed_origin: str | None = None
    close_with: int | None = None
    close_after_bytes: int = 0
    port: int = 0
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
        if start.get("type") != "start" or start.get("sample_rate") != 16000:
            await ws.close(4400, "start must come first")
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
