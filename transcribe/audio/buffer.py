"""``OptimizedAudioBuffer``: a bounded numpy ring buffer of 16 kHz mono float32 audio.

Appending is O(len(chunk)) whatever the buffer holds (the seed's naive version re-concatenated
everything on each add). Samples are addressed by absolute offsets since the start of the stream,
so the streaming policy can keep time stamps while old audio is trimmed or overwritten.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000


class OptimizedAudioBuffer:
    def __init__(self, max_seconds: float = 60.0, sample_rate: int = SAMPLE_RATE) -> None:
        self.sample_rate = sample_rate
        self.capacity = int(max_seconds * sample_rate)
        self._data = np.zeros(self.capacity, dtype=np.float32)
        self.end = 0  # absolute offset one past the newest sample
        self.start = 0  # absolute offset of the oldest sample still held
        self.dropped = 0  # samples overwritten before being trimmed (the reader fell behind)

    def __len__(self) -> int:
        return self.end - self.start

    @property
    def duration(self) -> float:
        """Seconds of audio received since the stream started (not just held)."""
        return self.end / self.sample_rate

    def add_audio(self, chunk: npt.NDArray[np.float32]) -> None:
        n = len(chunk)
        if n == 0:
            return
        if n > self.capacity:  # only the newest capacity samples can be kept
            skipped = n - self.capacity
            self.dropped += len(self) + skipped
            logger.warning("Audio chunk larger than the buffer: dropped %d samples", len(self) + skipped)
            self.end += skipped
            self.start = self.end
            chunk = chunk[skipped:]
            n = self.capacity
        pos = self.end % self.capacity
        first = min(n, self.capacity - pos)
        self._data[pos : pos + first] = chunk[:first]
        if first < n:
            self._data[: n - first] = chunk[first:]
        self.end += n
        overflow = self.end - self.start - self.capacity
        if overflow > 0:
            # Like channels_redis' BoundedQueue: drop the oldest rather than grow without bound.
            self.start += overflow
            self.dropped += overflow
            logger.warning("Audio buffer full: dropped %d samples of unprocessed audio", overflow)

    def get(self, start: int, end: int | None = None) -> npt.NDArray[np.float32]:
        """A copy of samples [start, end) by absolute offsets, clipped to what is held."""
        end = self.end if end is None else min(end, self.end)
        start = max(start, self.start)
        if end <= start:
            return np.zeros(0, dtype=np.float32)
        a, b = start % self.capacity, end % self.capacity
        if a < b or end - start < self.capacity and b == 0:
            return self._data[a : b or self.capacity].copy()
        return np.concatenate((self._data[a:], self._data[:b]))

    def get_recent_audio(self, seconds: float) -> npt.NDArray[np.float32]:
        """The newest ``seconds`` of audio (less if the buffer holds less)."""
        return self.get(self.end - int(seconds * self.sample_rate))

    def trim(self, offset: int) -> None:
        """Forget everything before absolute ``offset`` (committed audio)."""
        self.start = max(self.start, min(offset, self.end))

    def clear(self) -> None:
        self.start = self.end
