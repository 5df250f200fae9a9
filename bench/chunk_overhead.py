"""Per-chunk server handling time, inference excluded: the seed's naive pipeline vs ours.

    python bench/chunk_overhead.py [--seconds 30] [--chunk-ms 250] [--real-time] [--set vad_runtime=onnxruntime] [--verbose]

Both pipelines get the same WebM/Opus stream (a real clip from ../shared/audio, encoded once,
looped to --seconds) in the same process, chunk by chunk as a browser's MediaRecorder sends it.

- before: the seed's handler (kept here only as the baseline): chunks kept in a list and joined
  with b"".join, the whole stream written to a temp file, ``subprocess.run(ffmpeg)`` into a second
  temp file, read back and appended with np.concatenate, and a temp WAV written for Whisper on
  every 5th chunk.
- after: ``OptimizedRealtimeSTT.process_audio_chunk`` with one persistent ffmpeg through asyncio
  pipes (WebM), or no decoder at all (pcm_s16le); VAD and endpointing included, inference
  excluded (a no-op engine). ``--set`` passes streaming settings (``StreamingConfig`` fields) to
  it, to time one lever: ``--set vad_runtime=onnxruntime``. Chunks follow each other after a 5 ms
  pause (time for ffmpeg to answer), or ``--real-time`` one chunk_ms apart as on a live socket,
  where caches go cold between chunks and each costs more.

Prints one JSON line; ratios are before/after in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import django  # noqa: E402

django.setup()

from transcribe.audio.ffmpeg import find_ffmpeg  # noqa: E402
from transcribe.engines.base import DecodeOptions, Transcription  # noqa: E402
from transcribe.streaming import OptimizedRealtimeSTT  # noqa: E402

SAMPLE_RATE = 16_000
AUDIO = Path(os.environ.get("TRANSCRIBE_TEST_AUDIO", ROOT.parent / "shared" / "audio"))


class NoInference:
    """Inference excluded: returns at once, so only the server-side handling is timed."""

    name = "none"
    model_name = "none"
    multilingual = False
    supports_word_timestamps = True

    def transcribe_numpy(
        self, audio: np.ndarray, language: str | None, options: DecodeOptions | None = None
    ) -> Transcription:
        return Transcription(())


def load_stream(seconds: float) -> np.ndarray:
    with wave.open(str(AUDIO / "ljspeech_LJ001-0001_to_0008.wav")) as w:
        clip = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    reps = int(np.ceil(seconds * SAMPLE_RATE / len(clip)))
    return np.tile(clip, reps)[: int(seconds * SAMPLE_RATE)]


def encode_webm_chunks(pcm: np.ndarray, chunk_ms: int) -> list[bytes]:
    """WebM/Opus cut into pieces of about chunk_ms of audio each, like MediaRecorder timeslices."""
    webm = subprocess.run(
        [
            find_ffmpeg(),
            "-loglevel",
            "error",
            "-f",
            "s16le",
            "-ar",
            "16000",
            "-ac",
            "1",
            "-i",
            "pipe:0",
            "-c:a",
            "libopus",
            "-b:a",
            "32k",
            "-cluster_time_limit",
            str(chunk_ms),
            "-f",
            "webm",
            "pipe:1",
        ],
        input=pcm.tobytes(),
        capture_output=True,
        check=True,
    ).stdout
    n = int(len(pcm) / SAMPLE_RATE * 1000 / chunk_ms)
    size = -(-len(webm) // n)
    return [webm[i : i + size] for i in range(0, len(webm), size)]


def before(chunks: list[bytes]) -> list[float]:
    """The seed's naive handler, one call per chunk."""
    ffmpeg = find_ffmpeg()
    received: list[bytes] = []
    buffer = np.zeros(0, dtype=np.float32)
    times = []
    for i, chunk in enumerate(chunks):
        started = time.perf_counter()
        received.append(chunk)
        blob = b"".join(received)  # 6: re-join every chunk so far
        with (
            tempfile.NamedTemporaryFile(suffix=".webm") as src,
            tempfile.NamedTemporaryFile(suffix=".pcm") as dst,
        ):
            src.write(blob)  # 2: temp file in
            src.flush()
            subprocess.run(  # 1: blocking ffmpeg
                [
                    ffmpeg,
                    "-y",
                    "-loglevel",
                    "fatal",
                    "-i",
                    src.name,
                    "-f",
                    "s16le",
                    "-ac",
                    "1",
                    "-ar",
                    "16000",
                    dst.name,
                ],
                check=True,
            )
            pcm = (
                np.frombuffer(Path(dst.name).read_bytes(), dtype=np.int16).astype(np.float32) / 32768
            )  # 2: temp file out
        new = pcm[len(buffer) :]
        buffer = np.concatenate([buffer, new])  # 4: concatenate on every add
        if i % 5 == 0:
            # 3: temp WAV for Whisper
            with tempfile.NamedTemporaryFile(suffix=".wav") as wav_file, wave.open(wav_file.name, "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(SAMPLE_RATE)
                w.writeframes((buffer[-30 * SAMPLE_RATE :] * 32767).astype(np.int16).tobytes())
        times.append(time.perf_counter() - started)
    return times


async def after(chunks: list[bytes], fmt: str, pause: float, config: dict[str, str]) -> list[float]:
    """Ours: time in process_audio_chunk plus the PCM callbacks it causes (VAD, buffer, events),
    ``pause`` seconds between chunks."""
    stt = OptimizedRealtimeSTT(engine=NoInference(), fmt=fmt, **config)
    times = []
    for chunk in chunks:
        stt.stats.seconds.clear()
        started = time.perf_counter()
        await stt.process_audio_chunk(chunk)
        feed = time.perf_counter() - started
        # Callbacks that ran inside the feed (all of them for PCM) are in its time already.
        inside = len(stt.stats.seconds)
        await asyncio.sleep(pause)  # ffmpeg answers meanwhile (it runs beside the loop)
        times.append(feed + sum(list(stt.stats.seconds)[inside:]))
    await stt.flush()
    await stt.close()
    return times


def measure(fn, pause: float, fast: float):  # type: ignore[no-untyped-def]
    """Times from a plain run ``pause`` seconds between chunks; peak Python allocations from a
    second run under tracemalloc, ``fast`` apart (tracing slows allocation-heavy code, so it must not
    overlap the timing; the pace does not change what is allocated)."""
    times = fn(pause)
    tracemalloc.start()
    fn(fast)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return times, peak


def stats(times: list[float]) -> dict[str, float]:
    ms = np.array(times) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "max_ms": round(float(ms.max()), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--chunk-ms", type=int, default=250)
    parser.add_argument("--real-time", action="store_true", help="chunks chunk_ms apart, as on a live socket")
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE,...",
        default="",
        help="streaming settings for our pipeline, e.g. vad_runtime=onnxruntime",
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    config = dict(item.split("=", 1) for item in args.set.split(",") if item)

    pcm = load_stream(args.seconds)
    webm_chunks = encode_webm_chunks(pcm, args.chunk_ms)
    pcm_bytes = pcm.astype("<i2").tobytes()
    step = SAMPLE_RATE * 2 * args.chunk_ms // 1000
    pcm_chunks = [pcm_bytes[i : i + step] for i in range(0, len(pcm_bytes), step)]

    fast = args.chunk_ms / 1000 / 50
    pause = args.chunk_ms / 1000 if args.real_time else fast
    asyncio.run(after(pcm_chunks[:8], "pcm_s16le", fast, config))  # warm-up: VAD model, imports
    before_times, before_peak = measure(lambda _: before(webm_chunks), 0, 0)
    webm_times, webm_peak = measure(lambda p: asyncio.run(after(webm_chunks, "webm", p, config)), pause, fast)
    pcm_times, pcm_peak = measure(
        lambda p: asyncio.run(after(pcm_chunks, "pcm_s16le", p, config)), pause, fast
    )
    b, w, p = stats(before_times), stats(webm_times), stats(pcm_times)
    result = {
        "bench": "chunk_overhead",
        "audio_seconds": args.seconds,
        "chunk_ms": args.chunk_ms,
        "chunks": len(webm_chunks),
        "pause_ms": round(pause * 1000, 1),
        "settings": config,
        "before_webm": {**b, "peak_alloc_mib": round(before_peak / 2**20, 2)},
        "after_webm": {**w, "peak_alloc_mib": round(webm_peak / 2**20, 2)},
        "after_pcm": {**p, "peak_alloc_mib": round(pcm_peak / 2**20, 2)},
        "ratio_p50_webm": round(b["p50_ms"] / w["p50_ms"], 1),
        "ratio_p95_webm": round(b["p95_ms"] / w["p95_ms"], 1),
        "ratio_p95_pcm": round(b["p95_ms"] / p["p95_ms"], 1),
        "memory_ratio_webm": round(before_peak / max(webm_peak, 1), 1),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if args.verbose:
        print(f"{'pipeline':<14}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}{'peak MiB':>10}", file=sys.stderr)
        for name, row in (
            ("before (webm)", result["before_webm"]),
            ("after (webm)", result["after_webm"]),
            ("after (pcm)", result["after_pcm"]),
        ):
            print(
                f"{name:<14}{row['p50_ms']:>10}{row['p95_ms']:>10}{row['max_ms']:>10}{row['peak_alloc_mib']:>10}",
                file=sys.stderr,
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
