"""Seeds derived from the step, so that no random state is carried between steps."""

from __future__ import annotations


def seed_of(seed: int, step: int, micro: int, rank: int) -> int:
    """A distinct, reproducible seed for one micro-batch on one process."""
    return (seed * 1_000_003 + step * 1_009 + micro * 101 + rank * 7) % (2**63)
