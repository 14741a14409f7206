"""What a run reports after every optimiser step, and how the figures are made."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingProgress:
    """What a progress callback receives after every optimiser step."""

    step: int
    total: int
    epoch: int
    loss: float
    eta_s: float
    learning_rate: float


ProgressCallback = Callable[[TrainingProgress], None]


def report(
    progress: ProgressCallback | None,
    *,
    step: int,
    total: int,
    epoch: int,
    loss: float,
    learning_rate: float,
    elapsed: float,
    resumed_from: int,
) -> None:
    """Call ``progress`` (if any), the time left estimated from this run's own pace."""
    if progress is None:
        return
    done = step - resumed_from
    eta = elapsed / done * (total - step) if done else 0.0
    progress(
        TrainingProgress(
            step=step,
            total=total,
            epoch=epoch,
            loss=loss,
            eta_s=eta,
            learning_rate=learning_rate,
        )
    )
