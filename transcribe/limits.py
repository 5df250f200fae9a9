"""Per-connection rate limits: token buckets over frames and audio bytes (issue: floods).

Daphne queues a connection's frames in memory without bound, so slowing down the reader does not
slow down a flooding client; the only defence is to notice the flood and close the socket.
"""

from __future__ import annotations

import time

# Bytes of one second of audio, at most, in each stt.v1 format. Compressed formats are bounded by a
# generous bitrate (Opus at 128 kbit/s); WAV by 48 kHz stereo s16.
BYTES_PER_SECOND = {
    "pcm_s16le": 32_000,
    "pcm_f32le": 64_000,
    "webm": 16_000,
    "ogg": 16_000,
    "wav": 192_000,
}


class TokenBucket:
    """``rate`` units per second, up to ``burst`` saved up; ``take`` says whether ``amount`` fits."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = time.monotonic()

    def take(self, amount: float = 1.0) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if amount > self.tokens:
            return False
        self.tokens -= amount
        return True
