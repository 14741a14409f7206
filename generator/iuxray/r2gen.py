"""The R2Gen layout: annotation.json with its train/val/test lists, images/<id>/<k>.png.

R2Gen's ``report`` is the findings section of the Open-i report, so it is stored as
findings. Its split is kept. Its image order is taken as the view: ``0.png`` frontal,
``1.png`` lateral. R2Gen built ``image_path`` frontal first from the Open-i figure
order, and every study in its annotation has exactly these two images; a third image,
if any, is recorded as of unknown view.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from generator.iuxray.records import (
    ImageItem,
    ItemError,
    ItemRejected,
    StudyRecord,
    study_uid,
)

SOURCE = "r2gen"
ANNOTATION = "annotation.json"
IMAGES_DIR = "images"
SPLITS = ("train", "val", "test")
VIEW_BY_ORDER = ("frontal", "lateral")
STUDY_ID = re.compile(r"^(CXR\d+)(?:_\d+)?_IM-\d+(?:-\d+)?$")
MAX_JSON_BYTES = 64 * 1024 * 1024

MISSING_FILE = "file is missing"
NOT_A_FILE = "not a regular file"
BAD_JSON = "not valid UTF-8 JSON: {error}"
BAD_SHAPE = 'expected an object with "train", "val" and "test" lists'
BAD_ENTRY = "entry {index} of {split!r} is not an object with id, report, image_path"
BAD_STUDY_ID = "study id {value!r} is not of the form CXR<n>_IM-<nnnn>"
BAD_IMAGE_PATH = "image path {value!r} is not <study id>/<k>.png"
SPLIT_CONFLICT = "entry in {split!r} says its split is {value!r}"
JSON_TOO_LARGE = "annotation is {size} bytes, over the {limit}-byte limit"


def load_annotation(path: Path) -> dict[str, list]:
    if not path.is_file():
        raise ItemRejected(MISSING_FILE)
    if path.stat().st_size > MAX_JSON_BYTES:
        size = path.stat().st_size
        raise ItemRejected(JSON_TOO_LARGE.format(size=size, limit=MAX_JSON_BYTES))
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ItemRejected(BAD_JSON.format(error=error)) from None
    if not isinstance(data, dict) or not any(
        isinstance(data.get(s), list) for s in SPLITS
    ):
        raise ItemRejected(BAD_SHAPE)
    return data


def study_from_entry(entry: object, split: str, index: int) -> StudyRecord:
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
        raise ItemRejected(BAD_ENTRY.format(index=index, split=split))
    paths, report = entry.get("image_path"), entry.get("report")
    if not isinstance(paths, list) or not isinstance(report, str):
        raise ItemRejected(BAD_ENTRY.format(index=index, split=split))
    match = STUDY_ID.match(entry["id"])
    if not match:
        raise ItemRejected(BAD_STUDY_ID.format(value=entry["id"]))
    if entry.get("split", split) != split:
        raise ItemRejected(SPLIT_CONFLICT.format(split=split, value=entry.get("split")))
    image_ids = [image_id_from_path(entry["id"], p) for p in paths]
    return StudyRecord(
        uid=study_uid(match.group(1)),
        source=SOURCE,
        findings=" ".join(report.split()),
        image_ids=image_ids,
        split=split,
    )


def image_id_from_path(study_id: str, raw: object) -> str:
    """``"CXR2384_IM-0942/0.png"`` → ``"CXR2384_IM-0942_0"``."""
    path = PurePosixPath(str(raw))
    if len(path.parts) != 2 or path.parts[0] != study_id or path.suffix != ".png":
        raise ItemRejected(BAD_IMAGE_PATH.format(value=raw))
    if not path.stem.isdigit():
        raise ItemRejected(BAD_IMAGE_PATH.format(value=raw))
    return f"{study_id}_{int(path.stem)}"


def iter_reports(folder: Path) -> Iterator[StudyRecord | ItemError]:
    """Every entry of annotation.json as a study carrying R2Gen's split."""
    path = folder / ANNOTATION
    try:
        data = load_annotation(path)
    except ItemRejected as error:
        yield ItemError(str(path), str(error))
        return
    for split in SPLITS:
        for index, entry in enumerate(data.get(split) or []):
            try:
                yield study_from_entry(entry, split, index)
            except ItemRejected as error:
                yield ItemError(f"{ANNOTATION} {split}[{index}]", str(error))


def iter_images(
    folder: Path, studies: list[StudyRecord]
) -> Iterator[ImageItem | ItemError]:
    """The images the annotation names that exist, in its order, with their view."""
    root = folder / IMAGES_DIR
    for study in studies:
        for order, image_id in enumerate(study.image_ids):
            study_id, k = image_id.rsplit("_", 1)
            file = root / study_id / f"{k}.png"
            item = f"{IMAGES_DIR}/{study_id}/{k}.png"
            if file.is_symlink():
                yield ItemError(item, NOT_A_FILE)
                continue
            if not file.is_file():
                continue  # the import reports it as a report without its image
            yield ImageItem(
                image_id=image_id,
                uid=study.uid,
                filename=f"{image_id}.png",
                data=file.read_bytes(),
                view=VIEW_BY_ORDER[order] if order < len(VIEW_BY_ORDER) else "",
            )
