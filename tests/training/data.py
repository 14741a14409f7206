"""Tiny, learnable training data with no Django import (the DDP script uses it)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from generator.training import TrainingConfig, TrainingExample

SHADES = {"dark chest": 40, "bright chest": 215}


def gray_examples(n: int = 8, size: int = 32) -> list[TrainingExample]:
    """``n`` flat images alternating between two shades, captioned by shade."""
    captions = list(SHADES)
    return [
        TrainingExample(
            Image.new("L", (size, size), SHADES[captions[i % 2]]), captions[i % 2]
        )
        for i in range(n)
    ]


def small_config(base: Path, output_dir: Path, **overrides: object) -> TrainingConfig:
    """A config that trains in seconds on the tiny model at 32²."""
    fields = {
        "base": str(base),
        "output_dir": str(output_dir),
        "resolution": 32,
        "rank": 4,
        "alpha": 4,
        "batch_size": 2,
        "epochs": 1,
        "learning_rate": 1e-2,
        "validation_size": 2,
    }
    fields.update(overrides)
    return TrainingConfig(**fields)


class Interrupted(Exception):
    """Raised by ``interrupt_at`` to stop a training run as a kill would."""


def interrupt_at(step: int):
    """A progress callback that interrupts the run when it reports ``step``."""

    def progress(report) -> None:
        if report.step == step:
            raise Interrupted

    return progress
