"""Put the offline model where the platform expects it and register the default."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand

from xrayweb.generations.runner import ensure_tiny_model
from xrayweb.generations.services import model_version_default


class Command(BaseCommand):
    help = "Create the offline tiny model if missing and register the default model."

    def handle(self, *args: object, **options: object) -> None:
        if not settings.XRAY_BASE_MODEL:
            ensure_tiny_model(settings.XRAY_TINY_MODEL_DIR)
        version = model_version_default()
        self.stdout.write(f"Default model: {version}")
