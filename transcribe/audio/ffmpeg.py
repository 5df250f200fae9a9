"""Locate an ffmpeg binary: the system's if present, else the one bundled by imageio-ffmpeg.

So ``pip install`` alone is enough to decode WebM/Ogg, and a system ffmpeg (often newer, with
hardware codecs) wins where there is one.
"""

from __future__ import annotations

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
