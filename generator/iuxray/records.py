"""The values the readers yield: a study's report, one image, one item's error."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from generator.errors import GeneratorError

STUDY_UID = re.compile(r"^CXR(\d+)$")
IMAGE_NAME = re.compile(r"^(?:CXR)?(\d+)(?:_\d+)?_(IM-\d+(?:-\d+)+)$")
BAD_UID = "Study uid {uid!r} is not of the form CXR<n> or <n>"
BAD_IMAGE_NAME = "Image name {name!r} is not of the form CXR<n>_IM-<nnnn>-<nnnn>.png"


class ItemRejected(GeneratorError, ValueError):
    """One item (a file, a row, an archive member) cannot be imported."""


@dataclass
class StudyRecord:
    """One study's report fields, normalised to the Open-i uid."""

    uid: str
    source: str
    findings: str = ""
    impression: str = ""
    indication: str = ""
    comparison: str = ""
    mesh_major: list[str] = field(default_factory=list)
    mesh_automatic: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # Image ids the report names: parentImage, Kaggle projections, R2Gen image_path.
    image_ids: list[str] = field(default_factory=list)
    # Kept from R2Gen's annotation; blank where the layout gives none.
    split: str = ""


@dataclass(frozen=True)
class ImageItem:
    """One image's bytes, the study it belongs to, and its view if the layout says."""

    image_id: str
    uid: str
    filename: str
    data: bytes
    view: str = ""


@dataclass(frozen=True)
class ItemError:
    """Why one item was skipped; the import goes on without it."""

    item: str
    reason: str


def study_uid(raw: str) -> str:
    """``"CXR12"``, ``"12"`` or ``" 12 "`` → ``"CXR12"``; anything else is rejected."""
    text = raw.strip()
    digits = text[3:] if text.upper().startswith("CXR") else text
    if not digits.isdigit() or not digits.isascii():
        raise ItemRejected(BAD_UID.format(uid=raw))
    return f"CXR{int(digits)}"


def image_id_from_name(name: str) -> tuple[str, str]:
    """An Open-i or Kaggle file name → (normalised image id, study uid)."""
    stem = PurePosixPath(name).name
    for suffix in (".png", ".dcm"):
        stem = stem.removesuffix(suffix)
    match = IMAGE_NAME.match(stem)
    if not match:
        raise ItemRejected(BAD_IMAGE_NAME.format(name=name))
    uid = f"CXR{int(match.group(1))}"
    return f"{uid}_{match.group(2)}", uid


def unique(items: list[str]) -> list[str]:
    """Drop blanks and repeats, keeping the first order."""
    return list(dict.fromkeys(item for item in items if item))
