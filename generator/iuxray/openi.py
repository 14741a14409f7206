"""The official Open-i layout: report XML files and PNG images, archived or extracted.

XML is parsed with defusedxml with DTDs forbidden (Open-i reports have none), so
an XXE, external-DTD or billion-laughs file is one item error, never a read of a
server file or an exhausted memory.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from generator.iuxray.records import (
    ImageItem,
    ItemError,
    ItemRejected,
    StudyRecord,
    image_id_from_name,
    study_uid,
    unique,
)
from generator.iuxray.safetar import TarFile, TarLimits, iter_tar

SOURCE = "openi"
LABELS = {
    "FINDINGS": "findings",
    "IMPRESSION": "impression",
    "INDICATION": "indication",
    "COMPARISON": "comparison",
}
VIEW_POSITIONS = {
    "PA": "frontal",
    "AP": "frontal",
    "LL": "lateral",
    "RL": "lateral",
    "LATERAL": "lateral",
    "LARGE LATERAL": "lateral",
}
MAX_XML_BYTES = 1024 * 1024

MALFORMED_XML = "malformed XML: {error}"
FORBIDDEN_XML = "refused XML construct ({error})"
NO_UID = "report has no <uId id=...> element"
NOT_A_FILE = "not a regular file (symbolic link or special file)"
XML_TOO_LARGE = "report is {size} bytes, over the {limit}-byte limit"
DICOM_COLUMNS = "DICOM metadata {path} lacks the columns {missing}"


def text_of(element: Element | None) -> str:
    return " ".join("".join(element.itertext()).split()) if element is not None else ""


def parse_report_xml(data: bytes) -> StudyRecord:
    """One ``ecgen-radiology/<n>.xml`` → its study record; raise ItemRejected if bad."""
    if len(data) > MAX_XML_BYTES:
        raise ItemRejected(XML_TOO_LARGE.format(size=len(data), limit=MAX_XML_BYTES))
    try:
        root = fromstring(data, forbid_dtd=True)
    except DefusedXmlException as error:
        raise ItemRejected(FORBIDDEN_XML.format(error=error)) from None
    except ParseError as error:
        raise ItemRejected(MALFORMED_XML.format(error=error)) from None
    uid_element = root.find("uId")
    if uid_element is None or not uid_element.get("id"):
        raise ItemRejected(NO_UID)
    study = StudyRecord(uid=study_uid(uid_element.get("id", "")), source=SOURCE)
    for abstract in root.iter("AbstractText"):
        field = LABELS.get((abstract.get("Label") or "").upper())
        if field:
            setattr(study, field, text_of(abstract))
    mesh = root.find("MeSH")
    if mesh is not None:
        study.mesh_major = unique([text_of(e) for e in mesh.findall("major")])
        study.mesh_automatic = unique([text_of(e) for e in mesh.findall("automatic")])
    study.problems = unique([term.split("/")[0].strip() for term in study.mesh_major])
    study.image_ids = unique(
        [normal_image_id(e.get("id", "")) for e in root.iter("parentImage")]
    )
    return study


def normal_image_id(raw: str) -> str:
    try:
        return image_id_from_name(raw)[0]
    except ItemRejected:
        return raw


def iter_files(path: Path, suffix: str, limits: TarLimits | None) -> Iterator:
    """The ``suffix`` files of a folder (sorted) or of a tar archive (in order)."""
    if path.is_dir():
        for file in sorted(path.rglob(f"*{suffix}")):
            if file.is_symlink() or not file.is_file():
                yield ItemError(f"{path.name}/{file.relative_to(path)}", NOT_A_FILE)
            else:
                yield TarFile(str(file.relative_to(path)), file.read_bytes())
        return
    yield from iter_tar(path, suffix=suffix, limits=limits)


def iter_reports(
    path: Path, *, limits: TarLimits | None = None
) -> Iterator[StudyRecord | ItemError]:
    """Every report of ``NLMCXR_reports.tgz`` or its extracted folder."""
    for file in iter_files(path, ".xml", limits):
        if isinstance(file, ItemError):
            yield file
            continue
        try:
            yield parse_report_xml(file.data)
        except ItemRejected as error:
            yield ItemError(f"{path.name}:{file.name}", str(error))


def iter_images(
    path: Path, *, limits: TarLimits | None = None
) -> Iterator[ImageItem | ItemError]:
    """Every PNG of ``NLMCXR_png.tgz`` or its folder; the view is left to DICOM data."""
    for file in iter_files(path, ".png", limits):
        if isinstance(file, ItemError):
            yield file
            continue
        try:
            image_id, uid = image_id_from_name(file.name)
        except ItemRejected as error:
            yield ItemError(f"{path.name}:{file.name}", str(error))
            continue
        name = Path(file.name).name
        yield ImageItem(image_id=image_id, uid=uid, filename=name, data=file.data)


def read_view_positions(path: Path) -> dict[str, str]:
    """``nlmcxr_dicom_metadata.csv.gz``: normalised image id → DICOM View Position."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
        missing = {"imageid", "View Position"} - set(reader.fieldnames or [])
        if missing:
            raise ItemRejected(DICOM_COLUMNS.format(path=path, missing=sorted(missing)))
        return {
            normal_image_id(row["imageid"]): row["View Position"].strip().upper()
            for row in reader
            if row["View Position"].strip()
        }
