"""Deterministic patient-level splits.

IU X-ray has one study per patient (the collection's de-identification gives each
study its own patient), so the study uid is the patient key. A key's split is fixed by
``sha256("<seed>:<key>")``: the same seed always gives the same split, whatever the
import order, and no patient lands in two splits.
"""

from __future__ import annotations

import hashlib

DEFAULT_SEED = 20240607
FRACTIONS = (("train", 80), ("val", 10), ("test", 10))  # percent, summing to 100


def split_for(key: str, *, seed: int = DEFAULT_SEED) -> str:
    """The split of patient ``key`` under ``seed``: 80 % train, 10 % val, 10 % test."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    for split, percent in FRACTIONS:
        if bucket < percent:
            return split
        bucket -= percent
    raise AssertionError("FRACTIONS must sum to 100")
