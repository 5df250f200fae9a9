"""Keeping a session's audio: Ogg/Opus written by one ffmpeg per connection, streamed to disk.

``AudioRecorder`` receives the same 16 kHz samples the transcriber sees, so the recording and the
transcript share one clock. It writes through an asyncio pipe to ffmpeg, which writes a spool file;
nothing of the recording is held in memory. When the connection ends, the spool file goes to the
configured storage. A resumed session's new part is joined to the stored recording with
``join_recordings``, padded with silence where the server lost audio (a crash), so that timestamps
in the transcript still point at the right second of the recording.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..exceptions import DecodeError
from .decoder import SAMPLE_RATE, pcm_s16le
from .ffmpeg import find_ffmpeg, write_to_pipe

logger = logging.getLogger(__name__)

STDERR_LIMIT = 4096
# A recorder that takes no input for this long (stopped, a stalled disk) is given up, like a dead
# one: the transcript must not wait for the recording.
STALL_SECONDS = 10.0


def _encode_args(bitrate: int) -> list[str]:
    # "voip" tunes Opus for speech; 20 ms frames are its default.
    return ["-c:a", "libopus", "-b:a", str(bitrate), "-application", "voip", "-f", "ogg"]


def _ffmpeg_head() -> list[str]:
    """ffmpeg, quiet but for errors, never reading the terminal, overwriting its output file."""
    return [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]


def spool_path() -> Path:
    fd, name = tempfile.mkstemp(prefix="transcribe-", suffix=".ogg")
    os.close(fd)
    return Path(name)


class AudioRecorder:
    """Encode float32 samples to an Ogg/Opus spool file, written as they arrive."""

    def __init__(self, bitrate: int = 24_000) -> None:
        self.bitrate = bitrate
        self.path = spool_path()
        self.samples = 0
        self.failed = False
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr: asyncio.Task[bytes] | None = None

    @property
    def duration(self) -> float:
        return self.samples / SAMPLE_RATE

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *_ffmpeg_head(),
            "-f",
            "s16le",
            "-ar",
            str(SAMPLE_RATE),
            "-ac",
            "1",
            "-i",
            "pipe:0",
            *_encode_args(self.bitrate),
            str(self.path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._stderr = asyncio.create_task(self._read_stderr())

    async def write(self, samples: npt.NDArray[np.float32]) -> None:
        """Append audio. A failed encoder is logged once and then ignored: losing the recording
        must never cost the transcript."""
        if self.failed:
            return
        if self._proc is None:
            await self.start()
        assert self._proc is not None and self._proc.stdin is not None
        pcm = pcm_s16le(samples)
        try:
            await write_to_pipe(self._proc.stdin, pcm, STALL_SECONDS)
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as exc:
            self.failed = True
            logger.error("The audio recorder stopped (%r); the transcript goes on without it", exc)
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()  # a hung one; a dead one is reaped by finish() or abort()
            return
        self.samples += len(samples)

    async def finish(self) -> Path | None:
        """Close the stream and wait for ffmpeg. The spool file, or None when nothing was recorded."""
        proc = self._proc
        if proc is None or self.failed:
            await self.abort()  # a dead or hung encoder: what it wrote is not a whole file
            return None
        assert proc.stdin is not None
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.close()
                # A hung encoder never takes the rest of its input.
                await asyncio.wait_for(proc.stdin.wait_closed(), STALL_SECONDS)
            await asyncio.wait_for(proc.wait(), timeout=30)
        except TimeoutError:
            logger.error("The audio recorder did not finish; its recording is dropped")
            self.failed = True
            await self.abort()
            return None
        err = await self._stderr if self._stderr is not None else b""
        if proc.returncode != 0 or self.failed or self.samples == 0:
            if self.samples:
                logger.error("Could not encode the recording: %s", err.decode(errors="replace")[-300:])
            self.discard()
            return None
        return self.path

    async def abort(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        if self._stderr is not None:
            with contextlib.suppress(Exception):
                await self._stderr
        self.discard()

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)

    async def _read_stderr(self) -> bytes:
        assert self._proc is not None and self._proc.stderr is not None
        tail = bytearray()
        while chunk := await self._proc.stderr.read(1024):
            tail += chunk
            del tail[:-STDERR_LIMIT]
        return bytes(tail)


async def join_recordings(
    first: Path | None, first_seconds: float, second: Path, bitrate: int = 24_000
) -> Path:
    """One recording: ``first`` padded with silence to ``first_seconds`` (or only silence when it
    is None), then ``second``. Returns a new spool file; the inputs are left alone."""
    out = spool_path()
    head = (
        ["-i", str(first)]
        if first is not None
        else ["-f", "lavfi", "-i", f"anullsrc=r={SAMPLE_RATE}:cl=mono"]
    )
    norm = f"aresample={SAMPLE_RATE},aformat=sample_fmts=s16:channel_layouts=mono"
    # A stored recording is padded, never cut; the silence source is endless, so it is cut.
    fit = f"apad=whole_dur={first_seconds:.3f}" if first is not None else f"atrim=end={first_seconds:.3f}"
    graph = f"[0:a]{norm},{fit}[a];[1:a]{norm}[b];[a][b]concat=n=2:v=0:a=1[out]"
    proc = await asyncio.create_subprocess_exec(
        *_ffmpeg_head(),
        *head,
        "-i",
        str(second),
        "-filter_complex",
        graph,
        "-map",
        "[out]",
        *_encode_args(bitrate),
        str(out),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        out.unlink(missing_ok=True)
        raise DecodeError(f"Could not join the recordings: {err.decode(errors='replace').strip()[-300:]}")
    return out
