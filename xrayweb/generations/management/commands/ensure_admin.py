"""Create the first admin user if none exists, printing its credentials."""

from __future__ import annotations

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create an admin from XRAY_ADMIN_USER / XRAY_ADMIN_PASSWORD, else random."

    def handle(self, *args: object, **options: object) -> None:
        users = get_user_model()
        username = os.environ.get("XRAY_ADMIN_USER", "admin")
        if users.objects.filter(username=username).exists():
            self.stdout.write(
                f"Admin user {username!r} already exists: its password was printed "
                f"when it was made (python manage.py changepassword {username} sets "
                "a new one)."
            )
            return
        password = os.environ.get("XRAY_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        users.objects.create_superuser(username=username, email="", password=password)
        self.stdout.write(
            f"Created the admin user {username!r} with password {password!r}"
        )
