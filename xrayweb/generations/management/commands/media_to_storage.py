"""Move local media into the configured storage (an S3 bucket): run it once after
setting XRAY_STORAGE=s3; running it again changes nothing."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from xrayweb.media_move import media_move


class Command(BaseCommand):
    help = "Copy media files into storage and rewrite host paths in rows as keys."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--from",
            dest="source",
            default=str(settings.MEDIA_ROOT),
            help="the media folder to move (default: MEDIA_ROOT)",
        )

    def handle(self, *args: object, **options: object) -> None:
        source = Path(str(options["source"])).expanduser().resolve()
        if not source.is_dir():
            raise CommandError(f"--from {str(source)!r} is not a folder")
        report = media_move(source)
        for line in report.rewritten:
            self.stdout.write(f"rewrote {line}")
        for line in report.missing:
            self.stderr.write(f"missing, left as it was: {line}")
        self.stdout.write(report.summary())
