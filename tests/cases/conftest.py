"""Builders for the import tests: PNGs, tar archives, report XML, the importer."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from generator.iuxray.safetar import TarLimits
from xrayweb.cases.services import ImportSources

REPORT_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <uId id="{uid}"/>
   <MedlineCitation><Article><Abstract>
      <AbstractText Label="COMPARISON">None.</AbstractText>
      <AbstractText Label="INDICATION">Cough</AbstractText>
      <AbstractText Label="FINDINGS">{findings}</AbstractText>
      <AbstractText Label="IMPRESSION">{impression}</AbstractText>
   </Abstract></Article></MedlineCitation>
   <MeSH><major>Opacity/lung/base/left</major><automatic>opacity</automatic></MeSH>
   {images}
</eCitation>
"""


def report_xml(
    uid: str,
    image_ids: list[str] | None = None,
    findings: str = "The lungs are clear.",
    impression: str = "No acute disease.",
) -> bytes:
    images = "".join(f'<parentImage id="{i}"/>' for i in (image_ids or []))
    return REPORT_XML.format(
        uid=uid, findings=findings, impression=impression, images=images
    ).encode()


def png_bytes(
    width: int = 300, height: int = 360, mode: str = "L", seed: int = 0
) -> bytes:
    """A small gradient PNG; ``seed`` changes its bytes."""
    image = Image.linear_gradient("L").resize((width, height))
    if seed:
        image = image.point(lambda v: (v + seed) % 256)
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def tar_add(archive: tarfile.TarFile, name: str, data: bytes = b"", **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    archive.addfile(info, io.BytesIO(data) if info.isreg() else None)


def make_tar(path: Path, members: list[tuple]) -> Path:
    """A .tgz of (name, data, attrs) members, written as given (no sanitising)."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data, *attrs in members:
            tar_add(archive, name, data, **(attrs[0] if attrs else {}))
    return path


@pytest.fixture
def importer(monkeypatch, clip_tokenizer, media_root, db):
    """``case_import`` with the shared real tokenizer and a throwaway media root."""
    from xrayweb.cases import services

    monkeypatch.setattr(services, "clip_tokenizer", lambda: clip_tokenizer)

    def run(**kwargs):
        kwargs.setdefault("tar_limits", TarLimits())
        return services.case_import(sources=ImportSources(**kwargs))

    return run
