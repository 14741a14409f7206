"""The Kaggle layout: indiana_reports.csv, indiana_projections.csv, images_normalized/.

Each CSV is read whole (under 2 MB) and decoded as strict UTF-8, so a file in another
encoding is one clear error naming the byte offset, never mojibake in the database.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from generator.iuxray.records import (
    ImageItem,
    ItemError,
    ItemRejected,
    StudyRecord,
    image_id_from_name,
    study_uid,
    unique,
)

SOURCE = "kaggle"
REPORTS_CSV = "indiana_reports.csv"
PROJECTIONS_CSV = "indiana_projections.csv"
IMAGES_DIR = "images_normalized"
REPORT_COLUMNS = (
    "uid",
    "MeSH",
    "Problems",
    "indication",
    "comparison",
    "findings",
    "impression",
)
PROJECTION_COLUMNS = ("uid", "filename", "projection")
PROJECTIONS = {"frontal": "frontal", "lateral": "lateral"}
MAX_CSV_BYTES = 64 * 1024 * 1024

MISSING_FILE = "file is missing"
MISSING_COLUMNS = "CSV lacks the columns {missing}"
BAD_ENCODING = "not UTF-8 text: byte {byte} at offset {offset} ({reason})"
CSV_TOO_LARGE = "CSV is {size} bytes, over the {limit}-byte limit"
BAD_CSV = "unreadable CSV: {error}"
UNKNOWN_PROJECTION = "projection {value!r} is neither Frontal nor Lateral"
NOT_A_FILE = "not a regular file"


@dataclass(frozen=True)
class Projection:
    uid: str
    image_id: str
    view: str


def read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """All rows of a strict-UTF-8 CSV holding ``columns``; ItemRejected otherwise."""
    if not path.is_file():
        raise ItemRejected(MISSING_FILE)
    size = path.stat().st_size
    if size > MAX_CSV_BYTES:
        raise ItemRejected(CSV_TOO_LARGE.format(size=size, limit=MAX_CSV_BYTES))
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        byte = f"0x{data[error.start]:02x}"
        raise ItemRejected(
            BAD_ENCODING.format(byte=byte, offset=error.start, reason=error.reason)
        ) from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ItemRejected(MISSING_COLUMNS.format(missing=missing))
        return list(reader)
    except csv.Error as error:
        raise ItemRejected(BAD_CSV.format(error=error)) from None


def split_terms(value: str | None) -> list[str]:
    return unique([term.strip() for term in (value or "").split(";")])


def study_from_row(row: dict[str, str]) -> StudyRecord:
    return StudyRecord(
        uid=study_uid(row["uid"] or ""),
        source=SOURCE,
        findings=" ".join((row["findings"] or "").split()),
        impression=" ".join((row["impression"] or "").split()),
        indication=" ".join((row["indication"] or "").split()),
        comparison=" ".join((row["comparison"] or "").split()),
        mesh_major=split_terms(row["MeSH"]),
        problems=split_terms(row["Problems"]),
    )


def iter_reports(folder: Path) -> Iterator[StudyRecord | ItemError]:
    """Every row of indiana_reports.csv as a study; a bad row is one ItemError."""
    path = folder / REPORTS_CSV
    try:
        rows = read_csv(path, REPORT_COLUMNS)
    except ItemRejected as error:
        yield ItemError(str(path), str(error))
        return
    for line, row in enumerate(rows, start=2):
        try:
            yield study_from_row(row)
        except ItemRejected as error:
            yield ItemError(f"{REPORTS_CSV} line {line}", str(error))


def read_projections(folder: Path) -> tuple[dict[str, Projection], list[ItemError]]:
    """indiana_projections.csv: normalised image id → its study and view."""
    path = folder / PROJECTIONS_CSV
    try:
        rows = read_csv(path, PROJECTION_COLUMNS)
    except ItemRejected as error:
        return {}, [ItemError(str(path), str(error))]
    projections, errors = {}, []
    for line, row in enumerate(rows, start=2):
        try:
            image_id, _ = image_id_from_name(row["filename"] or "")
            view = PROJECTIONS.get((row["projection"] or "").strip().lower())
            if view is None:
                raise ItemRejected(UNKNOWN_PROJECTION.format(value=row["projection"]))
            uid = study_uid(row["uid"] or "")
            projections[image_id] = Projection(uid=uid, image_id=image_id, view=view)
        except ItemRejected as error:
            errors.append(ItemError(f"{PROJECTIONS_CSV} line {line}", str(error)))
    return projections, errors


def iter_images(
    folder: Path, projections: dict[str, Projection]
) -> Iterator[ImageItem | ItemError]:
    """The PNGs of images_normalized/, with the view the projections CSV gives."""
    for file in sorted((folder / IMAGES_DIR).glob("*.png")):
        item = f"{IMAGES_DIR}/{file.name}"
        if file.is_symlink() or not file.is_file():
            yield ItemError(item, NOT_A_FILE)
            continue
        try:
            image_id, uid = image_id_from_name(file.name)
        except ItemRejected as error:
            yield ItemError(item, str(error))
            continue
        projection = projections.get(image_id)
        yield ImageItem(
            image_id=image_id,
            uid=projection.uid if projection else uid,
            filename=file.name,
            data=file.read_bytes(),
            view=projection.view if projection else "",
        )
