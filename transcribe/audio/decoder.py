"""Audio decoding without temp files and without blocking the event loop.

- ``AsyncAudioDecoder.decode_webm_to_numpy(blob)``: one complete blob (WebM, Ogg, WAV, anything
  ffmpeg reads) through asyncio pipes to ffmpeg.
- ``StreamingDecoder``: one persistent ffmpeg per session, fed a compressed stream chunk by chunk;
  PCM comes back about a millisecond after each write because the input format is named before
  ``-i`` (without it ffmpeg probes and holds the first chunk until the next arrives).
- ``PcmDecoder``: raw s16le/f32le needs no ffmpeg at all; odd trailing bytes wait in a bytearray.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import numpy as np
import numpy.typing as npt

from ..exceptions import DecodeError
from .ffmpeg import find_ffmpeg, write_to_pipe

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
Samples = npt.NDArray[np.float32]
PcmCallback = Callable[[Samples], Awaitable[None]]
ErrorCallback = Callable[["DecodeError"], Awaitable[None]]


def pcm_s16le(samples: Samples) -> bytes:
    """The inverse of the decoders' ``int16 / 32768``: samples read from PCM go back to the same
    bytes. (Scaling by 32767 and truncating moved most samples by one step, and that was enough to
    change a word of tiny.en's: jfk's "And not." came out "Ask not!".)"""
    return np.round(np.clip(samples, -1, 1) * 32768).clip(-32768, 32767).astype("<i2").tobytes()


# ffmpeg demuxer names for the compressed formats of stt.v1.
CONTAINER_FORMATS = {"webm": "webm", "ogg": "ogg", "wav": "wav"}
PCM_FORMATS = {"pcm_s16le": np.dtype("<i2"), "pcm_f32le": np.dtype("<f4")}
FORMATS = (*PCM_FORMATS, *CONTAINER_FORMATS)
READ_SIZE = 16 * 1024
GATHER_SECONDS = 0.002  # ffmpeg's output for one written chunk ends after this much quiet
GATHER_BYTES = 2 * SAMPLE_RATE  # but at most a second of audio is held (a stream sent faster)
STDERR_LIMIT = 4096
# An ffmpeg that takes no input for this long (stopped, deadlocked) is killed and reported as bad
# audio; the next frame starts a fresh one. Without it a hung decoder would hold the socket forever.
STALL_SECONDS = 10.0


def s16le_to_float32(data: bytes | bytearray | memoryview) -> Samples:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def _ffmpeg_args(input_format: str | None, source: str = "pipe:0") -> list[str]:
    args = [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-nostdin"]
    if input_format:
        args += ["-f", input_format]
    return [*args, "-i", source, "-vn", "-f", "s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "pipe:1"]


class AsyncAudioDecoder:
    """Decode audio with ffmpeg through asyncio pipes (the seed's optimization #1 and #2)."""

    @staticmethod
    async def decode_webm_to_numpy(webm_bytes: bytes, input_format: str | None = "webm") -> Samples:
        """Decode one complete blob to 16 kHz mono float32; ``input_format=None`` lets ffmpeg probe."""
        proc = await asyncio.create_subprocess_exec(
            *_ffmpeg_args(input_format),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await proc.communicate(webm_bytes)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            raise DecodeError(
                f"ffmpeg could not decode the audio: {err.decode(errors='replace').strip()[-300:]}"
            )
        return s16le_to_float32(out[: len(out) // 2 * 2])

    @staticmethod
    async def decode_file(path: str) -> Samples:
        """Decode any file ffmpeg reads; used by commands and tests, never on the streaming path."""
        proc = await asyncio.create_subprocess_exec(
            *_ffmpeg_args(None, source=path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise DecodeError(f"ffmpeg could not read {path}: {err.decode(errors='replace').strip()[-300:]}")
        return s16le_to_float32(out[: len(out) // 2 * 2])


class PcmDecoder:
    """Raw PCM frames: no subprocess, no copy beyond the float conversion."""

    def __init__(self, fmt: str, on_pcm: PcmCallback) -> None:
        self.dtype = PCM_FORMATS[fmt]
        self.on_pcm = on_pcm
        self._pending = bytearray()  # a frame may split a sample; keep the remainder (seed #6)

    async def feed(self, data: bytes) -> None:
        size = self.dtype.itemsize
        if self._pending:
            self._pending += data
            usable = len(self._pending) // size * size
            raw = bytes(self._pending[:usable])
            del self._pending[:usable]
        else:  # the common case: whole samples, no copy of the frame
            usable = len(data) // size * size
            raw = data[:usable] if usable < len(data) else data
            self._pending += data[usable:]
        if not raw:
            return
        samples = self.to_float32(raw)
        await self.on_pcm(samples)

    def to_float32(self, raw: bytes) -> Samples:
        values = np.frombuffer(raw, dtype=self.dtype)
        if self.dtype.kind == "i":
            return values.astype(np.float32) / 32768.0
        samples = values.astype(np.float32)
        if not np.isfinite(samples).all() or np.abs(samples).max(initial=0.0) > 64.0:
            raise DecodeError("pcm_f32le audio must be finite floats in [-1, 1]")
        return np.clip(samples, -1.0, 1.0, out=samples)

    async def settle(self) -> None:
        """Nothing to wait for: PCM is handed on as it is fed."""

    async def close(self) -> None:
        self._pending.clear()


class StreamingDecoder:
    """One persistent ffmpeg process decoding a WebM/Ogg stream fed chunk by chunk."""

    def __init__(self, fmt: str, on_pcm: PcmCallback, on_error: ErrorCallback | None = None) -> None:
        self.fmt = fmt
        self.on_pcm = on_pcm
        self.on_error = on_error  # told when ffmpeg gives up between two writes
        self._closing = False
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stderr: asyncio.Task[bytes] | None = None
        self._error: DecodeError | None = None
        self.bytes_in = 0
        self._last_write = 0.0  # monotonic times, for settle()
        self._last_output = 0.0

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *_ffmpeg_args(CONTAINER_FORMATS[self.fmt]),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read_pcm(), name=f"ffmpeg-reader-{self._proc.pid}")
        self._stderr = asyncio.create_task(self._read_stderr(), name=f"ffmpeg-stderr-{self._proc.pid}")

    @property
    def failed(self) -> bool:
        """ffmpeg rejected the stream (or the PCM callback failed); this decoder takes no more input."""
        return self._error is not None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def _read_pcm(self) -> None:
        assert self._proc and self._proc.stdout
        stdout = self._proc.stdout
        pending = bytearray()
        while chunk := await stdout.read(READ_SIZE):
            if self._error is not None:
                continue  # keep draining: a full pipe would stall ffmpeg and keep its pipes open
            pending += chunk
            # ffmpeg hands back a chunk's audio one 20 ms packet at a time, over 2-3 ms: gathered,
            # the VAD and the endpointer run once per chunk instead of 2-5 times, at the cost of
            # GATHER_SECONDS of latency.
            while len(pending) < GATHER_BYTES:
                try:
                    async with asyncio.timeout(GATHER_SECONDS):
                        chunk = await stdout.read(READ_SIZE)
                except TimeoutError:
                    break
                if not chunk:
                    break  # end of stream: hand on what is here, the outer read ends the loop
                pending += chunk
            usable = len(pending) // 2 * 2
            if usable:
                samples = s16le_to_float32(memoryview(pending)[:usable])
                del pending[:usable]
                try:
                    await self.on_pcm(samples)
                    self._last_output = time.monotonic()
                except Exception as exc:
                    logger.exception("The PCM callback failed; stopping ffmpeg %s", self._proc.pid)
                    self._error = DecodeError(f"Audio processing failed: {exc}")
                    with contextlib.suppress(ProcessLookupError):
                        self._proc.kill()
        await self._proc.wait()
        if not self._closing and self.on_error is not None:
            # ffmpeg quit on its own (bad input): say so now, not at the next write that may never come.
            await self.on_error(await self._fail())

    async def _read_stderr(self) -> bytes:
        assert self._proc and self._proc.stderr
        tail = bytearray()
        while chunk := await self._proc.stderr.read(1024):
            tail += chunk
            del tail[:-STDERR_LIMIT]  # bounded: a noisy ffmpeg must not grow memory
        return bytes(tail)

    async def _fail(self) -> DecodeError:
        if self._error is None:
            err = b""
            task = self._stderr
            if task is not None:
                if not task.done():
                    await asyncio.wait({task}, timeout=1.0)  # never raises, even if it was cancelled
                if task.done() and not task.cancelled() and task.exception() is None:
                    err = task.result()
            message = err.decode(errors="replace").strip().splitlines()
            self._error = DecodeError(
                f"Could not decode the {self.fmt} stream" + (f": {message[-1]}" if message else "")
            )
        return self._error

    async def feed(self, data: bytes) -> None:
        if self._proc is None:
            await self.start()
        assert self._proc and self._proc.stdin
        if self._error is not None or self._proc.returncode is not None:
            raise await self._fail()
        try:
            await write_to_pipe(self._proc.stdin, data, STALL_SECONDS)
        except (BrokenPipeError, ConnectionResetError):
            raise await self._fail() from None
        except TimeoutError:
            logger.warning("ffmpeg %s took no input for %.0fs; killing it", self._proc.pid, STALL_SECONDS)
            self._error = DecodeError(f"The {self.fmt} decoder stopped responding")
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            raise self._error from None
        self.bytes_in += len(data)
        self._last_write = time.monotonic()

    async def settle(self, quiet: float = 0.05, timeout: float = 0.5) -> None:
        """Wait until ffmpeg has handed back the audio of what was written so far: nothing came out
        for ``quiet`` seconds since the last write or output (it answers a write within about a
        millisecond; input that completes no packet gives nothing), ``timeout`` at most. A client's
        ``finalize`` right after its last frame must cover that frame."""
        deadline = time.monotonic() + timeout
        while self.running and not self.failed:
            now = time.monotonic()
            if now - max(self._last_write, self._last_output) >= quiet or now >= deadline:
                return
            await asyncio.sleep(0.005)

    async def close(self, timeout: float = 5.0) -> None:
        """Flush: end ffmpeg's input, deliver the last PCM, and reap the process (never a zombie)."""
        proc = self._proc
        if proc is None:
            return
        self._closing = True
        try:
            if proc.stdin and not proc.stdin.is_closing():
                proc.stdin.close()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    await proc.stdin.wait_closed()
            if self._reader is not None:
                await asyncio.wait_for(self._reader, timeout)
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            logger.warning("ffmpeg %s did not exit in %.1fs; killing it", proc.pid, timeout)
        finally:
            await self.abort()
        if proc.returncode is not None and proc.returncode > 0 and self.bytes_in and self._error is None:
            # ffmpeg gave up only at the end of the input (e.g. Ogg announced as WebM): say so, or
            # the client would just get an empty transcript.
            logger.info("ffmpeg exited with %s at the end of a %s stream", proc.returncode, self.fmt)
            if self.on_error is not None:
                await self.on_error(await self._fail())

    async def abort(self) -> None:
        """Kill ffmpeg at once and reap it; used on disconnect."""
        proc = self._proc
        if proc is None:
            return
        self._closing = True
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for task in (self._reader, self._stderr):
            if task is not None and not task.done():
                task.cancel()
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if proc.stdin is not None:
            proc.stdin.close()
        # Read the pipes to their end: the process only counts as finished once they are closed,
        # and a reader cancelled mid-stream leaves unread output behind.
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(stream.read(), 5.0)
        await proc.wait()


def make_decoder(
    fmt: str, on_pcm: PcmCallback, on_error: ErrorCallback | None = None
) -> PcmDecoder | StreamingDecoder:
    if fmt in PCM_FORMATS:
        return PcmDecoder(fmt, on_pcm)
    if fmt in CONTAINER_FORMATS:
        return StreamingDecoder(fmt, on_pcm, on_error)
    raise DecodeError(f"Unsupported audio format {fmt!r}; use one of {', '.join(FORMATS)}")
