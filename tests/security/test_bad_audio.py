"""Bad audio through the real consumer: each case ends in an ``error`` event or a clean close, every
ffmpeg it started is reaped, and the finals stored before it stay as they were.

Already covered elsewhere: garbage announced as webm gives ``bad_audio`` and the socket stays open
(tests/test_consumers.py::test_garbage_webm_gives_error_and_the_socket_stays_open); the decoders
themselves on garbage, NaN/inf and a killed ffmpeg (tests/audio/test_decoder.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import signal
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from tests.conftest import load_wav
from tests.security.conftest import children, settled_children, zombies
from tests.test_consumers import CHUNK, communicator, receive_until, start, webm_of
from transcribe.audio.ffmpeg import find_ffmpeg
from transcribe.consumers import TranscribeConsumer
from transcribe.models import TranscriptSegment, TranscriptSession
from transcribe.protocol import CloseCode
from transcribe.streaming.replay import pcm_s16le

pytestmark = pytest.mark.django_db(transaction=True)

GOLDEN = "librispeech_61-70968-0002.wav"  # 3 s: "A golden fortune and a happy life."


async def events_until(comm: WebsocketCommunicator, kind: str, timeout: float = 60) -> list[dict[str, Any]]:
    return await receive_until(comm, kind, timeout=timeout)


async def still_open(comm: WebsocketCommunicator) -> list[dict[str, Any]]:
    """Events up to the answer to a bad message: the socket is open and the consumer responsive."""
    await comm.send_json_to({"type": "keepalive"})
    await comm.send_to(text_data='{"type": 0}')
    events = []
    while True:
        event = await comm.receive_json_from(timeout=30)
        events.append(event)
        if event["type"] == "error" and event["code"] == "bad_message":
            return events


async def stop(comm: WebsocketCommunicator) -> list[dict[str, Any]]:
    await comm.send_json_to({"type": "stop"})
    events = await events_until(comm, "closed", timeout=120)
    assert await comm.receive_output(timeout=10) == {"type": "websocket.close", "code": CloseCode.NORMAL}
    await comm.disconnect()
    return events


async def speech_final(comm: WebsocketCommunicator, data: bytes, chunk: int) -> dict[str, Any]:
    """Send speech that ends in a second of silence, and return its final (stored before it was
    sent). Not ``finalize``: with a compressed stream it can overtake the audio still in ffmpeg."""
    for i in range(0, len(data), chunk):
        await comm.send_to(bytes_data=data[i : i + chunk])
    return (await events_until(comm, "final"))[-1]


def encode(wav: Path, fmt: str, pad: float = 1.0, seconds: float | None = None) -> bytes:
    """A clip (its first ``seconds``) with ``pad`` seconds of silence after it, as Opus in WebM or Ogg."""
    args = [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-nostdin"]
    args += [*(["-t", str(seconds)] if seconds else []), "-i", str(wav), "-af", f"apad=pad_dur={pad}"]
    args += ["-c:a", "libopus", "-b:a", "32k", "-f", fmt, "pipe:1"]
    return subprocess.run(args, capture_output=True, check=True, timeout=60).stdout


def padded_pcm(wav: Path, pad: float = 1.0) -> npt.NDArray[np.float32]:
    samples = load_wav(wav)
    return np.concatenate((samples, np.zeros(int(pad * 16000), dtype=np.float32)))


async def stored(session_id: str) -> list[tuple[int, int, str]]:
    return await database_sync_to_async(
        lambda: list(
            TranscriptSegment.objects.filter(session_id=session_id)
            .order_by("seq")
            .values_list("id", "seq", "text")
        )
    )()


def codes(events: list[dict[str, Any]]) -> list[str]:
    return [e["code"] for e in events if e["type"] == "error"]


def ffmpeg_children(before: set[int]) -> set[int]:
    found = set()
    for pid in children() - before:
        with contextlib.suppress(FileNotFoundError):
            if "ffmpeg" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                found.add(pid)
    return found


def assert_reaped(pid: int) -> None:
    assert pid not in children()
    with pytest.raises(ChildProcessError):  # already waited for: not a zombie waiting for us
        os.waitpid(pid, os.WNOHANG)


@pytest.fixture(scope="module")
def golden_webm(audio_dir: Path) -> bytes:
    return encode(audio_dir / GOLDEN, "webm")


@pytest.fixture(scope="module")
def jfk_webm(audio_dir: Path) -> bytes:
    return webm_of(audio_dir / "jfk.wav")


@pytest.fixture(scope="module")
def fellow_webm(audio_dir: Path) -> bytes:
    """ "And so my fellow Americans.", then a second of silence."""
    return encode(audio_dir / "jfk.wav", "webm", seconds=2.6)


# -- compressed streams ---------------------------------------------------------------------------


async def test_garbage_after_speech_keeps_the_final_and_reaps_ffmpeg(alice: Any, golden_webm: bytes) -> None:
    before = children()
    comm = communicator(alice)
    ready = await start(comm, format="webm")
    final = await speech_final(comm, golden_webm, 1000)
    assert "golden fortune" in final["text"].lower()
    rng = random.Random(1)
    for _ in range(50):
        await comm.send_to(bytes_data=rng.randbytes(1000))
    events = await still_open(comm)
    events += await stop(comm)
    # ffmpeg's Matroska demuxer may skip garbage inside a good stream (resync) or give up on it.
    assert set(codes(events)) <= {"bad_audio", "bad_message"}  # bad_message: still_open's probe
    assert not [e for e in events if e["type"] == "final"]  # garbage is never text
    assert events[-1]["text"] == final["text"]
    assert await stored(ready["session"]) == [(final["id"], 1, final["text"])]
    assert not await settled_children(before)


@pytest.mark.parametrize("damage", ["cut", "hole"])
async def test_a_truncated_webm_stream_keeps_what_came_before(
    alice: Any, fellow_webm: bytes, damage: str
) -> None:
    """The stream stops mid-cluster after the first sentence (the browser tab died), or loses 1.5 kB
    in the middle (a proxy dropped a frame): nothing hangs, every final sent is stored, and what was
    said before the damage is kept."""
    before = children()
    if damage == "cut":
        data = fellow_webm[: len(fellow_webm) * 3 // 4]  # about 2.7 s of 3.6: near "...Americans."
    else:
        middle = len(fellow_webm) // 3
        data = fellow_webm[:middle] + fellow_webm[middle + 1500 :]
    comm = communicator(alice)
    ready = await start(comm, format="webm")
    for i in range(0, len(data), 1000):
        await comm.send_to(bytes_data=data[i : i + 1000])
    events = await stop(comm)
    finals = [e for e in events if e["type"] == "final"]
    if damage == "cut":
        # What came before the cut is kept ("and so my fellow"; tiny.en hears "am I fellow" on some CPUs).
        assert len(finals) == 1 and "fellow" in finals[0]["text"].lower()
    assert set(codes(events)) <= {"bad_audio"}
    assert await stored(ready["session"]) == [(f["id"], f["seq"], f["text"]) for f in finals]
    assert events[-1]["text"] == " ".join(f["text"] for f in finals)
    assert not await settled_children(before)


async def test_a_header_only_webm_stream_is_an_empty_session(alice: Any, golden_webm: bytes) -> None:
    cluster = golden_webm.find(bytes.fromhex("1F43B675"))  # the first Cluster element: audio starts
    assert cluster > 0
    before = children()
    comm = communicator(alice)
    ready = await start(comm, format="webm")
    await comm.send_to(bytes_data=golden_webm[:cluster])
    events = await stop(comm)
    assert events[-1]["text"] == "" and events[-1]["duration"] == 0
    assert set(codes(events)) <= {"bad_audio"}
    session = await TranscriptSession.objects.aget(pk=ready["session"])
    assert session.status == "finished" and session.word_count == 0
    assert not await settled_children(before)


async def test_ogg_announced_as_webm_is_bad_audio(alice: Any, audio_dir: Path) -> None:
    ogg = encode(audio_dir / GOLDEN, "ogg")
    before = children()
    comm = communicator(alice)
    await start(comm, format="webm")
    for i in range(0, len(ogg), 1000):
        await comm.send_to(bytes_data=ogg[i : i + 1000])
    events = await still_open(comm)
    events += await stop(comm)
    assert not await settled_children(before)  # holds today: the bug is only the silence
    assert events[-1]["text"] == ""
    assert "bad_audio" in codes(events)


async def test_ffmpeg_killed_mid_stream(alice: Any, golden_webm: bytes, fellow_webm: bytes) -> None:
    """The decoder's ffmpeg dies (OOM killer, a crash): the client is told, the stored final stays,
    the dead process is reaped, and the next stream (with its header) decodes again."""
    before = children()
    comm = communicator(alice)
    ready = await start(comm, format="webm")
    final = await speech_final(comm, golden_webm, 1000)
    decoders = ffmpeg_children(before)
    assert len(decoders) == 1, decoders  # STORE_AUDIO is off: the decoder is the only ffmpeg
    [pid] = decoders
    os.kill(pid, signal.SIGKILL)
    events = await still_open(comm)
    for _ in range(20):
        if "bad_audio" in codes(events):
            break
        events.append(await comm.receive_json_from(timeout=10))
    assert "bad_audio" in codes(events)
    assert_reaped(pid)
    # The client restarts its recorder: a new stream, header first, on the same socket.
    after = await speech_final(comm, fellow_webm, 1000)
    assert "fellow" in after["text"].lower()
    events = await stop(comm)
    assert await stored(ready["session"]) == [
        (final["id"], 1, final["text"]),
        (after["id"], 2, after["text"]),
    ]
    assert not await settled_children(before) and not zombies()


async def test_a_hung_decoder_is_killed_and_reported(
    alice: Any, golden_webm: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decoder's ffmpeg stops reading (SIGSTOP: a deadlock, a stalled machine): after
    STALL_SECONDS it is killed and reaped, the client gets bad_audio, and the stored final stays.
    (That a new stream decodes after a dead decoder is test_ffmpeg_killed_mid_stream.)"""
    monkeypatch.setattr("transcribe.audio.decoder.STALL_SECONDS", 1.0)
    before = children()
    comm = communicator(alice)
    ready = await start(comm, format="webm")
    final = await speech_final(comm, golden_webm, 1000)
    await still_open(comm)  # everything about that speech has been received
    [pid] = ffmpeg_children(before)
    os.kill(pid, signal.SIGSTOP)
    try:
        # Fill the pipe to the stopped ffmpeg (64 KiB), paced under the frame-rate limit, until the
        # server answers.
        stream = golden_webm * 20
        for i in range(0, len(stream), 4000):
            await comm.send_to(bytes_data=stream[i : i + 4000])
            if not await comm.receive_nothing(timeout=0.02):
                break
        events = await still_open(comm)
        bad = [e for e in events if e["type"] == "error" and e["code"] == "bad_audio"]
        assert bad and "stopped responding" in bad[0]["message"], events
        assert_reaped(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    await stop(comm)
    assert await stored(ready["session"]) == [(final["id"], 1, final["text"])]
    assert not await settled_children(before) and not zombies()


@override_settings(TRANSCRIBE={"STORE_AUDIO": True})
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
async def test_losing_the_recorders_ffmpeg_never_costs_the_transcript(
    alice: Any, audio_dir: Path, monkeypatch: pytest.MonkeyPatch, how: signal.Signals
) -> None:
    """The recorder's ffmpeg dies, or stops taking input (given up after STALL_SECONDS): the
    transcript goes on, nothing half-written is kept, and the process is reaped."""
    monkeypatch.setattr("transcribe.audio.recorder.STALL_SECONDS", 1.0)
    before = children()
    comm = communicator(alice)
    ready = await start(comm)
    data = pcm_s16le(padded_pcm(audio_dir / GOLDEN))
    await comm.send_to(bytes_data=data[:CHUNK])
    await asyncio.sleep(0.3)
    [recorder] = ffmpeg_children(before)
    os.kill(recorder, how)
    try:
        final = await speech_final(comm, data[CHUNK:], CHUNK)
        assert "golden fortune" in final["text"].lower()
        events = await stop(comm)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(recorder, signal.SIGKILL)
    assert events[-1]["text"] == final["text"]
    assert await stored(ready["session"]) == [(final["id"], 1, final["text"])]
    session = await TranscriptSession.objects.aget(pk=ready["session"])
    assert not session.audio  # nothing half-written is kept
    assert_reaped(recorder)
    assert not await settled_children(before)


# -- raw PCM --------------------------------------------------------------------------------------


async def test_f32_sent_as_s16_is_noise_not_text(alice: Any, audio_dir: Path) -> None:
    """The client says pcm_s16le and sends float32: loud noise. Measured: no words at all (tiny.en);
    the bound leaves room for one hallucinated word."""
    samples = load_wav(audio_dir / "jfk.wav")[: 16000 * 4]
    comm = communicator(alice)
    await start(comm, format="pcm_s16le")
    wrong = samples.astype("<f4").tobytes()
    for i in range(0, len(wrong), CHUNK):
        await comm.send_to(bytes_data=wrong[i : i + CHUNK])
    events = await stop(comm)
    assert len(events[-1]["text"].split()) <= 1, events[-1]["text"]
    assert events[-1]["duration"] == pytest.approx(8.0, abs=0.01)  # twice the bytes: twice as long


async def test_nan_and_inf_floats_are_refused_and_the_stream_goes_on(alice: Any, audio_dir: Path) -> None:
    samples = padded_pcm(audio_dir / GOLDEN)
    comm = communicator(alice)
    ready = await start(comm, format="pcm_f32le")
    final = await speech_final(comm, samples.astype("<f4").tobytes(), 2 * CHUNK)
    for bad in (np.nan, np.inf, -np.inf, 1e30):
        frame = np.full(4000, 0.1, dtype="<f4")
        frame[1234] = bad
        await comm.send_to(bytes_data=frame.tobytes())
    events = await still_open(comm)
    assert codes(events).count("bad_audio") == 4
    events += await stop(comm)
    assert events[-1]["text"] == final["text"]
    assert events[-1]["duration"] == pytest.approx(len(samples) / 16000, abs=0.01)  # bad frames add nothing
    assert await stored(ready["session"]) == [(final["id"], 1, final["text"])]


async def test_full_scale_square_wave(alice: Any) -> None:
    """Clipping: ±32767 at 200 Hz for 5 s. Measured: no words (tiny.en); the bound allows one."""
    t = np.arange(5 * 16000)
    square = np.where((t // 40) % 2 == 0, 32767, -32767).astype("<i2").tobytes()
    comm = communicator(alice)
    await start(comm)
    for i in range(0, len(square), CHUNK):
        await comm.send_to(bytes_data=square[i : i + CHUNK])
    events = await stop(comm)
    assert len(events[-1]["text"].split()) <= 1, events[-1]["text"]
    assert set(codes(events)) == set()


@override_settings(TRANSCRIBE={"MAX_AUDIO_SPEED": 10_000.0, "MAX_AUDIO_BURST": 10_000.0})
async def test_ten_minutes_of_silence_sent_at_once(alice: Any) -> None:
    """600 s of zeros as fast as the socket takes them (30 s a frame): no text, and the pipeline's
    memory does not grow: the ring buffer keeps its size and holds under a second."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    comm = communicator(alice)
    ready = await start(comm)
    [consumer] = TranscribeConsumer.active
    buffer = consumer.stt.buffer
    capacity, allocated = buffer.capacity, buffer._data.nbytes
    held = []
    frame = bytes(30 * 32000)
    for _ in range(20):
        await comm.send_to(bytes_data=frame)
        await asyncio.sleep(0)  # let the consumer take it
        while not comm.input_queue.empty():  # noqa: ASYNC110 - the communicator has no event for this
            await asyncio.sleep(0.005)
        held.append(len(buffer))
    events = await stop(comm)
    assert not [e for e in events if e["type"] in ("speech_started", "partial", "final")]
    assert events[-1]["text"] == "" and events[-1]["duration"] == pytest.approx(600.0)
    assert consumer.stt.buffer is buffer and buffer.capacity == capacity and buffer._data.nbytes == allocated
    assert max(held) <= 16000, held  # what is held after each frame: the pre-roll, not the stream
    assert buffer.dropped == 0
    # 19 MB went through; the process grew by far less (ru_maxrss is in kB).
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100_000
    session = await TranscriptSession.objects.aget(pk=ready["session"])
    assert session.duration == pytest.approx(600.0) and session.word_count == 0
