"""Hostile frames against the real consumer: random bytes, broken JSON, bad starts, garbage audio.

``test_fuzz_frames`` drives ``TranscribeConsumer`` (the real tiny.en engine, the real ffmpeg
decoders) through Channels' ``WebsocketCommunicator``, one connection after another, with at least
FRAMES frames drawn from a seeded generator (``TRANSCRIBE_FUZZ_SEED`` replays a run). Every
connection is checked against the protocol of DESIGN.md §3:

- no exception escapes the consumer (the communicator re-raises it);
- the server only ever sends JSON events of the documented types, then at most one close frame with
  a documented code, each close preceded by the event that explains it;
- every text frame gets the answer the protocol gives it (an error, ``ready``, ``closed``...);
- no session is left counting against MAX_SESSIONS, every final sent is stored;
- afterwards: no ffmpeg left running or unreaped, no file descriptor and no temp file left behind,
  and nothing logged at ERROR (a failed pipeline job or a task exception would be).

Frames are kept small (MAX_FRAME_BYTES = 2048) so that ten thousand of them take well under a
minute. The rate limits are lifted: they close a flood on purpose (tests/test_limits.py) and would
end most connections here before the interesting frames.

The deep-JSON, lone-surrogate and NUL tests pin inputs that once crashed the consumer; the fuzz
generator stays below them so that it keeps guarding everything else.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import random
import string
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from tests.conftest import load_wav
from tests.security.conftest import children, open_fds, settled_children, zombies
from tests.test_consumers import communicator, receive_until, start, webm_of
from transcribe.audio.decoder import FORMATS
from transcribe.audio.ffmpeg import find_ffmpeg
from transcribe.consumers import TranscribeConsumer
from transcribe.models import TranscriptSegment, TranscriptSession
from transcribe.protocol import CloseCode, ErrorCode

pytestmark = pytest.mark.django_db(transaction=True)

SEED = int(os.environ.get("TRANSCRIBE_FUZZ_SEED", "8"))
FRAMES = int(os.environ.get("TRANSCRIBE_FUZZ_FRAMES", "10000"))
TIME_LIMIT = 300.0  # seconds: a safety net; a run takes 40-50 s on a quiet 2-core box, 150+ on a busy one
MAX_FRAME = 2048
MAX_DEPTH = 300  # JSON nesting in the random mix; test_deep_json_is_a_bad_message goes to 100,000
SETTINGS = {
    "MAX_FRAME_BYTES": MAX_FRAME,
    "MAX_SESSION_SECONDS": 2,
    "IDLE_TIMEOUT": 30,
    "MAX_SESSIONS": 4,
    "MAX_SESSIONS_PER_USER": 4,
    "MAX_FRAMES_PER_SECOND": 1_000_000,
    "MAX_AUDIO_SPEED": 1_000_000.0,
    "MAX_AUDIO_BURST": 1_000_000.0,
    # Speech in mutated streams is transcribed for real; cheaper decodes keep the run short.
    "BEAM_SIZE": 1,
    "SPECULATE_AFTER": 0.0,
}
FD_SLACK = 4
EPOCH = time.monotonic()  # log times are seconds since the module was imported

ERROR_CODES = {value for name, value in vars(ErrorCode).items() if name.isupper()}
CLOSE_CODES = {int(code) for code in CloseCode}
EVENT_FIELDS = {
    "ready": {"session", "protocol", "resumed", "finals", "offset", "language", "limits"},
    "speech_started": {"at"},
    "utterance_end": {"at"},
    "partial": {"text", "stable", "unstable", "start", "end"},
    "final": {"id", "seq", "text", "start", "end"},
    "status": {"lag_ms", "buffered_s"},
    "error": {"code", "message"},
    "closed": {"session", "text", "duration"},
}
# The event a close code must follow: (event type, error code or None, start of the message or None).
CLOSE_CAUSES: dict[int, list[tuple[str, str | None, str | None]]] = {
    CloseCode.NORMAL: [("closed", None, None)],
    CloseCode.PROTOCOL_VIOLATION: [("error", "bad_message", "Protocol violation")],
    CloseCode.NOT_YOUR_SESSION: [("error", "bad_message", "No such session")],
    CloseCode.FRAME_TOO_LARGE: [("error", "too_large", "Frames are limited")],
}
BARRIER = '{"type": 0}'  # always answered with exactly one bad_message error, never closes
BARRIER_ANSWER = 'Messages must be JSON objects with a string "type"'

# What a frame must be answered with (the synchronous answer; audio events come on their own).
NOTHING = "nothing"  # keepalive, finalize, audio after start
ERROR = "error"  # an error event, the socket stays open (code in Expect.code)
CLOSE = "close"  # an error event, then the close code in Expect.close
READY = "ready"
CLOSED = "closed"  # stop: "closed", then 1000


@dataclass
class Expect:
    kind: str
    code: str | None = None
    close: int | None = None


class Crash(AssertionError):
    pass


# -- frames ---------------------------------------------------------------------------------------


class Generator:
    """Seeded hostile frames; text frames come with what the protocol answers to them."""

    def __init__(self, rng: random.Random, speech: dict[str, bytes]) -> None:
        self.rng = rng
        self.speech = speech  # real speech in each format, to mutate

    # building blocks

    def text(self, max_len: int = 40) -> str:
        rng = self.rng
        pools = [
            string.ascii_letters,
            string.printable,
            "€ßçñ日本語🙂\u200b\u202e\ufeff\x00\x7f",
            '{}[]":,\\',
        ]
        pool = rng.choice(pools)
        return "".join(rng.choice(pool) for _ in range(rng.randint(0, max_len)))

    def junk_value(self, depth: int = 0) -> Any:
        rng = self.rng
        choice = rng.randrange(12 if depth < 3 else 8)
        if choice == 0:
            return None
        if choice == 1:
            return rng.choice([True, False])
        if choice == 2:
            return rng.randint(-(2**70), 2**70)
        if choice == 3:
            return rng.choice([0.0, -0.0, 1e308, -1e-308, 16000.5, float("nan"), float("inf")])
        if choice in (4, 5, 6):
            return self.text()
        if choice == 7:
            return str(uuid.UUID(int=rng.getrandbits(128)))
        if choice in (8, 9):
            return [self.junk_value(depth + 1) for _ in range(rng.randint(0, 4))]
        return {self.text(8): self.junk_value(depth + 1) for _ in range(rng.randint(0, 4))}

    def nested(self, depth: int) -> str:
        opener, closer = self.rng.choice([("[", "]"), ('{"a":', "}")])
        return opener * depth + "1" + closer * depth

    # text frames

    def garbage_text(self, started: bool) -> tuple[str, Expect]:
        """Anything but a well-formed message; classified the way the protocol reads it."""
        while True:
            frame = self._garbage_text()
            expect = self.classify(frame, started)
            if expect is not None:
                return frame, expect

    def _garbage_text(self) -> str:
        rng = self.rng
        choice = rng.randrange(9)
        if choice == 0:
            frame = rng.randbytes(rng.randint(0, 300)).decode("latin-1")
        elif choice == 1:
            frame = self.text(200)
        elif choice == 2:
            whole = json.dumps(self.control_message())
            frame = whole[: rng.randint(0, len(whole) - 1)]
        elif choice == 3:
            chars = list(json.dumps(self.control_message()))
            for _ in range(rng.randint(1, 4)):
                chars[rng.randrange(len(chars))] = rng.choice('{}[]":,\\x \x00')
            frame = "".join(chars)
        elif choice == 4:
            frame = json.dumps(self.junk_value())
        elif choice == 5:
            frame = self.nested(rng.randint(1, MAX_DEPTH))
        elif choice == 6:
            message = {k: self.junk_value() for k in ("format", "session", "x")}
            message["type"] = rng.choice([None, 1, 2.5, True, [], {}, ["start"], {"type": "start"}])
            frame = json.dumps(message)
        elif choice == 7:
            # An unknown type, possibly huge, with JSON escapes the decoder must survive.
            kind = rng.choice(
                [
                    "dance",
                    "START",
                    "Start",
                    " start",
                    "stop ",
                    "\\u0000",
                    "\\ud800",
                    "x" * rng.randint(1, 1900),
                ]
            )
            frame = f'{{"type": "{kind}"}}'
        else:
            frame = f'{{"type": "keepalive", "deep": {self.nested(rng.randint(1, MAX_DEPTH))}}}'
        return frame

    def control_message(self) -> dict[str, Any]:
        kind = self.rng.choice(["keepalive", "finalize", "stop", "start"])
        message: dict[str, Any] = {"type": kind}
        if kind == "start":
            message.update(format=self.rng.choice(FORMATS), sample_rate=16000, language="en")
        if self.rng.random() < 0.3:
            message[self.text(10)] = self.junk_value()
        return message

    def classify(self, frame: str, started: bool) -> Expect | None:
        """How stt.v1 answers a text frame: its own reading of DESIGN.md §3. None for a garbled
        start before the session started (its answer depends on every field: see ``start``)."""
        if len(frame.encode("utf-8", "surrogatepass")) > MAX_FRAME:
            return Expect(CLOSE, "too_large", CloseCode.FRAME_TOO_LARGE)
        try:
            message = json.loads(frame)
        except (ValueError, RecursionError):
            return Expect(ERROR, "bad_message")
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            return Expect(ERROR, "bad_message")
        kind = message["type"]
        if kind == "start":
            return Expect(ERROR, "bad_message") if started else None
        if not started:
            return Expect(CLOSE, "bad_message", CloseCode.PROTOCOL_VIOLATION)
        if kind in ("keepalive", "finalize"):
            return Expect(NOTHING)
        if kind == "stop":
            return Expect(CLOSED)
        return Expect(ERROR, "bad_message")

    def start(self, started: bool, own: list[str], foreign: list[str]) -> tuple[str, Expect, str]:
        """A start message: valid, or broken in exactly one field. Returns (frame, expect, format)."""
        rng = self.rng
        fmt = rng.choice(FORMATS)
        message: dict[str, Any] = {"type": "start", "format": fmt}
        if fmt.startswith("pcm_") or rng.random() < 0.5:
            message["sample_rate"] = 16000
        else:
            message["sample_rate"] = rng.choice([8000, 44100, 48000, 192000])
        if rng.random() < 0.7:
            message["language"] = rng.choice(["en", None, "de", "zh-Hans", "xx"])
        if rng.random() < 0.5:
            message["title"] = rng.choice(["", 0, [], self.text(300), "x" * rng.randint(0, 1800)])
        expect = Expect(READY)
        resume = rng.random()
        if resume < 0.08 and own:
            message["session"] = rng.choice(own)
        elif resume < 0.12:
            message["session"] = rng.choice([*foreign, str(uuid.uuid4())])
            expect = Expect(CLOSE, "bad_message", CloseCode.NOT_YOUR_SESSION)
        if rng.random() < 0.3:  # break one field
            field_name, value, code = rng.choice(
                [
                    (
                        "format",
                        rng.choice(["mp3", "WEBM", "", None, 16000, ["webm"], {"f": 1}]),
                        "unsupported_format",
                    ),
                    ("format", "pcm_s16le", None),  # then a rate raw PCM cannot have
                    ("language", rng.choice(["e", "x" * 9, 5, ["en"], {"en": 1}, True]), "bad_message"),
                    ("title", rng.choice([["t"], 7, {"t": 1}, 1.5, True]), "bad_message"),
                    (
                        "session",
                        rng.choice(["42", 42, "not-a-uuid", ["x"], "../../etc/passwd"]),
                        "bad_message",
                    ),
                ]
            )
            message[field_name] = value
            if code is None:
                message["sample_rate"] = rng.choice([44100, 8000, "16000", 16000.5, None])
                code = "unsupported_format"
            expect = Expect(ERROR, code)
        if started:
            expect = Expect(ERROR, "bad_message")  # "The session has already started", whatever it says
        frame = json.dumps(message)
        if len(frame.encode()) > MAX_FRAME:
            expect = Expect(CLOSE, "too_large", CloseCode.FRAME_TOO_LARGE)
        return frame, expect, str(message["format"])

    # binary frames

    def size(self) -> int:
        r = self.rng.random()
        if r < 0.02:
            return 0
        if r < 0.04:
            return MAX_FRAME
        if r < 0.05:
            return MAX_FRAME + 1
        if r < 0.06:
            return self.rng.randint(MAX_FRAME + 2, 4 * MAX_FRAME)
        if r < 0.5:
            return self.rng.randint(1, 256)
        return self.rng.randint(257, MAX_FRAME)

    def audio_source(self, fmt: str) -> list[bytes]:
        """The binary frames a connection sends: garbage, or real speech in the format, mutated."""
        rng = self.rng
        if fmt not in self.speech or rng.random() < 0.95:
            return [rng.randbytes(self.size()) for _ in range(rng.randint(5, 150))]
        data = bytearray(self.speech[fmt])
        choice = rng.randrange(4)
        if choice == 0:  # bit flips
            for _ in range(rng.randint(1, max(1, len(data) // 300))):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif choice == 1:  # a hole
            cut = rng.randrange(len(data))
            del data[cut : cut + rng.randint(1, 5000)]
        elif choice == 2:  # garbage after a good start
            cut = rng.randrange(len(data))
            data[cut:] = rng.randbytes(len(data) - cut)
        else:  # the stream twice (a second header in the middle)
            data = data + data
        frames, i = [], 0
        while i < len(data):
            n = rng.randint(1, MAX_FRAME)
            frames.append(bytes(data[i : i + n]))
            i += n
        return frames


def speech_in_formats(wav: Path) -> dict[str, bytes]:
    """Two seconds of real speech in the container formats (encoded here, not committed)."""
    encoded = {}
    for fmt, codec in (("webm", "libopus"), ("ogg", "libopus"), ("wav", "pcm_s16le")):
        args = [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-nostdin", "-t", "2", "-i", str(wav)]
        args += ["-c:a", codec, "-f", fmt, "pipe:1"]
        encoded[fmt] = subprocess.run(args, capture_output=True, check=True, timeout=60).stdout
    samples = load_wav(wav)[: 2 * 16000]
    encoded["pcm_s16le"] = (samples * 32767).astype("<i2").tobytes()
    return encoded


# -- one connection -------------------------------------------------------------------------------


@dataclass
class Connection:
    comm: WebsocketCommunicator
    index: int
    log: list[str] = field(default_factory=list)  # frames sent and outputs, for the failure report
    outputs: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    ready: dict[str, Any] | None = None
    frames: int = 0

    def fail(self, why: str) -> Crash:
        tail = "\n".join(self.log[-40:])
        return Crash(f"seed {SEED}, connection {self.index}: {why}\nlast frames and outputs:\n{tail}")

    @property
    def open(self) -> bool:
        return self.close_code is None

    async def send(self, text: str | None = None, data: bytes | None = None) -> None:
        self.frames += 1
        shown = (
            repr(text[:160])
            if text is not None
            else f"<{len(data or b'')} bytes {bytes(data or b'')[:16]!r}>"
        )
        self.log.append(f"{time.monotonic() - EPOCH:8.3f} -> {shown}")
        self._raise_crash()
        # send_input, not send_to: empty frames are frames too.
        if text is not None:
            await self.comm.send_input({"type": "websocket.receive", "text": text})
        else:
            await self.comm.send_input({"type": "websocket.receive", "bytes": data})
        # One frame at a time: the next is sent once the consumer has taken this one.
        deadline = time.monotonic() + 60
        while not self.comm.input_queue.empty():
            self._raise_crash()
            if time.monotonic() > deadline:
                raise self.fail("the consumer took no frame for 60 s")
            await asyncio.sleep(0.0005)

    def _raise_crash(self) -> None:
        future = self.comm.future
        if future.done() and not future.cancelled() and future.exception() is not None:
            exc = future.exception()
            raise self.fail(f"the consumer raised {type(exc).__name__}: {str(exc)[:300]}") from exc

    async def next_output(self, timeout: float) -> dict[str, Any] | None:
        """The next thing the server sent, validated; None if nothing came within ``timeout``."""
        queue = self.comm.output_queue
        if queue.empty():
            self._raise_crash()
            if timeout <= 0 or self.comm.future.done():
                return None
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait(
                {getter, self.comm.future}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if getter not in done:
                getter.cancel()
                self._raise_crash()
                return None
            output = getter.result()
        else:
            output = queue.get_nowait()
        self.check(output)
        return output

    def check(self, output: dict[str, Any]) -> None:
        self.outputs.append(output)
        self.log.append(f"{time.monotonic() - EPOCH:8.3f} <- {str(output)[:200]}")
        if not self.open:
            raise self.fail(f"output after the close: {output}")
        if output["type"] == "websocket.close":
            code = output.get("code")
            if code not in CLOSE_CODES:
                raise self.fail(f"undocumented close code {code}")
            causes = CLOSE_CAUSES.get(code)
            if causes is None:  # 4401, 4408, 4429, 4500...: not for one signed-in, quick client at a time
                raise self.fail(f"close {code}: nothing this connection sent calls for it")
            last = self.events[-1] if self.events else {}
            if not any(
                last.get("type") == kind
                and (err is None or last.get("code") == err)
                and (msg is None or str(last.get("message", "")).startswith(msg))
                for kind, err, msg in causes
            ):
                raise self.fail(f"close {code} without the event that explains it (last event {last})")
            self.close_code = code
            return
        if output["type"] == "websocket.accept":
            if self.outputs[:-1]:
                raise self.fail("accept after other output")
            return
        if output["type"] != "websocket.send" or output.get("bytes") is not None:
            raise self.fail(f"not a text frame: {output}")
        try:
            event = json.loads(output["text"])
        except ValueError:
            raise self.fail(f"not JSON: {output['text'][:200]!r}") from None
        if not isinstance(event, dict) or event.get("type") not in EVENT_FIELDS:
            raise self.fail(f"unknown event {event!r:.200}")
        missing = EVENT_FIELDS[event["type"]] - event.keys()
        if missing:
            raise self.fail(f"{event['type']} without {sorted(missing)}")
        if event["type"] == "error" and event["code"] not in ERROR_CODES:
            raise self.fail(f"undocumented error code {event['code']!r}")
        if event["type"] == "error" and event["code"] == ErrorCode.RATE_LIMITED:
            raise self.fail("rate limited although the limits are lifted")
        if event["type"] == "ready":
            if self.ready is not None:
                raise self.fail("a second ready")
            self.ready = event
        if event["type"] == "closed" and self.ready is None:
            raise self.fail("closed before ready")
        self.events.append(event)

    def is_answer(self, event: dict[str, Any]) -> bool:
        """Events that answer a text frame (the rest come from the audio pipeline on their own)."""
        if event["type"] in ("ready", "closed"):
            return True
        return event["type"] == "error" and event["code"] in (
            "bad_message",
            "unsupported_format",
            "too_large",
        )

    async def answer(self, expect: Expect, timeout: float = 90) -> None:
        """Read outputs up to the answer to the frame just sent, and check it is ``expect``."""
        if expect.kind == NOTHING:
            return
        deadline = time.monotonic() + timeout
        while self.open:
            output = await self.next_output(max(0.0, deadline - time.monotonic()))
            if output is None:
                raise self.fail(f"no answer in {timeout:.0f} s; expected {expect}")
            if output["type"] != "websocket.send" or not self.is_answer(self.events[-1]):
                continue
            event = self.events[-1]
            if event["type"] == "error" and event["message"] == "The session reached MAX_SESSION_SECONDS":
                # An earlier audio frame ended the session: "closed" and 1000 follow, this frame is moot.
                await self.until_closed(CloseCode.NORMAL)
                return
            if expect.kind == READY and event["type"] == "ready":
                return
            if expect.kind == CLOSED and event["type"] == "closed":
                await self.until_closed(CloseCode.NORMAL)
                return
            if expect.kind in (ERROR, CLOSE) and event["type"] == "error" and event["code"] == expect.code:
                if expect.kind == CLOSE:
                    await self.until_closed(expect.close)
                return
            raise self.fail(f"expected {expect}, got {event}")
        if expect.kind != NOTHING and self.open:
            raise self.fail(f"expected {expect}")

    async def until_closed(self, code: int | None = None, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while self.open:
            if await self.next_output(max(0.0, deadline - time.monotonic())) is None:
                raise self.fail(f"no close in {timeout:.0f} s")
        if code is not None and self.close_code != code:
            raise self.fail(f"closed with {self.close_code}, expected {code}")

    async def barrier(self) -> bool:
        """Whether the socket is still open once every frame sent so far has been handled."""
        if not self.open:
            return False
        await self.send(text=BARRIER)
        await self.answer(Expect(ERROR, "bad_message"))
        if self.open and self.events[-1]["message"] != BARRIER_ANSWER:
            raise self.fail(f"the barrier got {self.events[-1]}")
        return self.open


async def run_connection(
    gen: Generator, index: int, user: Any, own: list[str], foreign: list[str], finals: list[dict[str, Any]]
) -> int:
    rng = gen.rng
    conn = Connection(communicator(user), index)
    connected, _ = await conn.comm.connect(timeout=10)
    if not connected:
        raise conn.fail("handshake refused")
    conn.check({"type": "websocket.accept"})
    fmt = "pcm_s16le"
    audio: list[bytes] = []
    for position in range(rng.randint(3, 100)):
        while await conn.next_output(0) is not None:  # what the audio pipeline said meanwhile
            pass
        if not conn.open:
            break
        started = conn.ready is not None
        r = rng.random()
        if (position == 0 and r < 0.85) or (not started and r < 0.15) or (started and r < 0.01):
            frame, expect, wanted = gen.start(started, own, foreign)
            await conn.send(text=frame)
            await conn.answer(expect)
            if expect.kind == READY and conn.ready is not None:
                fmt = wanted
                audio = gen.audio_source(fmt)
                own.append(conn.ready["session"])
        elif started and r < 0.7 and audio:
            data = audio.pop(0)
            if len(data) > MAX_FRAME:
                # Deterministic from here on: the frame is refused and the socket closed.
                if not await conn.barrier():
                    break
                await conn.send(data=data)
                await conn.answer(Expect(CLOSE, "too_large", CloseCode.FRAME_TOO_LARGE))
            else:
                await conn.send(data=data)
        elif not started and r < 0.25:
            data = rng.randbytes(gen.size())
            if not await conn.barrier():
                break
            await conn.send(data=data)
            if len(data) > MAX_FRAME:
                await conn.answer(Expect(CLOSE, "too_large", CloseCode.FRAME_TOO_LARGE))
            else:
                await conn.answer(Expect(CLOSE, "bad_message", CloseCode.PROTOCOL_VIOLATION))
        elif started and r < 0.8:
            frame = json.dumps({"type": rng.choice(["keepalive", "finalize"])})
            await conn.send(text=frame)
        elif started and r < 0.82:
            await conn.send(text='{"type": "stop"}')
            await conn.answer(Expect(CLOSED))
        else:
            frame, expect = gen.garbage_text(started)
            await conn.send(text=frame)
            await conn.answer(expect)
    if conn.open and conn.ready is not None and rng.random() < 0.5:
        await conn.send(text='{"type": "stop"}')
        await conn.answer(Expect(CLOSED))
    # Whatever is still on its way (a dropped connection just goes).
    while await conn.next_output(0.01 if conn.open else 0) is not None:
        pass
    try:
        await conn.comm.disconnect(timeout=30)
    except Exception as exc:
        raise conn.fail(f"the consumer raised {type(exc).__name__}: {exc}") from exc
    if TranscribeConsumer.active:  # one connection at a time: none may be left
        raise conn.fail("the connection still counts against MAX_SESSIONS")
    finals.extend(e for e in conn.events if e["type"] == "final")
    seqs = [e["seq"] for e in conn.events if e["type"] == "final"]
    if seqs != sorted(set(seqs)):
        raise conn.fail(f"final seq not increasing: {seqs}")
    return conn.frames


async def warm_up(user: Any, speech: dict[str, bytes]) -> None:
    """Load the engine, the VAD, the executor and the ffmpeg paths before counting fds."""
    for fmt in ("pcm_s16le", "webm"):
        comm = communicator(user)
        await start(comm, format=fmt)
        await comm.send_to(bytes_data=speech[fmt][:MAX_FRAME])
        await comm.send_json_to({"type": "stop"})
        await receive_until(comm, "closed")
        await comm.disconnect()


@override_settings(TRANSCRIBE=SETTINGS)
async def test_fuzz_frames(alice: Any, bob: Any, audio_dir: Path, private_tmp: Path, caplog: Any) -> None:
    caplog.set_level(logging.WARNING)
    loop_errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    speech = speech_in_formats(audio_dir / "jfk.wav")
    await warm_up(alice, speech)
    await asyncio.sleep(0.2)
    gc.collect()
    fds_before, children_before = open_fds(), children()
    # A library may leave a file of its own on first use (a ".ses" here): count from now on.
    tmp_before = set(os.listdir(private_tmp))

    rng = random.Random(SEED)
    gen = Generator(rng, speech)
    foreign: list[str] = []
    for _ in range(2):  # sessions of bob's, for alice to try to resume
        comm = communicator(bob)
        foreign.append((await start(comm))["session"])
        await comm.disconnect()
    own: list[str] = []
    finals: list[dict[str, Any]] = []
    frames = connections = 0
    started_at = time.monotonic()
    while frames < FRAMES:
        if time.monotonic() - started_at > TIME_LIMIT:
            pytest.fail(f"{frames} frames in {TIME_LIMIT:.0f} s: far slower than expected")
        store_audio = rng.random() < 0.08
        with override_settings(TRANSCRIBE={**SETTINGS, "STORE_AUDIO": store_audio}):
            frames += await run_connection(gen, connections, alice, own, foreign, finals)
            connections += 1
            if store_audio and TranscribeConsumer.draining:  # save_recording reads the settings
                await asyncio.wait(set(TranscribeConsumer.draining), timeout=60)
    elapsed = time.monotonic() - started_at

    if TranscribeConsumer.draining:
        await asyncio.wait(set(TranscribeConsumer.draining), timeout=60)
    for task in list(TranscribeConsumer.expiring.values()):
        task.cancel()
    TranscribeConsumer.expiring.clear()
    await asyncio.sleep(0.1)
    gc.collect()
    await asyncio.sleep(0.1)

    left = await settled_children(children_before)
    assert not left, f"ffmpeg processes left behind: {left} ({zombies()} unreaped)"
    fds_after = open_fds()
    new_fds = {fd: target for fd, target in fds_after.items() if fds_before.get(fd) != target}
    assert len(fds_after) <= len(fds_before) + FD_SLACK, f"file descriptors left open: {new_fds}"
    assert set(os.listdir(private_tmp)) <= tmp_before, "temp files left behind"
    stored = await database_sync_to_async(
        lambda: set(TranscriptSegment.objects.values_list("id", "seq", "text"))
    )()
    assert {(f["id"], f["seq"], f["text"]) for f in finals} <= stored, "a final was sent but not stored"
    assert not loop_errors, f"unhandled errors in the event loop: {loop_errors[:3]}"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, f"errors logged: {[r.getMessage()[:200] for r in errors[:5]]}"
    assert not TranscribeConsumer.active
    sessions = await TranscriptSession.objects.acount()
    print(
        f"fuzz: {frames} frames, {connections} connections, {sessions} sessions, {len(finals)} finals, {elapsed:.1f} s"
    )
    assert frames >= FRAMES and connections >= 100


# -- crashes the fuzzer found ---------------------------------------------------------------------


async def outcome_of(
    user: Any, *frames: str, audio: bytes | None = None
) -> tuple[list[dict[str, Any]], BaseException | None, WebsocketCommunicator]:
    """Send ``frames`` (after a webm start and ``audio`` if given); the outputs that followed, the
    exception the consumer raised if any, and the communicator (for ``bury``)."""
    comm = communicator(user)
    if audio is not None:
        await start(comm, format="webm")
        await comm.send_to(bytes_data=audio)
        await asyncio.sleep(0.3)
    else:
        await comm.connect()
    for frame in frames:
        await comm.send_to(text_data=frame)
    outputs = []
    for _ in range(50):
        await asyncio.sleep(0.02)
        while not comm.output_queue.empty():
            outputs.append(comm.output_queue.get_nowait())
    crash = comm.future.exception() if comm.future.done() and not comm.future.cancelled() else None
    if crash is None:
        await comm.disconnect()
    return outputs, crash, comm


async def bury(*comms: WebsocketCommunicator) -> None:
    """Test cleanup only: what a crashed consumer leaves (its slot, watchdog and ffmpeg)."""
    for consumer in list(TranscribeConsumer.active):
        if any(consumer.scope is comm.scope for comm in comms):
            consumer.watchdog.cancel()
            if consumer.stt is not None:
                await consumer.stt.close()
            TranscribeConsumer.active.discard(consumer)


def answered_with_bad_message(outputs: list[dict[str, Any]]) -> bool:
    events = [json.loads(o["text"]) for o in outputs if o["type"] == "websocket.send"]
    return any(e["type"] == "error" and e["code"] == "bad_message" for e in events)


async def test_deep_json_is_a_bad_message(alice: Any, audio_dir: Path) -> None:
    before = children()
    outputs, crash, comm = await outcome_of(
        alice, "[" * 100_000, audio=webm_of(audio_dir / "jfk.wav")[:20_000]
    )
    try:
        assert crash is None, f"the consumer raised {crash!r:.120}"
        assert answered_with_bad_message(outputs)
        await comm.disconnect()
        assert not await settled_children(before, timeout=5)
    finally:
        await bury(comm)


async def test_lone_surrogate_in_title_is_stored_replaced(alice: Any) -> None:
    outputs, crash, comm = await outcome_of(
        alice, '{"type": "start", "format": "pcm_s16le", "title": "a\\ud800b"}'
    )
    try:
        assert crash is None, f"the consumer raised {crash!r:.120}"
        events = [json.loads(o["text"]) for o in outputs if o["type"] == "websocket.send"]
        assert events and events[0]["type"] in ("ready", "error")
    finally:
        await bury(comm)


NUL_TITLE_SCRIPT = r"""
import asyncio, json, sys
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from transcribe.consumers import TranscribeConsumer

async def main():
    user = await get_user_model().objects.acreate(username="mallory")
    comm = WebsocketCommunicator(TranscribeConsumer.as_asgi(), "/ws/transcribe/")
    comm.scope["user"] = user
    await comm.connect()
    await comm.send_to(text_data='{"type": "start", "format": "pcm_s16le", "title": "a\\u0000b"}')
    outputs, crash = [], None
    try:  # the first session of a process loads the weights: allow for a busy machine
        outputs.append(await comm.receive_output(timeout=90))
    except asyncio.TimeoutError:
        pass
    except Exception as exc:
        crash = exc
    while not comm.output_queue.empty():
        outputs.append(comm.output_queue.get_nowait())
    for consumer in list(TranscribeConsumer.active):
        consumer.watchdog.cancel()
    print(json.dumps({"crash": repr(crash) if crash else None, "outputs": outputs}))

asyncio.run(main())
"""


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL (the production database of DESIGN.md), dropped
    afterwards; skipped where none runs."""
    psycopg = pytest.importorskip("psycopg")
    admin_url = "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432 ({exc})")
    name = f"transcribe_security_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgres://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_nul_in_title_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DATABASE_URL": postgres_url,
        "DJANGO_MEDIA_ROOT": str(tmp_path),
        "TRANSCRIBE_STORE_AUDIO": "0",
    }
    done = subprocess.run(
        [sys.executable, "-c", NUL_TITLE_SCRIPT],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["crash"] is None, f"the consumer raised {result['crash']}"
    events = [json.loads(o["text"]) for o in result["outputs"] if o["type"] == "websocket.send"]
    assert events and events[0]["type"] in ("ready", "error")
