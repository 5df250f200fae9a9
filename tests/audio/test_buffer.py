"""Unit tests of ``OptimizedAudioBuffer``, the bounded ring buffer with absolute sample offsets.

The buffer is checked against a plain numpy reference that keeps the whole stream: every read must
return exactly the reference's samples, offsets must agree, and samples lost to the bound must be
counted in ``dropped``. Signals are generated (ramps, noise); no recognition happens here.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from transcribe.audio.buffer import OptimizedAudioBuffer

CAPACITY = 100  # samples: max_seconds=1 at a 100 Hz "sample rate" keeps the cases small


def ramp(start: int, n: int) -> np.ndarray:
    """Samples whose value is their absolute offset: any misplaced sample shows."""
    return np.arange(start, start + n, dtype=np.float32)


class Reference:
    """What the buffer must behave like: the whole stream plus [start, end) of what is held."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.stream = np.zeros(0, dtype=np.float32)
        self.start = 0
        self.dropped = 0

    @property
    def end(self) -> int:
        return len(self.stream)

    def add(self, chunk: np.ndarray) -> None:
        self.stream = np.concatenate((self.stream, chunk))
        overflow = self.end - self.start - self.capacity
        if overflow > 0:  # unread samples pushed out by the bound
            self.start += overflow
            self.dropped += overflow

    def get(self, start: int, end: int | None = None) -> np.ndarray:
        end = self.end if end is None else min(end, self.end)
        start = max(start, self.start)
        return self.stream[start:end] if end > start else np.zeros(0, dtype=np.float32)

    def trim(self, offset: int) -> None:
        self.start = max(self.start, min(offset, self.end))


def assert_same(buf: OptimizedAudioBuffer, ref: Reference) -> None:
    assert (buf.start, buf.end, len(buf)) == (ref.start, ref.end, ref.end - ref.start)
    held = buf.get(0)
    assert held.dtype == np.float32
    np.testing.assert_array_equal(held, ref.get(0))


def make() -> OptimizedAudioBuffer:
    return OptimizedAudioBuffer(max_seconds=1.0, sample_rate=CAPACITY)


# -- basics -----------------------------------------------------------------------------------


def test_new_buffer_is_empty_and_preallocated():
    buf = OptimizedAudioBuffer()  # defaults: 60 s at 16 kHz
    assert buf.capacity == 60 * 16_000
    assert buf._data.shape == (buf.capacity,) and buf._data.dtype == np.float32
    assert (len(buf), buf.start, buf.end, buf.dropped, buf.duration) == (0, 0, 0, 0, 0.0)
    assert buf.get(0).size == 0
    assert buf.get_recent_audio(5).size == 0


def test_add_and_get_by_absolute_offsets():
    buf = make()
    buf.add_audio(ramp(0, 30))
    buf.add_audio(ramp(30, 20))
    assert len(buf) == 50 and buf.end == 50 and buf.duration == 0.5
    np.testing.assert_array_equal(buf.get(0), ramp(0, 50))
    np.testing.assert_array_equal(buf.get(10, 25), ramp(10, 15))
    np.testing.assert_array_equal(buf.get(40, 1000), ramp(40, 10))  # end clipped to what was received
    assert buf.get(25, 25).size == 0
    assert buf.get(30, 10).size == 0  # reversed range


def test_empty_chunk_is_a_no_op():
    buf = make()
    buf.add_audio(ramp(0, 10))
    buf.add_audio(np.zeros(0, dtype=np.float32))
    assert (buf.start, buf.end, buf.dropped) == (0, 10, 0)


def test_get_returns_a_copy():
    buf = make()
    buf.add_audio(ramp(0, 40))
    for out in (buf.get(0, 20), buf.get_recent_audio(0.1)):
        out[:] = -1.0
    np.testing.assert_array_equal(buf.get(0), ramp(0, 40))


def test_get_recent_audio():
    buf = make()
    buf.add_audio(ramp(0, 70))
    np.testing.assert_array_equal(buf.get_recent_audio(0.25), ramp(45, 25))
    np.testing.assert_array_equal(buf.get_recent_audio(5.0), ramp(0, 70))  # more than held: all of it
    assert buf.get_recent_audio(0).size == 0
    buf.trim(60)
    np.testing.assert_array_equal(buf.get_recent_audio(0.5), ramp(60, 10))  # never what was trimmed


def test_trim_forgets_old_audio_and_never_moves_backwards():
    buf = make()
    buf.add_audio(ramp(0, 80))
    buf.trim(30)
    assert (buf.start, len(buf)) == (30, 50)
    assert buf.get(0, 40).tolist() == ramp(30, 10).tolist()  # reads before start are clipped
    buf.trim(10)  # behind start: ignored
    assert buf.start == 30
    buf.trim(500)  # beyond end: clipped to end
    assert (buf.start, buf.end, len(buf)) == (80, 80, 0)
    assert buf.dropped == 0


def test_clear_keeps_offsets():
    buf = make()
    buf.add_audio(ramp(0, 60))
    buf.clear()
    assert (len(buf), buf.start, buf.end) == (0, 60, 60)
    assert buf.get(0).size == 0
    buf.add_audio(ramp(60, 10))
    np.testing.assert_array_equal(buf.get(0), ramp(60, 10))
    assert buf.dropped == 0


# -- wrap-around and the bound ----------------------------------------------------------------


def test_wrap_around_reads_across_the_seam():
    buf = make()
    buf.add_audio(ramp(0, 70))
    buf.trim(60)
    buf.add_audio(ramp(70, 60))  # writes 70..99 at the end of the array, 100..129 at its start
    assert buf.dropped == 0
    np.testing.assert_array_equal(buf.get(0), ramp(60, 70))
    np.testing.assert_array_equal(buf.get(95, 105), ramp(95, 10))  # straddles the seam
    np.testing.assert_array_equal(buf.get(100, 130), ramp(100, 30))  # starts exactly at the seam
    np.testing.assert_array_equal(buf.get(60, 100), ramp(60, 40))  # ends exactly at the seam


def test_full_buffer_returns_exactly_capacity():
    buf = make()
    buf.add_audio(ramp(0, 37))
    buf.trim(37)
    buf.add_audio(ramp(37, CAPACITY))  # full, wrapped: start and end map to the same slot
    assert len(buf) == CAPACITY and buf.dropped == 0
    np.testing.assert_array_equal(buf.get(0), ramp(37, CAPACITY))
    buf2 = make()
    buf2.add_audio(ramp(0, CAPACITY))  # full, not wrapped: end maps to slot 0
    np.testing.assert_array_equal(buf2.get(0), ramp(0, CAPACITY))


def test_overflow_drops_the_oldest_and_counts_them(caplog):
    buf = make()
    buf.add_audio(ramp(0, 80))
    with caplog.at_level("WARNING", logger="transcribe.audio.buffer"):
        buf.add_audio(ramp(80, 50))
    assert buf.dropped == 30
    assert (buf.start, buf.end, len(buf)) == (30, 130, CAPACITY)
    np.testing.assert_array_equal(buf.get(0), ramp(30, CAPACITY))
    assert any("dropped 30 samples" in r.getMessage() for r in caplog.records)


def test_trimmed_audio_overwritten_is_not_a_drop():
    buf = make()
    for i in range(20):
        buf.add_audio(ramp(i * 40, 40))
        buf.trim(buf.end - 10)  # a reader keeping up
    assert buf.dropped == 0
    assert buf.end == 800


def test_chunk_larger_than_capacity_keeps_the_newest_samples():
    buf = make()
    buf.add_audio(ramp(0, 20))
    buf.add_audio(ramp(20, 3 * CAPACITY + 7))
    assert buf.end == 20 + 3 * CAPACITY + 7
    assert len(buf) == CAPACITY
    np.testing.assert_array_equal(buf.get(0), ramp(buf.end - CAPACITY, CAPACITY))
    np.testing.assert_array_equal(buf.get_recent_audio(0.1), ramp(buf.end - 10, 10))
    # and the buffer still works as a ring afterwards
    buf.add_audio(ramp(buf.end, 33))
    np.testing.assert_array_equal(buf.get(0), ramp(buf.end - CAPACITY, CAPACITY))


def test_chunk_larger_than_capacity_counts_the_lost_samples():
    """Regression: an oversized chunk used to move ``start`` past the unread samples without
    counting them (nor the chunk's own skipped head) in ``dropped``.
    """
    buf = make()
    buf.add_audio(ramp(0, 20))
    buf.add_audio(ramp(20, 3 * CAPACITY + 7))
    assert buf.dropped == 20 + 2 * CAPACITY + 7


def test_memory_is_bounded_and_never_reallocated():
    buf = OptimizedAudioBuffer(max_seconds=2.0)
    data = buf._data
    rng = np.random.default_rng(1)
    for _ in range(500):  # 500 chunks of up to 0.5 s: far more than capacity
        buf.add_audio(rng.standard_normal(int(rng.integers(1, 8000))).astype(np.float32))
        assert len(buf) <= buf.capacity
    assert buf._data is data and data.shape == (32_000,) and data.nbytes == 32_000 * 4
    assert buf.end > 50 * buf.capacity
    assert buf.dropped == buf.end - buf.capacity  # nothing was trimmed, so all but the newest are drops


# -- property tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_randomized_against_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    buf, ref = make(), Reference(CAPACITY)
    for _ in range(400):
        op = rng.integers(0, 10)
        if op < 6:
            n = int(rng.integers(0, CAPACITY + 1))
            chunk = rng.standard_normal(n).astype(np.float32)
            buf.add_audio(chunk)
            ref.add(chunk)
        elif op < 8:
            offset = int(rng.integers(ref.start - 20, ref.end + 20))
            buf.trim(offset)
            ref.trim(offset)
        elif op == 8:
            a = int(rng.integers(max(0, ref.start - 30), ref.end + 30))
            b = int(rng.integers(a - 10, ref.end + 30))
            np.testing.assert_array_equal(buf.get(a, b), ref.get(a, b))
            seconds = float(rng.uniform(0, 1.5))
            np.testing.assert_array_equal(
                buf.get_recent_audio(seconds), ref.get(ref.end - int(seconds * CAPACITY))
            )
        else:
            buf.clear()
            ref.trim(ref.end)
        assert_same(buf, ref)
        assert buf.dropped == ref.dropped


class BufferMachine(RuleBasedStateMachine):
    """Hypothesis drives adds of any size (oversized chunks included), trims, clears and reads;
    contents, offsets and the count of dropped samples must match the reference after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.buf = make()
        self.ref = Reference(CAPACITY)
        self.data = self.buf._data

    @rule(n=st.integers(0, int(2.5 * CAPACITY)))
    def add(self, n):
        chunk = ramp(self.ref.end, n)
        self.buf.add_audio(chunk)
        self.ref.add(chunk)

    @precondition(lambda self: self.ref.end > 0)
    @rule(data=st.data())
    def trim(self, data):
        offset = data.draw(st.integers(self.ref.start - 5, self.ref.end + 5))
        self.buf.trim(offset)
        self.ref.trim(offset)

    @rule()
    def clear(self):
        self.buf.clear()
        self.ref.trim(self.ref.end)

    @rule(data=st.data())
    def read(self, data):
        a = data.draw(st.integers(0, self.ref.end + 5))
        b = data.draw(st.none() | st.integers(0, self.ref.end + 5))
        np.testing.assert_array_equal(self.buf.get(a, b), self.ref.get(a, b))

    @rule(seconds=st.floats(0, 3, allow_nan=False))
    def recent(self, seconds):
        expected = self.ref.get(self.ref.end - int(seconds * CAPACITY))
        np.testing.assert_array_equal(self.buf.get_recent_audio(seconds), expected)

    @invariant()
    def matches_reference(self):
        assert_same(self.buf, self.ref)
        assert self.buf.dropped == self.ref.dropped
        assert len(self.buf) <= CAPACITY
        assert self.buf._data is self.data and self.data.shape == (CAPACITY,)


BufferMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
test_buffer_state_machine = BufferMachine.TestCase


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, CAPACITY), min_size=1, max_size=40), keep=st.integers(0, CAPACITY))
def test_drops_are_counted_exactly(sizes, keep):
    """Chunks up to capacity, a reader that keeps only ``keep`` samples: lost = dropped, exactly."""
    buf, ref = make(), Reference(CAPACITY)
    for i, n in enumerate(sizes):
        chunk = ramp(ref.end, n)
        buf.add_audio(chunk)
        ref.add(chunk)
        if i % 3 == 2:
            buf.trim(ref.end - keep)
            ref.trim(ref.end - keep)
        assert buf.dropped == ref.dropped
        assert_same(buf, ref)
