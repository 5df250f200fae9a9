"""Settings of the transcribe app, read from one ``TRANSCRIBE`` dict in the project's settings.

Example::

    TRANSCRIBE = {
        "MODEL": "tiny.en",          # a name, or a path to a CTranslate2 / openai-whisper model
        "LANGUAGE": "en",            # default language; None lets a multilingual model detect it
        "MAX_SESSIONS": 8,
    }

Every key is optional; ``DEFAULTS`` documents them. Values are read on every access through
``transcribe_settings`` and the cache is dropped on Django's ``setting_changed`` signal, so
``override_settings`` works in tests.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULTS: dict[str, Any] = {
    # Engine: "faster-whisper" (CTranslate2, default), "openai-whisper" (PyTorch), or the dotted
    # path of a class implementing transcribe.engines.base.STTEngine.
    "ENGINE": "faster-whisper",
    # Model name ("tiny.en", "base", ...) or a filesystem path. Names are resolved offline: weights
    # shipped in pip packages first, then MODEL_CACHE, then (only with ALLOW_DOWNLOADS) the hub.
    "MODEL": "tiny.en",
    # Where joined/converted models live. None: $XDG_CACHE_HOME/django-transcribe (~/.cache/...).
    "MODEL_CACHE": None,
    # Let the resolver download weights from the Hugging Face hub. Off: never download.
    "ALLOW_DOWNLOADS": False,
    # "cpu", "cuda" or "auto".
    "DEVICE": "cpu",
    # CTranslate2 compute type; "default" picks int8 on CPU and float16 on CUDA.
    "COMPUTE_TYPE": "default",
    # Threads one inference call may use; 0: the cores shared out among the WORKERS.
    "CPU_THREADS": 0,
    # Threads of numpy's BLAS (0: its default, one per core). Its only work here is tiny, and its
    # idle threads spin: one thread saved a third of the server's CPU on 2 cores (transcribe/threads.py).
    "BLAS_THREADS": 1,
    # Default language of a session when the client does not say; None: detect (multilingual only).
    "LANGUAGE": "en",
    # Inference calls at once: threads of the dedicated executor (jobs of all sessions share it),
    # and CTranslate2 workers. On a 2-core CPU, two calls of one thread each beat one call of two
    # threads (a second thread speeds a tiny.en call up by only ~13%): with 4 sessions the final p95
    # went from 7.4 s to 4.6 s, and one session used 16% less CPU (bench/concurrency.py), for ~35 MiB
    # more memory (each worker has its own buffers).
    "WORKERS": 2,
    # Concurrent streaming sessions on this process; one more is closed with 4429. What keeps up
    # on 2 cores with tiny.en (bench/concurrency.py): 8 on an AVX-512 Intel Xeon, 4 on an AVX2-only
    # AMD EPYC, where 8 fall behind (final p95 4.2 s) but lose nothing. Measure yours.
    "MAX_SESSIONS": 8,
    # Longest session, in seconds of audio; the stream is finalized and closed past it.
    "MAX_SESSION_SECONDS": 4 * 3600,
    # Largest binary or text frame accepted, in bytes (4413 past it).
    "MAX_FRAME_BYTES": 1024 * 1024,
    # Concurrent sessions of one user (a few tabs), counted over all servers sharing the database;
    # one more is closed with 4429.
    "MAX_SESSIONS_PER_USER": 4,
    # Audio may arrive at most this many times faster than real time, after a burst of
    # MAX_AUDIO_BURST seconds (a resumed client re-sends what it kept); past it: 4429.
    "MAX_AUDIO_SPEED": 4.0,
    "MAX_AUDIO_BURST": 120.0,
    # Frames (audio or control) per second, sustained; twice as many in a burst; past it: 4429.
    "MAX_FRAMES_PER_SECOND": 100,
    # A final is never sent before it is stored: when the database fails, storing is retried for
    # this many seconds (the pipeline waits), then the socket closes with 4500 and the client may
    # resume from the last stored final.
    "STORE_RETRY_SECONDS": 30.0,
    # Seconds without any message before the socket closes with 4408.
    "IDLE_TIMEOUT": 60,
    # "local": the in-process executor. "channels": jobs go over the channel layer (Redis) to
    # `manage.py runworker transcribe-inference` processes, which may run on GPU machines.
    "INFERENCE": "local",
    # Remote inference: seconds to wait for a worker's answer before sending the job again (a worker
    # may have died), and how many times to send it again before the utterance is given up.
    "INFERENCE_TIMEOUT": 20.0,
    "INFERENCE_RETRIES": 2,
    # Where the recording page connects: the path of the app's websocket route in your asgi.py.
    "WEBSOCKET_URL": "/ws/transcribe/",
    # Pages on other sites that may open the socket with a ticket from the ``ticket`` view: exact
    # origins such as "https://app.example.com" (scheme, host, port if not the default; no path).
    # Empty: tickets work only for the site's own origins (ALLOWED_HOSTS).
    "TICKET_ORIGINS": [],
    # Seconds a ticket stays valid after it was issued.
    "TICKET_SECONDS": 60,
    # Keep each session's audio (Ogg/Opus, about 11 MB per hour) so reviewers can listen. Off by
    # default in the app: recordings are personal data; the demo project turns it on.
    "STORE_AUDIO": False,
    # The ``STORAGES`` alias the kept audio goes to. Serve it through the app's views, which check
    # ownership, never from a public MEDIA_URL.
    "AUDIO_STORAGE": "default",
    # Opus bitrate of kept audio, in bits per second (speech at 16 kHz mono).
    "AUDIO_BITRATE": 24000,
    # Streaming policy (seconds unless said): re-decode the utterance every STEP of new audio,
    # end an utterance after MIN_SILENCE of silence, cut one at MAX_UTTERANCE.
    "STEP": 0.5,
    # The first partial of an utterance comes after FIRST_STEP of speech, so text shows up early. A
    # first decode often hears too little and returns nothing; at 0.25 s (one 250 ms frame) the retry
    # follows a frame later, not two (0.3 s): the slowest first partials came 0.25 s sooner.
    "FIRST_STEP": 0.25,
    # Partials may keep a session's inference busy this share of the time at most: when one takes
    # longer than STEP * PARTIAL_SHARE (a slow CPU, a queue behind other sessions), the next waits
    # for proportionally more audio, so the step adapts to the load and finals are not held back.
    "PARTIAL_SHARE": 0.5,
    "MIN_SILENCE": 0.5,
    "MAX_UTTERANCE": 15.0,
    # Past SOFT_UTTERANCE seconds, a shorter pause (SOFT_SILENCE) already ends the utterance: a long
    # reading then ends at its next sentence break rather than running on, and its final (a decode of
    # the whole utterance) comes sooner and costs less. 4 s against 8 s: the same corpus WER, final
    # p95 1.46-1.66 s against 1.62-2.05 s; 3 s began to cut inside sentences. 2 s with a 0.3 s pause
    # made a phrase ending at a 0.3 s pause final 0.5 s after it at p95 instead of 8.9 s (a short
    # sentence after a cut waits for the next one), but cost two words of 210 through the server in
    # each of two runs (SOFT_SILENCE 0.2 and 0.3 s): a sentence decoded alone lost what its neighbour gave
    # ("antecedence. Nor", "has an").
    "SOFT_UTTERANCE": 4.0,
    "SOFT_SILENCE": 0.2,
    # Silero speech probability above which a 32 ms frame counts as speech.
    "VAD_THRESHOLD": 0.5,
    # What runs the Silero model: "numpy" (its weights read from faster-whisper's .onnx file) or
    # "onnxruntime". The same probabilities (within 1e-6); numpy saves a server 23-36 MiB of memory.
    "VAD_RUNTIME": "numpy",
    # Beam size of final decodes and of partial decodes.
    "BEAM_SIZE": 5,
    "PARTIAL_BEAM_SIZE": 1,
    # Partials and finals encode a window of this many seconds (at least the utterance plus 1 s)
    # instead of Whisper's 30 s; 0: the full window. Encoding 10 s costs about a quarter of 30 s on
    # tiny.en; partials are slightly rougher. Finals take 15 s: over 10 s, audio that begins
    # mid-word (a resumed session) made Whisper loop ("he can do for you. He can do for you.").
    # A final that repeats a phrase anyway is decoded again over 30 s, and speech already under way
    # when a stream starts (a resumed session) is decoded over 30 s at once.
    "PARTIAL_ENCODER_SECONDS": 10.0,
    "FINAL_ENCODER_SECONDS": 15.0,
    # After this much silence inside an utterance, decode it as if it had ended; if the silence
    # reaches MIN_SILENCE, that final is sent at once. 0: off (finals start after MIN_SILENCE).
    "SPECULATE_AFTER": 0.25,
    # A partial decode that loops ("Printing. Printing. Printing." from 0.8 s of speech in a 10 s
    # window) still shows the words it heard before the loop, instead of nothing until the next
    # decode; finals never keep any of a loop. First partial p50 1.3x sooner in-process, 1.04x
    # through the server, where many first partials wait for the previous final (bench/RESULTS.md).
    "SALVAGE_PARTIALS": True,
    # When a decode's words end before its audio does, Whisper decodes the rest as one more window,
    # at the cost of another whole decode; mostly it is the silence after the last word, where it
    # hears "Thank you." that the guards then drop. On: that window is decoded only if the VAD
    # heard at least 0.4 s of speech after the last word (transcribe/engines/faster.py).
    "SKIP_SILENT_WINDOWS": True,
    # When the speculative final decoded at a pause (SPECULATE_AFTER) ends a sentence with a sure
    # last word, the utterance ends there: at once, not after MIN_SILENCE, and even if speech
    # resumes (sentences read 0.3 s apart each become final as they end, not with the next one;
    # final p95 over such pauses 7.9 s -> 0.4 s through the server, bench/RESULTS.md). The next
    # sentence is then decoded without the audio before it: two server runs in five lost a word
    # to that ("that has an example").
    "SENTENCE_CUTS": True,
    # Give Whisper the session's recent final text as context (better casing and continuity).
    "USE_PROMPT": True,
    # Seconds between ``status`` events.
    "STATUS_INTERVAL": 1.0,
    # Prometheus metrics at the app's ``metrics`` URL. Public: anyone may scrape it. Otherwise
    # only staff users, and scrapers sending ``Authorization: Bearer <METRICS_TOKEN>`` (when set).
    "METRICS_PUBLIC": False,
    "METRICS_TOKEN": None,
}


@cache
def _merged() -> dict[str, Any]:
    user = getattr(settings, "TRANSCRIBE", None) or {}
    return {**DEFAULTS, **{k: v for k, v in user.items() if k in DEFAULTS}}


class _Settings:
    """Attribute access to the merged settings: ``transcribe_settings.MODEL``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return _merged()[name]
        except KeyError:
            raise AttributeError(f"Unknown TRANSCRIBE setting {name!r}") from None

    def as_dict(self) -> dict[str, Any]:
        return dict(_merged())

    @property
    def model_cache(self) -> Path:
        import os

        configured = _merged()["MODEL_CACHE"]
        if configured:
            return Path(configured).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "django-transcribe"


transcribe_settings = _Settings()


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == "TRANSCRIBE":
        _merged.cache_clear()
