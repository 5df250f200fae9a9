"""Transcribe an audio file offline, or replay it through the real streaming pipeline.

    python manage.py transcribe_file speech.wav
    python manage.py transcribe_file speech.wav --stream --speed 1 --format json

``--stream`` feeds the file at ``--speed`` times real time (0: as fast as possible) and reports
the latency of each final (DESIGN.md §5).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, TextIO

from django.core.management.base import BaseCommand, CommandError, CommandParser

from transcribe.audio import AsyncAudioDecoder
from transcribe.conf import transcribe_settings
from transcribe.engines import DecodeOptions, Segment, load_engine
from transcribe.exceptions import TranscribeError
from transcribe.exports import FORMATS, Cue, render

SAMPLE_RATE = 16_000
OFFLINE_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # Whisper's own fallback, as its CLI uses


class Progress:
    """One status line on a terminal, redrawn in place; silent when stderr is not a TTY."""

    def __init__(self, stream: TextIO, total: float) -> None:
        self.stream = stream
        self.total = total
        self.enabled = stream.isatty()
        self.started = time.perf_counter()

    def bar(self, done: float) -> None:
        if not self.enabled:
            return
        fraction = min(1.0, done / self.total) if self.total else 1.0
        elapsed = time.perf_counter() - self.started
        speed = done / elapsed if elapsed > 0 else 0.0
        filled = int(30 * fraction)
        self.line(
            f"[{'#' * filled}{'.' * (30 - filled)}] {done:6.1f}/{self.total:.1f} s audio  {speed:5.1f}x real time"
        )

    def line(self, text: str, final: bool = False) -> None:
        if self.enabled:
            self.stream.write("\r\033[2K" + text + ("\n" if final else ""))
            self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[2K")
            self.stream.flush()


class Command(BaseCommand):
    help = "Transcribe an audio file (any format ffmpeg reads), offline or through the streaming pipeline."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path")
        parser.add_argument(
            "--engine", help="faster-whisper or openai-whisper (default: TRANSCRIBE['ENGINE'])"
        )
        parser.add_argument("--model", help="Model name or path (default: TRANSCRIBE['MODEL'])")
        parser.add_argument("--language", help="Language code; 'auto' detects (multilingual models only)")
        parser.add_argument(
            "--stream", action="store_true", help="Replay through the real streaming pipeline"
        )
        parser.add_argument(
            "--speed", type=float, default=1.0, help="With --stream: times real time; 0 = as fast as possible"
        )
        parser.add_argument("--beam-size", type=int, default=5)
        parser.add_argument("--format", choices=FORMATS, default="text", dest="output_format")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            engine = load_engine(options["engine"], options["model"])
            samples = asyncio.run(AsyncAudioDecoder.decode_file(options["path"]))
        except TranscribeError as exc:
            raise CommandError(str(exc)) from exc
        if not len(samples):
            raise CommandError(f"{options['path']} holds no audio")
        language = options["language"] or transcribe_settings.LANGUAGE
        language = None if language == "auto" else language
        if options["stream"]:
            cues, extra = self.stream(samples, engine, language, options)
        else:
            cues, extra = self.offline(samples, engine, language, options["beam_size"])
        self.stdout.write(
            render(cues, options["output_format"], **extra),
            ending="" if options["output_format"] != "json" else "\n",
        )

    def offline(
        self, samples: Any, engine: Any, language: str | None, beam_size: int
    ) -> tuple[list[Cue], dict[str, Any]]:
        duration = len(samples) / SAMPLE_RATE
        progress = Progress(sys.stderr, duration)
        progress.bar(0.0)

        def on_segment(segment: Segment) -> None:
            progress.bar(segment.end)

        started = time.perf_counter()
        try:
            result = engine.transcribe_numpy(
                samples,
                language,
                DecodeOptions(
                    beam_size=beam_size,
                    word_timestamps=False,
                    temperature=OFFLINE_TEMPERATURES,
                    on_segment=on_segment,
                    # Offline, each 30 s window may use the previous one's text, as Whisper's CLI does.
                    extra={"condition_on_previous_text": True},
                ),
            )
        except TranscribeError as exc:
            raise CommandError(str(exc)) from exc
        wall = time.perf_counter() - started
        progress.done()
        cues = [Cue(s.start, s.end, s.text) for s in result.segments if s.text.strip()]
        latency = {"final_p50_ms": None, "final_p95_ms": None, "first_partial_ms": None}
        return cues, {
            "latency": latency,
            "rtf": round(wall / duration, 4),
            "language": result.language,
            "duration": round(duration, 3),
        }

    def stream(
        self, samples: Any, engine: Any, language: str | None, options: dict[str, Any]
    ) -> tuple[list[Cue], dict[str, Any]]:
        from transcribe.streaming.replay import replay

        duration = len(samples) / SAMPLE_RATE
        progress = Progress(sys.stderr, duration)

        async def show(event: dict[str, Any]) -> None:
            if event["type"] == "partial":
                progress.line(f"… {event['text']}"[-150:])
            elif event["type"] == "final":
                progress.line(f"[{event['start']:7.2f} - {event['end']:7.2f}] {event['text']}", final=True)

        try:
            report = asyncio.run(
                replay(
                    samples,
                    speed=max(0.0, options["speed"]),
                    engine=engine,
                    language=language,
                    beam_size=options["beam_size"],
                    on_event=show,
                )
            )
        except TranscribeError as exc:
            raise CommandError(str(exc)) from exc
        progress.done()
        cues = [Cue(e["start"], e["end"], e["text"]) for e in report.finals]
        finals_latency_ms = [round(x * 1000, 1) for x in report.final_latencies]
        return cues, {
            "latency": report.latency_summary(),
            "final_latencies_ms": finals_latency_ms,
            "rtf": report.rtf,
            "duration": round(duration, 3),
            "speed": options["speed"],
        }
