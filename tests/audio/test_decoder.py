"""Unit tests of ``transcribe.audio.decoder``: the real ffmpeg through asyncio pipes, on real speech.

The WebM/Opus and Ogg/Opus inputs are made here by encoding a clip of ``audio_dir`` with ffmpeg, so
no compressed audio is committed. Process hygiene is checked through ``/proc``: every ffmpeg this
process starts must be reaped (no zombie, no child left) and must never open a regular file.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import children, load_wav
from transcribe.audio.decoder import (
    GATHER_BYTES,
    READ_SIZE,
    AsyncAudioDecoder,
    PcmDecoder,
    StreamingDecoder,
    make_decoder,
)
from transcribe.audio.ffmpeg import find_ffmpeg
from transcribe.exceptions import DecodeError

CLIP = "jfk.wav"  # 11 s of real speech
SR = 16_000


def encode(wav: Path, fmt: str) -> bytes:
    """Encode a WAV to Opus in a WebM or Ogg container, in memory."""
    args = [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-nostdin", "-i", str(wav)]
    args += ["-c:a", "libopus", "-b:a", "48k", "-f", fmt, "pipe:1"]
    return subprocess.run(args, capture_output=True, check=True, timeout=60).stdout


@pytest.fixture(scope="module")
def source(audio_dir: Path) -> np.ndarray:
    return load_wav(audio_dir / CLIP)


@pytest.fixture(scope="module")
def blobs(audio_dir: Path) -> dict[str, bytes]:
    """The clip as WebM/Opus and as Ogg/Opus, encoded once per module."""
    return {fmt: encode(audio_dir / CLIP, fmt) for fmt in ("webm", "ogg")}


def assert_reaped(pid: int) -> None:
    assert pid not in children()
    with pytest.raises(ChildProcessError):  # already waited for: not a zombie waiting for us
        os.waitpid(pid, os.WNOHANG)
    assert not Path(f"/proc/{pid}").exists()


def open_regular_files(pid: int) -> list[str]:
    """Files (not pipes, sockets or devices) held open by ``pid``; shared libraries, which the
    dynamic loader may briefly hold open while ffmpeg starts, are not data files."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if (
            target.startswith("/")
            and not target.startswith("/dev/")
            and not re.search(r"\.so(\.[\d.]+)?$|^/etc/ld\.so", target)
        ):
            found.append(target)
    return found


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


class Collector:
    def __init__(self) -> None:
        self.pieces: list[np.ndarray] = []

    async def __call__(self, samples: np.ndarray) -> None:
        assert samples.dtype == np.float32
        self.pieces.append(samples.copy())

    @property
    def samples(self) -> np.ndarray:
        return np.concatenate(self.pieces) if self.pieces else np.zeros(0, dtype=np.float32)


def random_pieces(data: bytes, seed: int, low: int = 1, high: int = 5000) -> list[bytes]:
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(data):
        n = rng.randint(low, high)
        pieces.append(data[i : i + n])
        i += n
    return pieces


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """An empty temp dir that both Python (tempfile) and ffmpeg (TMPDIR) would use, so any temp file
    shows up there (a listing of the shared /tmp would race other processes)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    assert tempfile.gettempdir() == str(folder)
    return folder


# -- AsyncAudioDecoder.decode_webm_to_numpy ---------------------------------------------------


@pytest.mark.parametrize("fmt", ["webm", "ogg"])
async def test_blob_decode_matches_the_source(fmt, blobs, source, private_tmp):
    before = children()
    samples = await AsyncAudioDecoder.decode_webm_to_numpy(blobs[fmt], fmt)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - len(source)) / SR <= 0.020
    assert correlation(samples, source) > 0.8
    assert np.abs(samples).max() <= 1.0
    assert children() <= before  # the ffmpeg it ran is reaped
    assert list(private_tmp.iterdir()) == []


async def test_blob_decode_can_probe_the_format(blobs, source):
    samples = await AsyncAudioDecoder.decode_webm_to_numpy(blobs["ogg"], input_format=None)
    assert abs(len(samples) - len(source)) / SR <= 0.020
    assert correlation(samples, source) > 0.8


@pytest.mark.parametrize(
    "blob",
    [
        os.urandom(4096),
        b"this is not audio at all" * 100,
        b"",
    ],
    ids=["random", "text", "empty"],
)
async def test_blob_decode_of_garbage_raises_decode_error(blob):
    before = children()
    with pytest.raises(DecodeError, match="ffmpeg could not decode"):
        await AsyncAudioDecoder.decode_webm_to_numpy(blob)
    assert children() <= before


async def test_blob_decode_of_mislabelled_container_raises(blobs):
    with pytest.raises(DecodeError):
        await AsyncAudioDecoder.decode_webm_to_numpy(blobs["ogg"], "webm")


async def test_blob_decode_runs_concurrently_without_blocking_the_loop(blobs, source):
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    try:
        results = await asyncio.gather(
            *(AsyncAudioDecoder.decode_webm_to_numpy(blobs["webm"]) for _ in range(3))
        )
    finally:
        task.cancel()
    assert ticks > 3  # the loop kept running while ffmpeg worked
    for samples in results:
        np.testing.assert_array_equal(samples, results[0])


# -- StreamingDecoder -------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "seed"), [("webm", 1), ("webm", 2), ("ogg", 3)])
async def test_streaming_decode_equals_blob_decode(fmt, seed, blobs, source, private_tmp):
    expected = await AsyncAudioDecoder.decode_webm_to_numpy(blobs[fmt], fmt)
    out = Collector()
    dec = make_decoder(fmt, out)
    assert isinstance(dec, StreamingDecoder)
    assert not dec.running
    pieces = random_pieces(blobs[fmt], seed)
    for i, piece in enumerate(pieces):
        await dec.feed(piece)
        if i == len(pieces) // 2:
            pid = dec._proc.pid
            assert dec.running
            for _ in range(200):  # once ffmpeg is decoding (not still loading its libraries)
                if out.pieces:
                    break
                await asyncio.sleep(0.01)
            assert open_regular_files(pid) == []  # pipes only, no file touches disk
        if i % 7 == 0:
            await asyncio.sleep(0)
    assert dec.bytes_in == len(blobs[fmt])
    await dec.close()
    assert dec._proc.returncode == 0 and not dec.running
    assert_reaped(pid)
    np.testing.assert_array_equal(out.samples, expected)
    assert correlation(out.samples, source) > 0.8
    assert list(private_tmp.iterdir()) == []


async def test_streaming_decoder_emits_pcm_before_the_stream_ends(blobs):
    """The point of naming the input format: PCM comes out while the stream is still being fed."""
    out = Collector()
    dec = StreamingDecoder("webm", out)
    data = blobs["webm"]
    half = len(data) // 2
    try:
        for piece in random_pieces(data[:half], 5, 500, 2000):
            await dec.feed(piece)
        for _ in range(200):  # up to 2 s
            if len(out.samples) > SR:
                break
            await asyncio.sleep(0.01)
        assert len(out.samples) > SR
    finally:
        await dec.close()


async def test_streaming_decoder_hands_on_each_chunk_in_one_piece(blobs, monkeypatch):
    """ffmpeg answers a written chunk one 20 ms packet at a time; the decoder gathers them, so the
    VAD runs once per chunk. (A wider gathering window here than the shipped 2 ms, so that a loaded
    machine, where ffmpeg's packets come further apart, cannot split a chunk.)"""
    monkeypatch.setattr("transcribe.audio.decoder.GATHER_SECONDS", 0.05)
    out = Collector()
    dec = StreamingDecoder("webm", out)
    data = blobs["webm"]
    chunk = len(data) // 44  # jfk's 11 s in 250 ms pieces, as a MediaRecorder sends them
    handed_on = []
    try:
        for start in range(0, chunk * 12, chunk):
            before = len(out.pieces)
            await dec.feed(data[start : start + chunk])
            await asyncio.sleep(0.2)
            handed_on.append(len(out.pieces) - before)
    finally:
        await dec.close()
    assert max(handed_on) == 1 and sum(handed_on) >= 10, handed_on


async def test_streaming_decoder_hands_on_a_fast_stream_a_second_at_most(blobs, source):
    """Fed all at once, the audio still comes in bounded pieces, and all of it."""
    out = Collector()
    dec = StreamingDecoder("webm", out)
    await dec.feed(blobs["webm"])
    await dec.close()
    sizes = [len(piece) for piece in out.pieces]
    assert len(sizes) > 1 and max(sizes) <= (GATHER_BYTES + READ_SIZE) // 2, sizes  # samples
    assert abs(sum(sizes) - len(source)) / SR <= 0.020


async def test_close_without_start_and_twice_is_harmless(blobs):
    dec = StreamingDecoder("webm", Collector())
    await dec.close()
    await dec.abort()
    await dec.feed(blobs["webm"][:1000])
    pid = dec._proc.pid
    await dec.close()
    await dec.close()
    await dec.abort()
    assert dec._proc.returncode is not None
    assert_reaped(pid)


async def test_abort_kills_a_running_ffmpeg(blobs):
    out = Collector()
    dec = StreamingDecoder("webm", out)
    await dec.feed(blobs["webm"][:20_000])  # a stream that has not ended: ffmpeg waits for more
    pid = dec._proc.pid
    await asyncio.sleep(0.05)
    assert dec.running and pid in children()
    await asyncio.wait_for(dec.abort(), 5)
    assert dec._proc.returncode == -9  # SIGKILL, not a clean end of input
    assert not dec.running
    assert dec._reader.done() and dec._stderr.done()
    assert_reaped(pid)


async def test_garbage_stream_raises_decode_error_from_feed():
    dec = StreamingDecoder("webm", Collector())
    garbage = random.Random(0).randbytes(2048)
    with pytest.raises(DecodeError, match="Could not decode the webm stream"):
        for _ in range(500):  # ffmpeg needs a moment to give up; feed until it has
            await dec.feed(garbage)
            await asyncio.sleep(0.01)
    pid = dec._proc.pid
    with pytest.raises(DecodeError):  # and it keeps saying so
        await dec.feed(garbage)
    await dec.abort()
    assert_reaped(pid)


async def test_on_error_reports_a_dead_ffmpeg_without_another_write():
    errors: list[DecodeError] = []
    reported = asyncio.Event()

    async def on_error(exc: DecodeError) -> None:
        errors.append(exc)
        reported.set()

    dec = make_decoder("webm", Collector(), on_error)
    await dec.feed(random.Random(1).randbytes(2048))  # not even an EBML header
    await asyncio.wait_for(
        reported.wait(), 20
    )  # ffmpeg gave up: told without another feed (bound generous for loaded CI machines)
    assert len(errors) == 1 and isinstance(errors[0], DecodeError)
    assert "Could not decode the webm stream" in str(errors[0])
    pid = dec._proc.pid
    await dec.abort()
    assert_reaped(pid)
    assert len(errors) == 1


async def test_on_error_is_not_called_on_a_clean_close_or_abort(blobs):
    errors: list[DecodeError] = []

    async def on_error(exc: DecodeError) -> None:
        errors.append(exc)

    closed = StreamingDecoder("webm", Collector(), on_error)
    await closed.feed(blobs["webm"])
    await closed.close()
    aborted = StreamingDecoder("webm", Collector(), on_error)
    await aborted.feed(blobs["webm"][:5000])
    await aborted.abort()
    await asyncio.sleep(0.05)
    assert errors == []


async def test_streaming_decoder_delivers_the_tail_on_close(blobs, source):
    """Everything fed is decoded by the time close() returns (nothing stuck in ffmpeg)."""
    out = Collector()
    dec = StreamingDecoder("ogg", out)
    await dec.feed(blobs["ogg"])
    await dec.close()
    assert abs(len(out.samples) - len(source)) / SR <= 0.020


# -- PcmDecoder -------------------------------------------------------------------------------


async def test_pcm_s16le_odd_splits_keep_samples_exact():
    rng = np.random.default_rng(0)
    values = rng.integers(-32768, 32768, size=20_001, dtype=np.int16)
    values[:4] = [-32768, 32767, 0, -1]
    raw = values.astype("<i2").tobytes()
    out = Collector()
    dec = make_decoder("pcm_s16le", out)
    assert isinstance(dec, PcmDecoder)
    for piece in random_pieces(raw, 7, 1, 999):  # many pieces of odd length split a sample
        await dec.feed(piece)
    await dec.feed(b"")
    np.testing.assert_array_equal(out.samples, values.astype(np.float32) / 32768.0)
    assert out.samples[0] == -1.0 and out.samples[1] == 32767 / 32768


async def test_pcm_s16le_real_speech_round_trip(audio_dir):
    source = load_wav(audio_dir / CLIP)
    raw = np.round(source * 32768).astype("<i2").tobytes()
    out = Collector()
    dec = PcmDecoder("pcm_s16le", out)
    for piece in random_pieces(raw, 3, 1, 8001):
        await dec.feed(piece)
    np.testing.assert_array_equal(out.samples, source)


async def test_pcm_trailing_partial_sample_waits():
    out = Collector()
    dec = PcmDecoder("pcm_s16le", out)
    await dec.feed(b"\x01")
    assert out.pieces == []  # half a sample: nothing yet
    await dec.feed(b"\x00\x02")
    assert out.samples.tolist() == [1 / 32768]
    await dec.feed(b"\x00")
    assert out.samples.tolist() == [1 / 32768, 2 / 32768]
    await dec.close()
    await dec.feed(b"\x03")  # close() dropped nothing that mattered; new data starts clean
    await dec.feed(b"\x00")
    assert out.samples.tolist()[-1] == 3 / 32768


async def test_pcm_f32le_splits_and_clipping():
    values = np.array([0.0, 0.5, -0.25, 1.0, -1.0, 1.5, -3.0, 63.0], dtype="<f4")
    raw = values.tobytes()
    out = Collector()
    dec = make_decoder("pcm_f32le", out)
    for piece in (raw[:3], raw[3:10], raw[10:11], raw[11:]):
        await dec.feed(piece)
    np.testing.assert_array_equal(out.samples, np.clip(values, -1, 1))
    assert out.samples.dtype == np.float32


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e6])
async def test_pcm_f32le_rejects_non_finite_and_absurd_values(bad):
    out = Collector()
    dec = PcmDecoder("pcm_f32le", out)
    raw = np.array([0.1, bad, 0.2], dtype="<f4").tobytes()
    with pytest.raises(DecodeError, match="finite"):
        await dec.feed(raw)
    assert out.pieces == []  # nothing of the bad frame reached the pipeline


@pytest.mark.parametrize("fmt", ["mp3", "pcm_s24le", "", "WEBM"])
def test_make_decoder_unknown_format(fmt):
    async def sink(samples):  # never called
        raise AssertionError

    with pytest.raises(DecodeError, match="Unsupported audio format"):
        make_decoder(fmt, sink)
    with pytest.raises(ValueError):  # DecodeError is also a ValueError
        make_decoder(fmt, sink)


# -- a failing PCM callback ------------------------------------------------------------------

LONG_CLIP = "ljspeech_LJ001-0001_to_0008.wav"  # 52 s: 1.6 MB as WAV, more than the pipes hold


async def failing_sink(samples: np.ndarray) -> None:
    raise RuntimeError("the pipeline behind the decoder failed")


async def unstick(dec: StreamingDecoder) -> None:
    """Test cleanup only: kill ffmpeg and read its stdout to EOF so asyncio can reap it."""
    proc = dec._proc
    if proc.returncode is None:
        proc.kill()
    await asyncio.wait_for(proc.stdout.read(), 5)
    await asyncio.wait_for(proc.wait(), 5)
    if dec._reader.done() and not dec._reader.cancelled():
        dec._reader.exception()  # retrieved: no "exception never retrieved" noise
    await dec.abort()


async def test_feed_raises_when_the_pcm_callback_fails(audio_dir):
    """Regression: a failing on_pcm used to kill the reader task silently; nobody read ffmpeg's
    stdout, ffmpeg stopped reading stdin, and feed() waited in drain() forever.
    """
    dec = StreamingDecoder("wav", failing_sink)
    data = (audio_dir / LONG_CLIP).read_bytes()
    raised: BaseException | None = None
    try:
        async with asyncio.timeout(2):
            for piece in random_pieces(data, 11, 4000, 16000):
                await dec.feed(piece)
    except TimeoutError:
        pytest.fail("feed() hung after the PCM callback failed")
    except Exception as exc:
        raised = exc
    finally:
        await unstick(dec)
    assert isinstance(raised, DecodeError), f"the callback's failure was swallowed or mistyped: {raised!r}"


async def test_abort_returns_after_the_pcm_callback_failed(blobs):
    """Regression: with unread PCM left in a paused stdout transport, proc.wait() (which on
    Python 3.11 waits for every pipe to close) never returned, so abort() and close() hung.
    """
    dec = StreamingDecoder("webm", failing_sink)
    # 68 kB of Opus fit in the stdin pipe, but decode to 350 kB of PCM: more than the stdout pipe
    # plus the reader's buffer hold, so the stdout transport ends up paused with data in it.
    await dec.feed(blobs["webm"])
    await asyncio.sleep(0.3)
    try:
        await asyncio.wait_for(dec.abort(), 2)
        assert not dec.running
    except TimeoutError:
        pytest.fail("abort() hung after the PCM callback failed")
    finally:
        await unstick(dec)
