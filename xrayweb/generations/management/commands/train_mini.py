"""Train the mini SD-shaped model on public-cxr: ``generator.mini`` from manage.py."""

from __future__ import annotations

from argparse import ArgumentParser, Namespace

from django.core.management.base import BaseCommand

from generator import mini


class Command(BaseCommand):
    help = (
        "Train the mini text-to-CXR model (VAE, then UNet and text encoder) on "
        "public-cxr; rerun to resume after an interruption."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        mini.add_arguments(parser)

    def handle(self, *args: object, **options: object) -> None:
        mini.run_from_arguments(Namespace(**options))
