"""Locate an ffmpeg binary: the system's if present, else the one bundled by imageio-ffmpeg; and
write to one through its stdin pipe.

So ``pip install`` alone is enough to decode WebM/Ogg, and a system ffmpeg (often newer, with
hardware codecs) wins where there is one.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil

from ..exceptions import DecodeError


@functools.cache
def find_ffmpeg() -> str:
    """Path of the ffmpeg to run; ``TRANSCRIBE_FFMPEG`` in the environment overrides the search."""
    if explicit := os.environ.get("TRANSCRIBE_FFMPEG"):
        return explicit
    if system := shutil.which("ffmpeg"):
        return system
    try:
        import imageio_ffmpeg
    except ImportError:
        raise DecodeError("ffmpeg was not found: install it, or `pip install imageio-ffmpeg`") from None
    return str(imageio_ffmpeg.get_ffmpeg_exe())


async def write_to_pipe(stdin: asyncio.StreamWriter, data: bytes, timeout: float) -> None:
    """Write to a subprocess's stdin, waiting at most ``timeout`` seconds for room in the pipe.

    Raises BrokenPipeError or ConnectionResetError when the process has gone, TimeoutError when it
    stopped reading. A write that the pipe takes at once (nearly all: 250 ms of audio is a few KiB)
    skips the drain, whose ``wait_for`` costs a task and a turn of the event loop per audio chunk.
    """
    stdin.write(data)
    transport = stdin.transport
    if transport.get_write_buffer_size() or transport.is_closing():
        await asyncio.wait_for(stdin.drain(), timeout)
