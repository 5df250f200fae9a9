"""The openai-whisper engine (PyTorch), for ``TRANSCRIBE = {"ENGINE": "openai-whisper"}``.

It runs the same weights as the default engine: a model name or CTranslate2 folder is resolved like
faster-whisper's (packaged weights first, nothing downloaded unless allowed) and converted once into
an openai-whisper checkpoint under ``<MODEL_CACHE>/openai/``; a ``.pt`` path is loaded as it is.
torch and whisper are imported only when the engine is created, never at Django start-up.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import inspect
import logging
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..exceptions import EngineError
from .base import SAMPLE_RATE, Audio, DecodeOptions, Segment, Transcription, Word

if TYPE_CHECKING:
    from whisper.model import Whisper

logger = logging.getLogger(__name__)

_WORD_CHAR = re.compile(r"[^\W_]")  # a letter or digit of any script

# DecodeOptions.temperature defaults to 0.0 (one pass). whisper's fallback (0.0, 0.2, ..., 1.0)
# re-samples a decode that looks like a hallucination, best_of times per temperature, and its
# word-timestamp seeking can then crawl: on 20 s of pink noise it took 1.3-40 s (random per run) at
# beam 1 and up to 80 s at beam 5 on 2 cores, which would stall every session sharing the inference
# worker. Offline use may opt in with DecodeOptions(temperature=FALLBACK_TEMPERATURES).
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
SETTING_HINT = (
    "Set TRANSCRIBE['MODEL'] to a Whisper model name (e.g. 'tiny.en'), a CTranslate2 model folder or an "
    "openai-whisper .pt checkpoint, or TRANSCRIBE['ENGINE'] to 'faster-whisper'."
)
INSTALL_HINT = (
    'openai-whisper is not installed: `pip install "django-transcribe[openai-whisper]"` '
    "or set TRANSCRIBE['ENGINE'] = 'faster-whisper'."
)


def default_checkpoint_path(model: str, cache: Path) -> Path:
    """Where the converted checkpoint of ``model`` (a name or a CTranslate2 folder) is cached."""
    candidate = Path(model).expanduser()
    if candidate.is_dir() or "/" in model or "\\" in model:
        # Folders: their name plus a hash of the full path, so two folders named "model" don't collide.
        resolved = candidate.resolve()
        digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:10]
        return cache / "openai" / f"{resolved.name}-{digest}.pt"
    return cache / "openai" / f"{model}.pt"


def alignment_heads_dump(heads: list[list[int]], n_layers: int, n_heads: int) -> bytes:
    """Encode ``[layer, head]`` pairs the way ``Whisper.set_alignment_heads`` reads them (base85 of gzip'd bools)."""
    mask = np.zeros((n_layers, n_heads), dtype=bool)
    for layer, head in heads:
        mask[layer, head] = True
    return base64.b85encode(gzip.compress(mask.tobytes()))


def load_checkpoint(path: Path, device: str = "cpu") -> Whisper:
    """Load an openai-whisper checkpoint, with the alignment heads it names (or whisper's own for its files).

    ``whisper.load_model(path)`` would ignore the checkpoint's heads and fall back to the last half of
    the decoder layers, which gives visibly worse word timestamps.
    """
    import torch
    import whisper
    from whisper.model import ModelDimensions, Whisper

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    dims = ModelDimensions(**checkpoint["dims"])
    model = Whisper(dims)
    model.load_state_dict(checkpoint["model_state_dict"])
    heads = checkpoint.get("alignment_heads")
    if isinstance(heads, list) and heads:
        model.set_alignment_heads(alignment_heads_dump(heads, dims.n_text_layer, dims.n_text_head))
    elif isinstance(heads, bytes | str):
        model.set_alignment_heads(heads.encode() if isinstance(heads, str) else heads)
    elif (known := getattr(whisper, "_ALIGNMENT_HEADS", {}).get(Path(path).stem)) is not None:
        model.set_alignment_heads(known)  # an official openai-whisper download, e.g. tiny.en.pt
    else:
        logger.warning("%s names no alignment heads: word timestamps will be less precise", path)
    return model.to(device)


class OpenAIWhisperEngine:
    name = "openai-whisper"
    supports_word_timestamps = True
    loads_own_weights = True

    def __init__(
        self,
        checkpoint: Path,
        *,
        model_name: str | None = None,
        device: str = "cpu",
        cpu_threads: int = 0,
    ) -> None:
        try:
            import torch
        except ImportError as exc:
            raise EngineError(INSTALL_HINT) from exc
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if cpu_threads > 0:
            # Process-wide in torch: the last engine created decides.
            torch.set_num_threads(cpu_threads)
        self.checkpoint = Path(checkpoint)
        self.model_name = model_name or self.checkpoint.stem
        self.device = device
        started = time.perf_counter()
        try:
            self.model = load_checkpoint(self.checkpoint, device)
        except ImportError as exc:
            raise EngineError(INSTALL_HINT) from exc
        except Exception as exc:
            raise EngineError(
                f"Could not load the openai-whisper model {self.checkpoint}: {exc}. {SETTING_HINT}"
            ) from exc
        self.multilingual = bool(self.model.is_multilingual)
        # whisper.transcribe installs kv-cache hooks on the shared modules for the length of a call, so
        # two concurrent calls on one model would write into each other's caches.
        self._lock = threading.Lock()
        self._allowed = _transcribe_keywords()
        _warm_up_word_alignment()
        logger.info(
            "Loaded openai-whisper %s from %s (%s) in %.2f s",
            self.model_name,
            self.checkpoint,
            device,
            time.perf_counter() - started,
        )

    @classmethod
    def from_settings(cls, model: str, *, device: str, cpu_threads: int) -> OpenAIWhisperEngine:
        """The engine for ``TRANSCRIBE["MODEL"]``: a ``.pt`` file, or a name / CTranslate2 folder converted once."""
        from ..conf import transcribe_settings
        from .convert import convert_ct2_to_openai
        from .resolver import resolve_model

        path = Path(model).expanduser()
        if path.suffix == ".pt":
            if not path.is_file():
                raise EngineError(
                    f"TRANSCRIBE['MODEL'] = {model!r}: no such openai-whisper checkpoint. {SETTING_HINT}"
                )
            return cls(path, model_name=path.stem, device=device, cpu_threads=cpu_threads)

        cache = transcribe_settings.model_cache
        target = default_checkpoint_path(model, cache)
        if target.is_file():
            try:
                return cls(target, model_name=model, device=device, cpu_threads=cpu_threads)
            except EngineError as exc:
                # Our own cached conversion: rebuild it rather than failing on a stale or damaged file.
                logger.warning("Reconverting %s: the cached checkpoint did not load (%s)", target, exc)
        # ModelNotFoundError already names the settings to change.
        ct2_dir = resolve_model(model, cache=cache, allow_downloads=transcribe_settings.ALLOW_DOWNLOADS)
        try:
            convert_ct2_to_openai(ct2_dir, target)
        except ImportError as exc:
            raise EngineError(INSTALL_HINT) from exc
        except EngineError as exc:
            raise EngineError(
                f"Could not convert {ct2_dir} for openai-whisper: {exc}. {SETTING_HINT}"
            ) from exc
        return cls(target, model_name=model, device=device, cpu_threads=cpu_threads)

    def transcribe_numpy(
        self, audio: Audio, language: str | None, options: DecodeOptions | None = None
    ) -> Transcription:
        import whisper

        opts = options or DecodeOptions()
        if not self.multilingual:
            language = "en"
        kwargs: dict[str, Any] = {
            "language": language,
            "word_timestamps": opts.word_timestamps,
            "initial_prompt": opts.prompt or None,
            "fp16": self.device.startswith("cuda"),
            "condition_on_previous_text": False,
            "temperature": opts.temperature,
            "verbose": None,
        }
        if opts.max_new_tokens:
            kwargs["sample_len"] = opts.max_new_tokens  # whisper's name for the token budget
        if opts.beam_size > 1:
            # Beam search applies at temperature 0; best_of is what the hotter fallbacks sample.
            kwargs.update(beam_size=opts.beam_size, best_of=opts.beam_size)
        for key, value in opts.extra.items():
            if key in self._allowed:
                kwargs[key] = value
            else:
                logger.debug("openai-whisper ignores the option %s", key)
        samples = np.ascontiguousarray(audio, dtype=np.float32)
        try:
            with self._lock:
                result = whisper.transcribe(self.model, samples, **kwargs)
            segments = tuple(_segment(s) for s in result["segments"] if _has_speech(s))
        except Exception as exc:
            raise EngineError(f"openai-whisper failed: {exc}") from exc
        return Transcription(
            segments, language=result.get("language") or language, duration=len(samples) / SAMPLE_RATE
        )


def _has_speech(s: dict[str, Any]) -> bool:
    # At temperature 0 tiny.en answers noise with ". . ." segments (no_speech_prob ~0.9, confident
    # log-probs, so whisper's own silence rule keeps them; faster-whisper in float32 does the same).
    # A segment without a letter or digit in any script carries no words worth emitting.
    return _WORD_CHAR.search(str(s.get("text", ""))) is not None


def _segment(s: dict[str, Any]) -> Segment:
    # whisper returns numpy scalars in places; the pipeline serializes these to JSON. Word texts keep
    # the tokenizer's leading space (base.Word's contract) so they join back into the segment's text.
    return Segment(
        start=float(s["start"]),
        end=float(s["end"]),
        text=str(s["text"]).strip(),
        words=tuple(
            Word(float(w["start"]), float(w["end"]), str(w["word"]), float(w.get("probability", 1.0)))
            for w in s.get("words") or ()
        ),
        avg_logprob=float(s.get("avg_logprob", 0.0)),
        no_speech_prob=float(s.get("no_speech_prob", 0.0)),
        compression_ratio=float(s.get("compression_ratio", 1.0)),
    )


def _warm_up_word_alignment() -> None:
    # whisper's word timestamps run a numba-jitted DTW that compiles on first use (~2 s on 2 cores):
    # pay it while loading rather than in the first live request.
    try:
        import torch
        from whisper.timing import dtw

        dtw(torch.zeros(2, 2))
    except Exception as exc:  # only a latency optimisation: never fail the load for it
        logger.debug("Could not pre-compile whisper's DTW: %s", exc)


def _transcribe_keywords() -> frozenset[str]:
    """Options ``whisper.transcribe`` accepts (its own and DecodingOptions'): others in ``extra`` are ignored."""
    import whisper
    from whisper.decoding import DecodingOptions

    own = set(inspect.signature(whisper.transcribe).parameters) - {"model", "audio", "decode_options"}
    return frozenset(own | {f.name for f in dataclasses.fields(DecodingOptions)})
