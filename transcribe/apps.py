from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class TranscribeConfig(AppConfig):
    name = "transcribe"
    verbose_name = _("Transcribe")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registration only: engines and weights load lazily on the first session.
        from . import checks, signals  # noqa: F401
        from .conf import transcribe_settings
        from .heap import cap_primitive_cache, tune_allocator
        from .lazy_imports import defer_unused
        from .threads import limit_blas_threads

        tune_allocator()  # before the threads that would each get an arena of their own
        cap_primitive_cache()  # before the engine compiles its first window
        defer_unused()  # before the engine imports faster-whisper
        limit_blas_threads(int(transcribe_settings.BLAS_THREADS))
