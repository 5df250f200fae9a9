"""Demo project settings: the embedded default (SQLite, in-memory channel layer, bundled tiny.en).

Secrets and switches come from the environment; the defaults are for a developer's machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-dev-key-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")

INSTALLED_APPS = [
    "daphne",  # runserver serves HTTP and WebSockets (ASGI)
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "transcribe",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # static files, also with DEBUG off
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]


def database_from_url(url: str) -> dict[str, object]:
    """``sqlite:///path/to/db.sqlite3`` or ``postgres://user:pass@host:port/name`` (psycopg 3)."""
    parsed = urlsplit(url)
    if parsed.scheme == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": unquote(parsed.path) or ":memory:"}
    if parsed.scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parsed.path.lstrip("/")),
            "USER": unquote(parsed.username or ""),
            "PASSWORD": unquote(parsed.password or ""),
            "HOST": parsed.hostname or "",
            "PORT": str(parsed.port or ""),
        }
    raise ValueError(f"Unsupported DATABASE_URL scheme {parsed.scheme!r}: use sqlite:// or postgres://")


DATABASES = {
    "default": database_from_url(os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"))
}
# One process: the in-memory layer. Several web nodes or remote inference workers: Redis.
REDIS_URL = os.environ.get("REDIS_URL", "")
CHANNEL_LAYERS = {
    "default": (
        {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # Inference jobs are one per session in flight: the queue holds what the sessions hold.
            "CONFIG": {
                # redis-py 8 times out socket reads after 5 s by default, which breaks the layer's
                # blocking receive (django/channels_redis#422): allow longer than its 5 s BZPOPMIN.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 30}],
                "capacity": 200,
                "expiry": 60,
                # Keys start with this: several sites (or test runs) can share one Redis.
                "prefix": os.environ.get("REDIS_PREFIX", "asgi"),
            },
        }
        if REDIS_URL
        else {"BACKEND": "channels.layers.InMemoryChannelLayer"}
    )
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
# The admin edits every segment of a session in one form (3 fields each): allow hour-long ones.
DATA_UPLOAD_MAX_NUMBER_FIELDS = 10_000
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "transcribe:session-list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", BASE_DIR / "staticfiles"))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Kept recordings live here. No MEDIA_URL route: audio is served only by the app's views, which
# check who asks.
MEDIA_ROOT = Path(os.environ.get("DJANGO_MEDIA_ROOT", BASE_DIR / "media"))

TRANSCRIBE = {
    "ENGINE": os.environ.get("TRANSCRIBE_ENGINE", "faster-whisper"),
    "MODEL": os.environ.get("TRANSCRIBE_MODEL", "tiny.en"),
    "DEVICE": os.environ.get("TRANSCRIBE_DEVICE", "cpu"),
    "STORE_AUDIO": os.environ.get("TRANSCRIBE_STORE_AUDIO", "1") == "1",
    # "local", or "channels": inference on `manage.py runworker transcribe-inference` processes.
    "INFERENCE": os.environ.get("TRANSCRIBE_INFERENCE", "local"),
    "INFERENCE_TIMEOUT": float(os.environ.get("TRANSCRIBE_INFERENCE_TIMEOUT", "20")),
    # Inference calls at once, and the CPU threads each may use (0: the cores shared out); see the
    # WORKERS comment in transcribe/conf.py.
    "WORKERS": int(os.environ.get("TRANSCRIBE_WORKERS", "2")),
    "CPU_THREADS": int(os.environ.get("TRANSCRIBE_CPU_THREADS", "0")),
    "BLAS_THREADS": int(os.environ.get("TRANSCRIBE_BLAS_THREADS", "1")),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "transcribe": {
            "handlers": ["console"],
            "level": os.environ.get("TRANSCRIBE_LOG_LEVEL", "INFO"),
            "propagate": False,  # daphne's root handler would print every line twice
        }
    },
}
