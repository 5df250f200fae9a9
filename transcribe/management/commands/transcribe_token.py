"""Create (or rotate) the API token a user's non-browser clients authenticate with.

Only a digest of the key is stored, so the key is printed once, when it is made.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from transcribe.models import ApiToken


class Command(BaseCommand):
    help = "Create the WebSocket API token of USERNAME and print it (once: only its digest is kept)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--rotate", action="store_true", help="Replace an existing token with a new one.")
        parser.add_argument(
            "--create-user", action="store_true", help="Create the user (without a password) if missing."
        )

    def handle(self, *args: Any, username: str, rotate: bool, create_user: bool, **options: Any) -> None:
        User = get_user_model()
        try:
            user = User.objects.get_by_natural_key(username)
        except User.DoesNotExist:
            if not create_user:
                raise CommandError(
                    f"No user {username!r}: create one with `manage.py createsuperuser`, or pass --create-user."
                ) from None
            user = User.objects.create_user(username)
            self.stderr.write(f"Created user {username!r} (no password: it can only use the token).")
        existing = ApiToken.objects.filter(user=user).first()
        if existing is not None and not rotate:
            raise CommandError(
                f"{username!r} already has a token (starting {existing.prefix}…, made {existing.created_at:%Y-%m-%d}). "
                "Keys are stored hashed and cannot be shown again: pass --rotate to replace it."
            )
        ApiToken.objects.filter(user=user).delete()
        self.stdout.write(ApiToken.objects.create(user=user).key)
