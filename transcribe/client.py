"""Reference WebSocket client for the ``stt.v1`` protocol: stream an audio file, print the events.

It is the smallest complete client of ``/ws/transcribe/`` and the one that load tests and benchmarks
drive, so it behaves like a live source: the file is sent at ``--speed`` times real time in frames of
``--chunk-ms`` of audio each, and every server event is printed as one JSON line on stdout with an extra
field ``"t"``, the seconds since the first audio frame went out (``null`` for events before it, such as
``ready``). A human summary goes to stderr unless ``--quiet``.

Usage::

    # raw PCM (what the browser's AudioWorklet sends), in real time, with an API token
    python -m transcribe.client ws://localhost:8000/ws/transcribe/ talk.wav --token 0123abcd

    # WebM/Opus (what MediaRecorder sends), four times real time, as a logged-in browser user
    python -m transcribe.client wss://stt.example.com/ws/transcribe/ talk.mp3 \\
        --session-cookie k2j3h4... --format webm --speed 4

    # as fast as possible, only the finals' text
    python -m transcribe.client ws://localhost:8000/ws/transcribe/ talk.wav --speed 0 --quiet \\
        | jq -r 'select(.type == "final") | .text'

From Python (tests, load benchmarks)::

    result = await stream_file("ws://localhost:8000/ws/transcribe/", "talk.wav", token="0123abcd", speed=0)
    print(result.text, result.close_code)

    # resume a dropped connection up to 3 times in a row, after 0.2 s, 0.4 s, 0.8 s
    result = await stream_file(url, "talk.wav", token="0123abcd", retries=3, backoff=0.2, on_reconnect=print)
    print(result.resumes, [final["seq"] for final in result.finals])  # each final once, in order

    # N concurrent sessions of one file: encode once, stream many times
    audio, duration = await encode_audio("talk.wav", "pcm_s16le")
    results = await asyncio.gather(*(stream_audio(url, audio, duration, token=t) for _ in range(4)))

Resume: when the connection drops mid-stream (no close frame, 1001 going away, 1011, 1012-1014: the
network or a server restart, never a deliberate close such as 4401, 4403, 4413, 4429 or 4400), the
client reconnects after 0.5 s, 1 s, 2 s, ... (``--backoff``, doubling up to ``--max-backoff``), at most
``--retries`` times in a row, and sends ``start`` with the session id of the first ``ready``. The
server's ``ready`` then carries the stored finals and the offset (seconds of session audio) they cover:
finals the client has not seen are recorded as ``final`` events with ``"recovered": true`` (so every
final reaches ``on_event`` and the result exactly once, in ``seq`` order), and the audio is sent again
from that offset on. A file or buffer is its own replay source: PCM is sliced at the offset, WebM is
re-encoded from it, and pacing goes on against the session's original clock (re-sent audio that a live
source would already have captured goes out at once). A resume that brings the session no further
(same offset, no new finals) still counts against ``--retries``, so a server that fails on the same
audio again and again is not retried forever.

Exit status of ``main``: 0 when the server closed normally (1000) or sent ``closed``; 1 when the file could
not be read or encoded; 2 when the connection failed, was refused (e.g. HTTP 403 from the origin
validator), timed out, or the server closed with any other code, or the connection dropped and could
not be resumed (then a ``{"type": "disconnected", "code": N, "reason": "..."}`` line is printed on
stdout first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)

from transcribe.audio.ffmpeg import find_ffmpeg
from transcribe.exceptions import DecodeError

logger = logging.getLogger(__name__)

AudioFormat = Literal["pcm_s16le", "webm"]
FORMATS: tuple[AudioFormat, ...] = ("pcm_s16le", "webm")
SAMPLE_RATE = 16000
PCM_BYTES_PER_SECOND = SAMPLE_RATE * 2  # s16le mono

# Opus at 32 kb/s is about what browsers' MediaRecorder produces for speech. Clusters are capped near
# one chunk (250 ms / 4 KiB; the muxer's default on a pipe is about 1 s), so that, as with MediaRecorder's
# timeslices, nearly every piece holds a cluster start and a decoder that works cluster by cluster never
# waits more than one piece. ffmpeg's own WebM demuxer decodes block by block either way (measured with
# imageio-ffmpeg's ffmpeg 9: at most 0.3 s of sent audio is still undecoded after any piece).
# bitexact drops the random segment UID, so one file always gives the same bytes and runs compare.
WEBM_ENCODE_ARGS: tuple[str, ...] = (
    "-c:a", "libopus", "-b:a", "32k",
    "-cluster_time_limit", "250", "-cluster_size_limit", "4096",
    "-fflags", "+bitexact", "-f", "webm",
)  # fmt: skip

EventCallback = Callable[[dict[str, Any]], None]

# Close codes that mean the connection was lost rather than ended: 1006 is what a client reports when
# no close frame came at all (a crashed server, a cut network, a keepalive ping that timed out), 1001 a
# server going away, 1011 an unexpected server error, 1012-1014 a restart, "try again later" and a
# proxy's bad gateway. Everything else (1000, and the application's 4400, 4401, 4403, 4408, 4413, 4429,
# 4500) is the server's decision, and asking again would get the same answer.
RETRYABLE_CLOSE_CODES = frozenset({1001, 1006, 1011, 1012, 1013, 1014})


def is_retryable(close_code: int | None) -> bool:
    """Whether a connection that closed with ``close_code`` was dropped (worth resuming)."""
    return close_code in RETRYABLE_CLOSE_CODES


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a dropped session is resumed.

    Attempt ``n`` (1-based) waits ``backoff * 2 ** (n - 1)`` seconds, at most ``max_backoff``, less up to
    ``jitter`` of it at random, so that the clients of a restarted server do not all come back in the same
    instant. ``retries`` bounds the attempts in a row; 0 turns resuming off.
    """

    retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 8.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    def delay(self, attempt: int) -> float:
        if attempt < 1:
            raise ValueError("attempts count from 1")
        # min() before the power: 2 ** 2000 as a float would overflow.
        delay = min(self.max_backoff, self.backoff * 2 ** min(attempt - 1, 62))
        return delay * (1 - self.jitter * random.random())  # spreads retries; not a secret


@dataclass(frozen=True)
class ReconnectAttempt:
    """Told to ``on_reconnect`` before each wait: the session is resumed after ``delay`` seconds."""

    session: str
    attempt: int  # 1-based, in a row (a resume that moves the session on starts the count again)
    retries: int
    delay: float
    reason: str  # why the last connection ended or the last attempt failed, for people


ReconnectCallback = Callable[[ReconnectAttempt], None]


@dataclass
class StreamResult:
    """What one streamed session produced, over all of its connections.

    ``events`` holds every server event in arrival order, each with the client-side ``"t"`` field; finals
    that the server stored while the client was away arrive in a resumed ``ready`` and are added as
    ``final`` events with ``"recovered": true``, and a final whose ``seq`` was already seen is dropped, so
    ``finals`` holds each final exactly once, in order. ``close_code`` is None when the socket never closed
    from the server's side (e.g. a timeout); after a drop that could not be resumed it is the drop's code
    (1006 when no close frame came).
    """

    events: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    duration: float = 0.0  # seconds of audio in the source
    elapsed: float = 0.0  # wall seconds from the first audio frame to the end of the session
    bytes_sent: int = 0  # over all connections, audio sent again after a resume included
    speed: float = 1.0
    session: str | None = None  # the server's session id from ``ready``
    timed_out: bool = False
    reconnects: int = 0  # attempts to reconnect after a drop
    resumes: int = 0  # of which were answered with ``ready``

    @property
    def finals(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == "final"]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == "error"]

    @property
    def text(self) -> str:
        """The finals' text joined in order (Whisper segments carry their own leading space)."""
        return " ".join(t for t in (str(e.get("text", "")).strip() for e in self.finals) if t)

    @property
    def closed(self) -> bool:
        """Whether the server ended the session properly: a ``closed`` event, or close code 1000."""
        return any(e.get("type") == "closed" for e in self.events) or self.close_code == 1000

    @property
    def ok(self) -> bool:
        return self.closed and not self.timed_out and self.close_code in (None, 1000)

    def final_latencies(self) -> list[float]:
        """Seconds from the moment each final's last audio was sent to the moment the final arrived.

        Only meaningful for paced streams (speed > 0): audio at session time ``end`` left the client at
        about ``end / speed`` (up to one chunk later), so the latency is ``t - end / speed``. Recovered
        finals are left out: they arrived late because the connection was down.
        """
        if self.speed <= 0:
            return []
        return [
            e["t"] - float(e["end"]) / self.speed
            for e in self.finals
            if e.get("t") is not None and isinstance(e.get("end"), int | float) and not e.get("recovered")
        ]


async def _run_ffmpeg(args: list[str], stdin: bytes | None, what: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        find_ffmpeg(),
        "-hide_banner", "-nostats", "-loglevel", "error", *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    # communicate() writes stdin and drains stdout/stderr together, so a full pipe cannot deadlock us.
    out, err = await proc.communicate(stdin)
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip().splitlines()[-3:]
        raise DecodeError(f"ffmpeg could not {what} (exit {proc.returncode}): {' | '.join(message)}")
    return out


def _ffmpeg_input(path: str | Path) -> str:
    source = Path(path)
    if not source.is_file():  # a clear message beats ffmpeg's "No such file or directory" three lines down
        raise FileNotFoundError(f"No such audio file: {source}")
    # "file:" keeps ffmpeg from reading a name such as "-x.wav" or "a:b.wav" as an option or protocol.
    return f"file:{source.resolve()}"


async def encode_audio(path: str | Path, fmt: AudioFormat = "pcm_s16le") -> tuple[bytes, float]:
    """Decode any audio file ffmpeg can read, and return ``(bytes in fmt, duration in seconds)``.

    Everything goes through pipes of asyncio subprocesses; nothing is written to disk. The file is
    first decoded to 16 kHz mono s16le, which gives the exact duration; for ``webm`` that PCM is then
    piped into a second ffmpeg that encodes WebM/Opus, so both formats carry exactly the same audio.
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unsupported format {fmt!r}; choose one of {', '.join(FORMATS)}")
    source = _ffmpeg_input(path)
    pcm = await _run_ffmpeg(
        ["-i", source, "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "s16le", "pipe:1"],
        None,
        f"decode {path}",
    )
    if not pcm:
        raise DecodeError(f"{path} holds no audio")
    duration = len(pcm) / PCM_BYTES_PER_SECOND
    if fmt == "pcm_s16le":
        return pcm, duration
    return await encode_webm(pcm, f"encode {path} to WebM/Opus"), duration


async def encode_webm(pcm: bytes, what: str = "encode the audio to WebM/Opus") -> bytes:
    """16 kHz mono s16le to WebM/Opus, as a browser's MediaRecorder sends it (``what`` names the
    step in a DecodeError)."""
    return await _run_ffmpeg(
        ["-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "1", "-i", "pipe:0", *WEBM_ENCODE_ARGS, "pipe:1"],
        pcm,
        what,
    )


def iter_chunks(data: bytes, fmt: AudioFormat, duration: float, chunk_ms: float) -> Iterator[bytes]:
    """Split encoded audio into frames that each carry about ``chunk_ms`` of audio.

    PCM frames are exact (and always whole samples). A compressed stream has no fixed byte rate, so
    WebM is cut at ``total_bytes / duration`` bytes per second, the way MediaRecorder's timeslices
    cut it: at arbitrary byte offsets, the first piece also carrying the header.
    """
    if chunk_ms <= 0:
        raise ValueError("chunk_ms must be positive")
    if fmt == "pcm_s16le":
        size = max(2, int(PCM_BYTES_PER_SECOND * chunk_ms / 1000) // 2 * 2)  # whole samples
    else:
        bytes_per_second = len(data) / duration if duration > 0 else len(data)
        size = max(1, round(bytes_per_second * chunk_ms / 1000))
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _origin_for(url: str) -> str:
    """``ws://host:port/path`` → ``http://host:port``, the Origin a browser on that site would send."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise InvalidURI(url, "expected a ws:// or wss:// URL with a host")
    netloc = parts.netloc.rpartition("@")[2]  # never leak user:password into a header
    return f"{'https' if parts.scheme == 'wss' else 'http'}://{netloc}"


def _headers(token: str | None, session_cookie: str | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if token:
        headers["Authorization"] = f"Token {token}"
    if session_cookie:
        # A bare value is Django's default cookie name; "name=value" allows a custom SESSION_COOKIE_NAME.
        headers["Cookie"] = session_cookie if "=" in session_cookie else f"sessionid={session_cookie}"
    return headers


class _Clock:
    """The session's time origin: the monotonic instant the first audio frame was sent."""

    def __init__(self) -> None:
        self.t0: float | None = None

    def start(self) -> float:
        self.t0 = time.monotonic()
        return self.t0

    def since_start(self) -> float | None:
        return None if self.t0 is None else round(time.monotonic() - self.t0, 4)


def _parse_event(message: str | bytes) -> dict[str, Any] | None:
    if isinstance(message, bytes):
        logger.warning("Ignoring a %d-byte binary frame from the server", len(message))
        return None
    try:
        event = json.loads(message)
    except ValueError:
        logger.warning("Ignoring a text frame that is not JSON: %.80r", message)
        return None
    if not isinstance(event, dict):
        logger.warning("Ignoring a JSON frame that is not an object: %.80r", message)
        return None
    return event


async def stream_audio(
    url: str,
    audio: bytes,
    duration: float,
    *,
    token: str | None = None,
    session_cookie: str | None = None,
    fmt: AudioFormat = "pcm_s16le",
    speed: float = 1.0,
    chunk_ms: float = 250,
    language: str | None = "en",
    title: str | None = None,
    on_event: EventCallback | None = None,
    ready_timeout: float = 30.0,
    stop_timeout: float | None = None,
    open_timeout: float = 10.0,
    retries: int = 5,
    backoff: float = 0.5,
    max_backoff: float = 8.0,
    on_reconnect: ReconnectCallback | None = None,
) -> StreamResult:
    """Stream already-encoded audio through one ``stt.v1`` session and collect the server's events.

    ``on_event`` is called (synchronously, on the event loop) with each event as it arrives, ``"t"``
    included. ``stop_timeout`` bounds the wait for ``closed`` after ``stop`` (None: wait as long as the
    server keeps the socket alive; websockets' pings still detect a dead peer).

    A connection that drops after the first ``ready`` is resumed (module docstring): up to ``retries``
    attempts in a row, waiting ``backoff`` seconds before the first and twice as long before each next
    one, at most ``max_backoff``; ``on_reconnect`` is told about each attempt before its wait.

    Raises ``OSError`` (refused, unreachable), ``InvalidStatus`` (HTTP rejection such as 403),
    ``InvalidHandshake``/``InvalidURI``, or ``TimeoutError`` when no ``ready`` comes in ``ready_timeout``.
    Once the session exists, the same failures are retried instead (all but an HTTP 4xx answer, which
    is raised), and a drop that the retries cannot mend is reported in the result. A close by the server
    is not an exception: see ``StreamResult.close_code``.
    """
    if speed < 0:
        raise ValueError("speed must be >= 0 (0 = as fast as possible)")
    start: dict[str, Any] = {"type": "start", "format": fmt, "sample_rate": SAMPLE_RATE, "language": language}
    if title:
        start["title"] = title
    session = _Session(
        url,
        _ReplaySource(audio, fmt, duration, chunk_ms),
        start,
        headers=_headers(token, session_cookie),
        speed=speed,
        chunk_ms=chunk_ms,
        ready_timeout=ready_timeout,
        stop_timeout=stop_timeout,
        open_timeout=open_timeout,
        policy=RetryPolicy(retries=retries, backoff=backoff, max_backoff=max_backoff),
        on_event=on_event,
        on_reconnect=on_reconnect,
    )
    return await session.run()


class _ReplaySource:
    """The stream's audio from any session offset on, to send again after a resume.

    A file or buffer is its own replay buffer, so nothing extra is kept: PCM is cut at the offset (on a
    whole sample). WebM cannot be cut at a byte (each connection needs a header, and an Opus packet does
    not start just anywhere), so it is decoded once and the rest encoded again from the offset; Opus is
    sample-aligned after its pre-skip, so the new stream starts where the server expects it.
    """

    def __init__(self, audio: bytes, fmt: AudioFormat, duration: float, chunk_ms: float) -> None:
        self.audio = audio
        self.fmt = fmt
        self.duration = duration
        self.chunk_ms = chunk_ms
        self._pcm: bytes | None = None

    async def frames_from(self, offset: float) -> list[bytes]:
        if offset <= 0:
            return list(iter_chunks(self.audio, self.fmt, self.duration, self.chunk_ms))
        pcm = self.audio if self.fmt == "pcm_s16le" else await self._decoded()
        rest = pcm[min(len(pcm), round(offset * SAMPLE_RATE) * 2) :]
        if not rest:
            return []
        seconds = len(rest) / PCM_BYTES_PER_SECOND
        if self.fmt == "pcm_s16le":
            return list(iter_chunks(rest, "pcm_s16le", seconds, self.chunk_ms))
        webm = await encode_webm(rest, f"encode the audio from {offset:.3f} s on to resume")
        return list(iter_chunks(webm, "webm", seconds, self.chunk_ms))

    async def _decoded(self) -> bytes:
        if self._pcm is None:
            self._pcm = await _run_ffmpeg(
                ["-f", "webm", "-i", "pipe:0", "-f", "s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "pipe:1"],
                self.audio,
                "decode the WebM stream to resume it",
            )
        return self._pcm


@dataclass
class _Connection:
    """How one connection of a session went."""

    ready: dict[str, Any] | None = None
    offset: float = 0.0  # where this connection's audio started, in seconds of session audio
    finished: bool = False  # the server sent ``closed``: the session is over
    close_code: int | None = None
    close_reason: str = ""

    @property
    def reason(self) -> str:
        if self.close_code == 1006:
            return "connection lost (no close frame)"
        return f"connection closed with {self.close_code}" + (
            f" ({self.close_reason})" if self.close_reason else ""
        )


class _Session:
    """One ``stt.v1`` session, over as many connections as it takes (see the module docstring)."""

    def __init__(
        self,
        url: str,
        source: _ReplaySource,
        start: dict[str, Any],
        *,
        headers: dict[str, str],
        speed: float,
        chunk_ms: float,
        ready_timeout: float,
        stop_timeout: float | None,
        open_timeout: float,
        policy: RetryPolicy,
        on_event: EventCallback | None,
        on_reconnect: ReconnectCallback | None,
    ) -> None:
        self.url = url
        self.origin = _origin_for(url)
        self.source = source
        self.start = start
        self.headers = headers
        self.speed = speed
        self.interval = chunk_ms / 1000 / speed if speed else 0.0
        self.chunk_ms = chunk_ms
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.open_timeout = open_timeout
        self.policy = policy
        self.on_event = on_event
        self.on_reconnect = on_reconnect
        self.result = StreamResult(duration=source.duration, speed=speed)
        self.clock = _Clock()
        self.seen: set[int] = set()  # seq of every final recorded
        self.finished = False

    def record(self, event: dict[str, Any]) -> None:
        if event.get("type") == "final" and isinstance(seq := event.get("seq"), int):
            if seq in self.seen:
                logger.info("Session %s: dropping final %d, already received", self.result.session, seq)
                return
            self.seen.add(seq)
        elif event.get("type") == "closed":
            self.finished = True
        event["t"] = self.clock.since_start()
        self.result.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    async def run(self) -> StreamResult:
        result = self.result
        failures = 0  # attempts in a row that did not move the session on
        progress = (0.0, 0)  # (offset, finals) at the last ready: a resume must beat it to reset failures
        while True:
            resuming = result.session is not None
            try:
                conn = await self._connect_and_stream()
            except (OSError, InvalidHandshake) as exc:  # TimeoutError is an OSError
                if not resuming or (isinstance(exc, InvalidStatus) and exc.response.status_code < 500):
                    raise  # never connected, or the server says no (403, 404): retrying will not help
                reason = f"could not reconnect ({str(exc) or type(exc).__name__})"
            else:
                if conn.ready is not None:
                    if resuming:
                        result.resumes += 1
                    if (conn.offset, len(self.seen)) > progress:
                        progress = (conn.offset, len(self.seen))
                        failures = 0
                if conn.finished or result.timed_out or result.session is None:
                    break
                if not is_retryable(conn.close_code):
                    break
                reason = conn.reason
            failures += 1
            if failures > self.policy.retries:
                if self.policy.retries:
                    logger.info(
                        "Session %s: giving up after %d attempts to resume it", result.session, failures - 1
                    )
                break
            delay = self.policy.delay(failures)
            result.reconnects += 1
            logger.info(
                "Session %s: %s; resuming in %.1f s (attempt %d)", result.session, reason, delay, failures
            )
            if self.on_reconnect is not None:
                self.on_reconnect(
                    ReconnectAttempt(str(result.session), failures, self.policy.retries, delay, reason)
                )
            await asyncio.sleep(delay)
        result.elapsed = self.clock.since_start() or 0.0
        return result

    async def _connect_and_stream(self) -> _Connection:
        conn = _Connection()
        start = self.start if self.result.session is None else {**self.start, "session": self.result.session}
        async with connect(
            self.url,
            origin=self.origin,  # type: ignore[arg-type]  # Origin is a NewType of str
            additional_headers=self.headers,
            open_timeout=self.open_timeout,
            max_size=None,  # a resumed session's `ready` may carry many finals
            compression=None,  # audio does not deflate; don't spend CPU on both ends trying
        ) as ws:
            await self._stream(ws, start, conn)
            # Leaving the context closes with 1000 if the server has not; the codes below are the
            # server's when it closed first (1006 when the connection just died), which is what tells
            # success from a rejected session from a drop.
        conn.finished = self.finished
        if not self.result.timed_out:
            conn.close_code, conn.close_reason = ws.close_code, ws.close_reason or ""
            self.result.close_code, self.result.close_reason = conn.close_code, conn.close_reason
        return conn

    async def _stream(self, ws: ClientConnection, start: dict[str, Any], conn: _Connection) -> None:
        try:
            await ws.send(json.dumps(start))
        except ConnectionClosed:  # refused right after the handshake (not authenticated, at capacity)
            return
        try:
            async with asyncio.timeout(self.ready_timeout):
                ready = await _wait_ready(ws, self.record)
        except TimeoutError:
            raise TimeoutError(f"The server sent no 'ready' within {self.ready_timeout} s") from None
        if ready is None:  # closed before ready (bad token, at capacity, not your session, ...)
            return
        conn.ready = ready
        conn.offset = self._take_ready(ready)
        frames = await self.source.frames_from(conn.offset)
        max_frame = (ready.get("limits") or {}).get("max_frame_bytes")
        if isinstance(max_frame, int) and max_frame > 0 and any(len(f) > max_frame for f in frames):
            raise ValueError(
                f"--chunk-ms {self.chunk_ms} makes frames larger than the server's {max_frame} bytes"
            )

        lead = conn.offset / self.speed if self.speed else 0.0
        sender = asyncio.create_task(_send_audio(ws, frames, self.interval, self.clock, self.result, lead))
        reader = asyncio.create_task(_read_events(ws, self.record))
        try:
            done, _ = await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                # The server ended the session early, or the connection dropped; stop pacing audio
                # into a closing socket.
                sender.cancel()
            else:
                sender.result()  # re-raise anything but a closed socket
                try:
                    await asyncio.wait_for(asyncio.shield(reader), self.stop_timeout)
                except TimeoutError:
                    logger.warning("No 'closed' %s s after 'stop'; giving up", self.stop_timeout)
                    self.result.timed_out = True
        finally:
            for task in (sender, reader):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await task

    def _take_ready(self, ready: dict[str, Any]) -> float:
        """Note the session, record the stored finals not seen yet, and return the offset to send from."""
        if self.result.session is None:
            self.result.session = ready.get("session")
        stored = [
            f for f in ready.get("finals") or [] if isinstance(f, dict) and isinstance(f.get("seq"), int)
        ]
        for final in sorted(stored, key=lambda f: int(f["seq"])):
            if final["seq"] not in self.seen:
                # Stored while we were away (the server transcribed what it had, or crashed between
                # storing and sending): never sent to us, so record it now, in order.
                self.record({**final, "type": "final", "recovered": True})
        offset = ready.get("offset")
        if not isinstance(offset, int | float) or offset <= 0:
            return 0.0
        return min(float(offset), self.source.duration)


async def _wait_ready(
    ws: ClientConnection, record: Callable[[dict[str, Any]], None]
) -> dict[str, Any] | None:
    """Record events until ``ready``; None if the server closes first."""
    try:
        async for message in ws:
            event = _parse_event(message)
            if event is None:
                continue
            record(event)
            if event.get("type") == "ready":
                return event
    except ConnectionClosed:
        pass
    return None


async def _send_audio(
    ws: ClientConnection,
    frames: list[bytes],
    interval: float,
    clock: _Clock,
    result: StreamResult,
    lead: float = 0.0,
) -> None:
    """Send ``frames`` paced at ``interval``, then ``stop``.

    Frame ``i`` is due ``lead + i * interval`` seconds after the session's first frame. On a resumed
    connection ``lead`` is the resume offset in wall seconds, so audio a live source would already have
    captured goes out at once, and the rest at its original time.
    """
    try:
        t0 = clock.t0 if clock.t0 is not None else clock.start()
        for i, frame in enumerate(frames):
            if interval:
                # Pace against the clock, not with cumulative sleeps, so sleep overshoot and send time
                # never add up into drift over a long stream.
                delay = t0 + lead + i * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await ws.send(frame)
            result.bytes_sent += len(frame)
        await ws.send(json.dumps({"type": "stop"}))
    except ConnectionClosed:
        logger.debug("Server closed the socket while audio was being sent")


async def _read_events(ws: ClientConnection, record: Callable[[dict[str, Any]], None]) -> None:
    """Record events until ``closed`` or the end of the socket."""
    try:
        async for message in ws:
            event = _parse_event(message)
            if event is None:
                continue
            record(event)
            if event.get("type") == "closed":
                return
    except ConnectionClosed:  # abnormal close (no close frame, 1011 ...): the code is on ws
        pass


async def stream_file(
    url: str,
    path: str | Path,
    *,
    token: str | None = None,
    session_cookie: str | None = None,
    fmt: AudioFormat = "pcm_s16le",
    speed: float = 1.0,
    chunk_ms: float = 250,
    language: str | None = "en",
    title: str | None = None,
    on_event: EventCallback | None = None,
    ready_timeout: float = 30.0,
    stop_timeout: float | None = None,
    retries: int = 5,
    backoff: float = 0.5,
    max_backoff: float = 8.0,
    on_reconnect: ReconnectCallback | None = None,
) -> StreamResult:
    """Encode ``path`` in ``fmt`` and stream it through one session; see ``stream_audio``.

    ``title`` defaults to the file's name, so sessions started from the command line are findable.
    """
    audio, duration = await encode_audio(path, fmt)
    return await stream_audio(
        url,
        audio,
        duration,
        token=token,
        session_cookie=session_cookie,
        fmt=fmt,
        speed=speed,
        chunk_ms=chunk_ms,
        language=language,
        title=title if title is not None else Path(path).name,
        on_event=on_event,
        ready_timeout=ready_timeout,
        stop_timeout=stop_timeout,
        retries=retries,
        backoff=backoff,
        max_backoff=max_backoff,
        on_reconnect=on_reconnect,
    )


def _print_event(event: dict[str, Any]) -> None:
    # One line per event, flushed at once, so a pipe (jq, a load-test harness) sees it live.
    sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _summary(result: StreamResult) -> str:
    lines = [
        f"session:  {result.session or '-'}",
        f"audio:    {result.duration:.1f} s at speed {result.speed:g}; {result.elapsed:.1f} s from the first"
        " frame to the end of the session",
        f"finals:   {len(result.finals)}",
    ]
    latencies = result.final_latencies()
    if latencies:
        lines.append(
            f"latency:  final p50 {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
            " (after the final's last audio was sent)"
        )
    if result.reconnects:
        lines.append(f"resumed:  {result.resumes} time(s), {result.reconnects} attempt(s) to reconnect")
    if result.errors:
        lines.append("errors:   " + ", ".join(str(e.get("code")) for e in result.errors))
    lines.append(f"text:     {result.text}")
    return "\n".join(lines)


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return number


def _seconds(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return number


def _speed(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be >= 0 (0 = as fast as possible)")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m transcribe.client",
        description="Stream an audio file to a django-transcribe WebSocket (stt.v1) and print its events "
        "as JSON lines.",
    )
    parser.add_argument("url", help="WebSocket URL, e.g. ws://localhost:8000/ws/transcribe/")
    parser.add_argument("path", help="audio file (anything ffmpeg reads)")
    parser.add_argument("--token", help="API token, sent as 'Authorization: Token <T>'")
    parser.add_argument(
        "--session-cookie", help="Django session key, sent as 'Cookie: sessionid=<C>' (or pass 'name=value')"
    )
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="pcm_s16le", help="wire format")
    parser.add_argument("--speed", type=_speed, default=1.0, help="times real time; 0 = as fast as possible")
    parser.add_argument("--chunk-ms", type=_positive_int, default=250, help="audio per frame (default 250)")
    parser.add_argument(
        "--language", default="en", help="language code, or 'auto' to let the server detect it"
    )
    parser.add_argument("--title", help="session title (default: the file name)")
    parser.add_argument("--stop-timeout", type=float, help="seconds to wait for 'closed' after 'stop'")
    parser.add_argument(
        "--retries",
        type=_non_negative_int,
        default=5,
        help="attempts in a row to resume the session after the connection drops (default 5; 0: never)",
    )
    parser.add_argument(
        "--backoff",
        type=_seconds,
        default=0.5,
        help="seconds before the first attempt to resume, doubled for each next one (default 0.5)",
    )
    parser.add_argument(
        "--max-backoff", type=_seconds, default=8.0, help="longest wait between attempts (default 8)"
    )
    parser.add_argument("--quiet", action="store_true", help="no summary or progress on stderr")
    return parser


def _print_reconnect(attempt: ReconnectAttempt) -> None:
    print(
        f"{attempt.reason}; resuming session {attempt.session} in {attempt.delay:.1f} s"
        f" (attempt {attempt.attempt} of {attempt.retries})",
        file=sys.stderr,
        flush=True,
    )


def _print_event_and_resume(event: dict[str, Any]) -> None:
    _print_event(event)
    if event.get("type") == "ready" and event.get("resumed"):
        print(
            f"resumed session {event.get('session')} at {event.get('offset')} s of audio"
            f" ({len(event.get('finals') or [])} finals stored)",
            file=sys.stderr,
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.ERROR if args.quiet else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        result = asyncio.run(
            stream_file(
                args.url,
                args.path,
                token=args.token,
                session_cookie=args.session_cookie,
                fmt=args.fmt,
                speed=args.speed,
                chunk_ms=args.chunk_ms,
                language=None if args.language in ("", "auto") else args.language,
                title=args.title,
                on_event=_print_event if args.quiet else _print_event_and_resume,
                stop_timeout=args.stop_timeout,
                retries=args.retries,
                backoff=args.backoff,
                max_backoff=args.max_backoff,
                on_reconnect=None if args.quiet else _print_reconnect,
            )
        )
    except (FileNotFoundError, DecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except InvalidStatus as exc:
        print(f"error: the server rejected the connection: HTTP {exc.response.status_code}", file=sys.stderr)
        return 2
    except (OSError, WebSocketException, TimeoutError, ValueError) as exc:
        print(f"error: could not stream to {args.url}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

    status = 0
    if result.timed_out:
        print(f"error: no 'closed' within {args.stop_timeout} s after 'stop'", file=sys.stderr)
        status = 2
    elif result.close_code not in (None, 1000):
        _print_event({"type": "disconnected", "code": result.close_code, "reason": result.close_reason})
        if result.reconnects and is_retryable(result.close_code):
            print(
                f"error: could not resume session {result.session} after {result.reconnects} attempt(s)",
                file=sys.stderr,
            )
        status = 2
    if not args.quiet:
        print(_summary(result), file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
