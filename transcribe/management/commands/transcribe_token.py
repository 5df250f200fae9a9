"""Create (or show, or rotate) the API token a user's non-browser clients authenticate with."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from transcribe.models import ApiToken


class Command(BaseCommand):
    help = "Print the WebSocket API token of USERNAME, creating it if needed."

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
        if rotate:
            ApiToken.objects.filter(user=user).delete()
        token, _ = ApiToken.objects.get_or_create(user=user)
        self.stdout.write(token.key)
