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

    # N concurrent sessions of one file: encode once, stream many times
    audio, duration = await encode_audio("talk.wav", "pcm_s16le")
    results = await asyncio.gather(*(stream_audio(url, audio, duration, token=t) for _ in range(4)))

Exit status of ``main``: 0 when the server closed normally (1000) or sent ``closed``; 1 when the file could
not be read or encoded; 2 when the connection failed, was refused (e.g. HTTP 403 from the origin
validator), timed out, or the server closed with any other code (then a ``{"type": "disconnected",
"code": N, "reason": "..."}`` line is printed on stdout first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

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


@dataclass
class StreamResult:
    """What one streamed session produced.

    ``events`` holds every server event in arrival order, each with the client-side ``"t"`` field;
    ``close_code`` is None when the socket never closed from the server's side (e.g. a timeout).
    """

    events: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    duration: float = 0.0  # seconds of audio sent
    elapsed: float = 0.0  # wall seconds from the first audio frame to the end of the session
    bytes_sent: int = 0
    speed: float = 1.0
    session: str | None = None  # the server's session id from ``ready``
    timed_out: bool = False

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
        about ``end / speed`` (up to one chunk later), so the latency is ``t - end / speed``.
        """
        if self.speed <= 0:
            return []
        return [
            e["t"] - float(e["end"]) / self.speed
            for e in self.finals
            if e.get("t") is not None and isinstance(e.get("end"), int | float)
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
    webm = await _run_ffmpeg(
        ["-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "1", "-i", "pipe:0", *WEBM_ENCODE_ARGS, "pipe:1"],
        pcm,
        f"encode {path} to WebM/Opus",
    )
    return webm, duration


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
) -> StreamResult:
    """Stream already-encoded audio through one ``stt.v1`` session and collect the server's events.

    ``on_event`` is called (synchronously, on the event loop) with each event as it arrives, ``"t"``
    included. ``stop_timeout`` bounds the wait for ``closed`` after ``stop`` (None: wait as long as the
    server keeps the socket alive; websockets' pings still detect a dead peer).

    Raises ``OSError`` (refused, unreachable), ``InvalidStatus`` (HTTP rejection such as 403),
    ``InvalidHandshake``/``InvalidURI``, or ``TimeoutError`` when no ``ready`` comes in ``ready_timeout``.
    A close by the server is not an exception: see ``StreamResult.close_code``.
    """
    if speed < 0:
        raise ValueError("speed must be >= 0 (0 = as fast as possible)")
    result = StreamResult(duration=duration, speed=speed)
    clock = _Clock()

    def record(event: dict[str, Any]) -> None:
        event["t"] = clock.since_start()
        result.events.append(event)
        if on_event is not None:
            on_event(event)

    start: dict[str, Any] = {"type": "start", "format": fmt, "sample_rate": SAMPLE_RATE, "language": language}
    if title:
        start["title"] = title

    async with connect(
        url,
        origin=_origin_for(url),  # type: ignore[arg-type]  # Origin is a NewType of str
        additional_headers=_headers(token, session_cookie),
        open_timeout=open_timeout,
        max_size=None,  # a resumed session's `ready` may carry many finals
        compression=None,  # audio does not deflate; don't spend CPU on both ends trying
    ) as ws:
        try:
            await ws.send(json.dumps(start))
        except ConnectionClosed:  # refused right after the handshake (not authenticated, at capacity)
            result.close_code, result.close_reason = ws.close_code, ws.close_reason or ""
            return result
        try:
            async with asyncio.timeout(ready_timeout):
                ready = await _wait_ready(ws, record)
        except TimeoutError:
            raise TimeoutError(f"The server sent no 'ready' within {ready_timeout} s") from None
        if ready is None:  # closed before ready (bad token, at capacity, ...)
            result.close_code, result.close_reason = ws.close_code, ws.close_reason or ""
            return result
        result.session = ready.get("session")
        frames = list(iter_chunks(audio, fmt, duration, chunk_ms))
        max_frame = (ready.get("limits") or {}).get("max_frame_bytes")
        if isinstance(max_frame, int) and max_frame > 0 and any(len(f) > max_frame for f in frames):
            raise ValueError(f"--chunk-ms {chunk_ms} makes frames larger than the server's {max_frame} bytes")

        sender = asyncio.create_task(
            _send_audio(ws, frames, chunk_ms / 1000 / speed if speed else 0.0, clock, result)
        )
        reader = asyncio.create_task(_read_events(ws, record))
        try:
            done, _ = await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                # The server ended the session early; stop pacing audio into a closing socket.
                sender.cancel()
            else:
                sender.result()  # re-raise anything but a closed socket
                try:
                    await asyncio.wait_for(asyncio.shield(reader), stop_timeout)
                except TimeoutError:
                    logger.warning("No 'closed' %s s after 'stop'; giving up", stop_timeout)
                    result.timed_out = True
        finally:
            for task in (sender, reader):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await task
        # Leaving the context closes with 1000 if the server has not; the codes below are the server's
        # when it closed first, which is what the caller needs to tell success from a rejected session.
    result.elapsed = clock.since_start() or 0.0
    if not result.timed_out:
        result.close_code, result.close_reason = ws.close_code, ws.close_reason or ""
    return result


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
    ws: ClientConnection, frames: list[bytes], interval: float, clock: _Clock, result: StreamResult
) -> None:
    try:
        t0 = clock.start()
        for i, frame in enumerate(frames):
            if interval:
                # Pace against the clock, not with cumulative sleeps, so sleep overshoot and send time
                # never add up into drift over a long stream.
                delay = t0 + i * interval - time.monotonic()
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
    if result.errors:
        lines.append("errors:   " + ", ".join(str(e.get("code")) for e in result.errors))
    lines.append(f"text:     {result.text}")
    return "\n".join(lines)


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
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
    parser.add_argument("--quiet", action="store_true", help="no summary on stderr")
    return parser


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
                on_event=_print_event,
                stop_timeout=args.stop_timeout,
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
        status = 2
    if not args.quiet:
        print(_summary(result), file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
