"""Settings for the test suite: SQLite, in-memory channel layer, the real bundled tiny.en model."""

from __future__ import annotations

import tempfile
from pathlib import Path

SECRET_KEY = "NOTASECRET"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "transcribe",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [Path(__file__).resolve().parent.parent / "templates"],
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
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "transcribe:session-list"
LOGOUT_REDIRECT_URL = "login"
STATIC_URL = "/static/"
MEDIA_ROOT = tempfile.mkdtemp(prefix="transcribe-tests-media-")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
TRANSCRIBE = {"ENGINE": "faster-whisper", "MODEL": "tiny.en", "LANGUAGE": "en"}
SILENCED_SYSTEM_CHECKS = ["transcribe.W001"]  # the in-memory layer is right for tests
