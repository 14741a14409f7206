"""manage.py api_token USERNAME [--name NAME] [--expires-days N]: print a new token."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from xrayweb.api import services

NO_SUCH_USER = "No user is named {name!r}."


class Command(BaseCommand):
    help = "Make an API token for a user and print its key (shown only this once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="What the token is for")
        parser.add_argument(
            "--expires-days", type=int, default=None, help="Default: never expires"
        )

    def handle(self, *args: object, **options: object) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(NO_SUCH_USER.format(name=options["username"]))
        try:
            new = services.api_token_create(
                user=user, name=options["name"], expires_days=options["expires_days"]
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(new.key)
