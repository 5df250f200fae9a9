"""The default engine: faster-whisper (CTranslate2), int8 on CPU."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..conf import transcribe_settings
from ..exceptions import EngineError
from .base import SAMPLE_RATE, Audio, DecodeOptions, Segment, Transcription, Word

logger = logging.getLogger(__name__)


FRAMES_PER_SECOND = 100  # Whisper's mel frames
FULL_WINDOW = 30.0
# Whisper's window after the first is decoded only if this much speech is left after the last
# word heard (when the caller says where speech ends: DecodeOptions.speech_until).
SPEECH_LEFT = 0.4  # seconds


class _NoSpeechLeft(Exception):
    """Raised from the encoder hook instead of encoding a window that holds no speech."""


def encoder_frames(encoder_seconds: float | None, audio_seconds: float) -> int | None:
    """Mel frames to encode for this call, or None for Whisper's full 30 s window."""
    if not encoder_seconds or audio_seconds > FULL_WINDOW - 1:
        return None
    seconds = min(FULL_WINDOW, max(encoder_seconds, audio_seconds + 1.0))
    frames = int(seconds * FRAMES_PER_SECOND)
    return frames + frames % 2  # the encoder's first convolution has stride 2


class FasterWhisperEngine:
    name = "faster-whisper"
    supports_word_timestamps = True

    def __init__(
        self,
        model_path: Path,
        *,
        model_name: str | None = None,
        device: str = "cpu",
        compute_type: str = "default",
        cpu_threads: int = 0,
    ) -> None:
        from faster_whisper import WhisperModel

        if compute_type == "default":
            compute_type = "int8" if device == "cpu" else "default"
        self.model_name = model_name or Path(model_path).name
        self.device = device
        self.compute_type = compute_type
        # As many calls at once as the executor has threads (TRANSCRIBE["WORKERS"]): with one,
        # CTranslate2 would run the threads' calls one after another. The cores are shared out.
        workers = max(1, int(transcribe_settings.WORKERS))
        try:
            self.model = WhisperModel(
                str(model_path),
                device=device,
                compute_type=compute_type,
                cpu_threads=cpu_threads or max(1, (os.cpu_count() or 1) // workers),
                num_workers=workers,
                local_files_only=True,
            )
        except Exception as exc:
            raise EngineError(f"Could not load the faster-whisper model at {model_path}: {exc}") from exc
        self.multilingual = bool(self.model.model.is_multilingual)
        # faster-whisper pads every window to 30 s of mel frames before encoding; CTranslate2's
        # encoder accepts fewer (10 s: ~40 ms instead of ~350 ms here). The state of the current
        # call is per thread, since one engine serves every inference thread.
        self._call = threading.local()
        full_encode = self.model.encode

        def encode(features: Any) -> Any:
            call = self._call
            # When a window's words end before the audio does, faster-whisper decodes the rest as
            # a window of its own: in streaming, mostly the padding after the last word, where
            # Whisper hears "Thank you." (the guards drop it) at the cost of a whole decode.
            heard, speech = getattr(call, "heard_until", None), getattr(call, "speech_until", None)
            if heard is not None and speech is not None and speech - heard < SPEECH_LEFT:
                raise _NoSpeechLeft
            frames = getattr(call, "frames", None)
            if frames and features.shape[-1] > frames:
                features = features[..., :frames]
            return full_encode(features)

        self.model.encode = encode  # type: ignore[method-assign]
        logger.info("Loaded faster-whisper %s (%s, %s)", self.model_name, device, compute_type)

    def transcribe_numpy(
        self, audio: Audio, language: str | None, options: DecodeOptions | None = None
    ) -> Transcription:
        opts = options or DecodeOptions()
        if not self.multilingual:
            language = "en"
        call = self._call
        call.frames = encoder_frames(opts.encoder_seconds, len(audio) / SAMPLE_RATE)
        call.speech_until = opts.speech_until
        call.heard_until = None  # where the words decoded so far end (None: no segment yet)
        try:
            kwargs: dict[str, Any] = {
                "language": language,
                "beam_size": opts.beam_size,
                "word_timestamps": opts.word_timestamps,
                "initial_prompt": opts.prompt or None,
                "temperature": opts.temperature,
                "max_new_tokens": opts.max_new_tokens,
                # The streaming pipeline passes its own context as the prompt, window by window.
                "condition_on_previous_text": False,
                "vad_filter": False,
                **opts.extra,
            }
            segments, info = self.model.transcribe(audio, **kwargs)
            result = []
            for s in _until_no_speech_left(segments):  # a generator: decoding happens as we iterate
                call.heard_until = max(call.heard_until or 0.0, float(s.words[-1].end if s.words else s.end))
                segment = Segment(
                    start=float(s.start),
                    end=float(s.end),
                    text=s.text.strip(),
                    words=tuple(
                        Word(float(w.start), float(w.end), w.word, float(w.probability))
                        for w in s.words or ()
                    ),
                    avg_logprob=float(s.avg_logprob),
                    no_speech_prob=float(s.no_speech_prob),
                    compression_ratio=float(s.compression_ratio),
                )
                result.append(segment)
                if opts.on_segment is not None:
                    opts.on_segment(segment)
        except Exception as exc:
            raise EngineError(f"faster-whisper failed: {exc}") from exc
        return Transcription(tuple(result), language=info.language, duration=info.duration)


def _until_no_speech_left(segments: Iterator[Any]) -> Iterator[Any]:
    """The segments, ending quietly where the encoder hook found no speech left to decode."""
    try:
        yield from segments
    except _NoSpeechLeft:
        return
