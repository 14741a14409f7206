"""PNG plots for the training and evaluation pages (matplotlib, no display)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

from matplotlib import pyplot as plt


def loss_curve_png(
    loss_history: list[list[float]], validation_history: list[list[float]]
) -> bytes:
    """Training loss per step and validation loss per epoch on one axis."""
    figure, axis = plt.subplots(figsize=(6, 3.2), dpi=100)
    if loss_history:
        steps, losses = zip(*loss_history, strict=True)
        axis.plot(steps, losses, lw=1, color="#4a78b5", label="train loss")
    if validation_history:
        steps, losses = zip(*validation_history, strict=True)
        axis.plot(steps, losses, "o-", color="#c0504d", label="validation loss")
    axis.set_xlabel("optimiser step")
    axis.set_ylabel("MSE")
    axis.grid(alpha=0.3)
    if loss_history or validation_history:
        axis.legend(loc="upper right")
    return _png(figure)


def histogram_png(values: list[float], label: str) -> bytes:
    """A histogram of per-case scores, with the mean marked."""
    figure, axis = plt.subplots(figsize=(6, 3.2), dpi=100)
    axis.hist(values, bins=20, color="#4a78b5")
    if values:
        axis.axvline(sum(values) / len(values), color="#c0504d", label="mean")
        axis.legend(loc="upper right")
    axis.set_xlabel(label)
    axis.set_ylabel("cases")
    return _png(figure)


def _png(figure: object) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
