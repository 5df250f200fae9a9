"""``manage.py transcribe_convert_model``: turn CTranslate2 Whisper weights into an openai-whisper checkpoint.

The openai-whisper engine converts on first use by itself; this command does it ahead of time (at
deploy, in a Docker build) or writes the checkpoint somewhere else to point ``TRANSCRIBE["MODEL"]`` at.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...conf import transcribe_settings
from ...exceptions import TranscribeError


class Command(BaseCommand):
    help = (
        "Convert a CTranslate2 Whisper model (a name such as tiny.en, or a folder with model.bin) into an "
        "openai-whisper checkpoint for TRANSCRIBE['ENGINE'] = 'openai-whisper'. Only float16/float32 models convert."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "model",
            nargs="?",
            help="Model name or CTranslate2 folder (default: TRANSCRIBE['MODEL']).",
        )
        parser.add_argument(
            "--output",
            type=Path,
            help="Checkpoint to write (default: <MODEL_CACHE>/openai/<model>.pt, where the engine looks).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from ...engines.convert import convert_ct2_to_openai
        from ...engines.openai import default_checkpoint_path
        from ...engines.resolver import resolve_model

        model: str = options["model"] or transcribe_settings.MODEL
        if Path(model).suffix == ".pt":
            raise CommandError(f"{model} is already an openai-whisper checkpoint: nothing to convert.")
        cache = transcribe_settings.model_cache
        output: Path = (options["output"] or default_checkpoint_path(model, cache)).expanduser().resolve()
        started = time.perf_counter()
        try:
            ct2_dir = resolve_model(model, cache=cache, allow_downloads=transcribe_settings.ALLOW_DOWNLOADS)
            convert_ct2_to_openai(ct2_dir, output)
        except ImportError as exc:
            raise CommandError(
                f'openai-whisper is not installed ({exc}): pip install "django-transcribe[openai-whisper]"'
            ) from exc
        except TranscribeError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            self.style.SUCCESS(f"Wrote {output} from {ct2_dir} in {time.perf_counter() - started:.1f} s.")
        )
        self.stdout.write(
            f'Use it with:\n    TRANSCRIBE = {{"ENGINE": "openai-whisper", "MODEL": "{output}"}}'
        )
