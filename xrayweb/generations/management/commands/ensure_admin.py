"""Create the first admin user if none exists.

A password from XRAY_ADMIN_PASSWORD must pass every password validator and is never
printed. A generated one is printed only to an interactive terminal; otherwise (a log
file, a service manager) it is written to XRAY_VAR_DIR/admin-password.txt, readable
by its owner alone, and that path is printed.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

PASSWORD_FILE = "admin-password.txt"
REFUSED = "XRAY_ADMIN_PASSWORD is refused: {reasons}"


class Command(BaseCommand):
    help = "Create an admin from XRAY_ADMIN_USER / XRAY_ADMIN_PASSWORD, else random."

    def handle(self, *args: object, **options: object) -> None:
        users = get_user_model()
        username = os.environ.get("XRAY_ADMIN_USER", "admin")
        if users.objects.filter(username=username).exists():
            self.stdout.write(
                f"Admin user {username!r} already exists: its password was shown "
                f"when it was made, or is in var/{PASSWORD_FILE} (python manage.py "
                f"changepassword {username} sets a new one)."
            )
            return
        given = os.environ.get("XRAY_ADMIN_PASSWORD", "")
        password = given or secrets.token_urlsafe(16)
        user = users(username=username, email="", is_staff=True, is_superuser=True)
        try:
            validate_password(password, user)
        except ValidationError as exc:
            raise CommandError(REFUSED.format(reasons=" ".join(exc.messages))) from None
        user.set_password(password)
        user.save()
        shown = self._shown(given, password)
        self.stdout.write(f"Created admin user {username!r} {shown}")

    def _shown(self, given: str, password: str) -> str:
        if given:
            return "with the password in XRAY_ADMIN_PASSWORD."
        if self.stdout.isatty():
            return f"with password {password!r}"
        path = write_private(Path(settings.VAR_DIR) / PASSWORD_FILE, password + "\n")
        return f"; its password is in {path} (readable by its owner only)."


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` with mode 0600, an existing file's mode included."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        os.fchmod(descriptor, 0o600)
        handle.write(text)
    return path
