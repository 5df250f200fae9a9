"""The engine protocol: what the streaming pipeline needs from a speech recognizer.

Engines are plain classes with ``transcribe_numpy(audio, language, ...)``; third-party engines need not
import anything from us (``typing.Protocol``), they only return ``Transcription`` objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16_000

Audio = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Word:
    """One recognized word; times are seconds from the start of the audio passed to the engine.

    ``text`` is kept as the tokenizer spells it, leading space included (" 42", "-line"), so words
    join back into text exactly; ``as_dict`` gives it stripped."""

    start: float
    end: float
    text: str
    probability: float = 1.0

    def shifted(self, offset: float) -> Word:
        return Word(self.start + offset, self.end + offset, self.text, self.probability)

    def as_dict(self) -> dict[str, float | str]:
        return {
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "text": self.text.strip(),
            "probability": round(self.probability, 4),
        }


@dataclass(frozen=True, slots=True)
class Segment:
    """One decoded segment with the statistics the hallucination guards need."""

    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 1.0


@dataclass(frozen=True, slots=True)
class Transcription:
    segments: tuple[Segment, ...]
    language: str | None = None
    duration: float = 0.0

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())

    @property
    def words(self) -> list[Word]:
        return [w for s in self.segments for w in s.words]


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    """Per-call knobs; engines ignore what they cannot honour."""

    beam_size: int = 1
    word_timestamps: bool = True
    prompt: str | None = None
    # 0.0: one greedy/beam pass. A tuple re-decodes at higher temperatures when a pass fails the
    # compression/log-prob checks: better offline, but it multiplies the cost of junk audio.
    temperature: float | tuple[float, ...] = 0.0
    # Upper bound on generated tokens; bounds the cost of a hallucination loop on short audio.
    max_new_tokens: int | None = None
    # Encode only this many seconds (at least the audio's length) instead of Whisper's fixed 30 s
    # window: the encoder costs in proportion, but text is a little less reliable (see
    # OptimizedRealtimeSTT._decode for how finals guard against it).
    encoder_seconds: float | None = None
    # Seconds into the audio after which the caller knows there is no speech (its VAD), or None.
    # Whisper decodes a window and, when its words end before the audio does, decodes the rest as
    # a window of its own: an engine may skip that when no speech is left after its last word
    # (faster-whisper's does; the openai-whisper engine, like encoder_seconds, ignores it).
    speech_until: float | None = None
    # Called with each segment as soon as it is decoded (progress of long files); optional.
    on_segment: Callable[[Segment], None] | None = None
    extra: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class STTEngine(Protocol):
    """A speech recognizer working on 16 kHz mono float32 arrays in [-1, 1]."""

    name: str
    model_name: str
    multilingual: bool
    supports_word_timestamps: bool

    def transcribe_numpy(
        self,
        audio: Audio,
        language: str | None,
        options: DecodeOptions | None = None,
    ) -> Transcription:
        """Transcribe ``audio``; ``language=None`` asks a multilingual model to detect it."""
        ...
