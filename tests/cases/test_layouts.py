"""The Kaggle and R2Gen layouts from the real files in ../shared/data."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from django.core.management import call_command
from PIL import Image

from tests.cases.conftest import png_bytes
from tests.conftest import SHARED_DATA, require_shared
from xrayweb.cases.models import Case, CaseImage

pytestmark = [pytest.mark.needs_shared, pytest.mark.slow]

KAGGLE_VIEWS = {
    "CXR1000_IM-0003-1001": "frontal",
    "CXR1000_IM-0003-2001": "lateral",
    "CXR1000_IM-0003-3001": "frontal",
    "CXR1001_IM-0004-1001": "frontal",
}


def test_it_imports_the_kaggle_layout_with_its_four_real_images(importer):
    folder = require_shared(SHARED_DATA / "iuxray-kaggle")
    dicom = require_shared(SHARED_DATA / "openi" / "nlmcxr_dicom_metadata.csv.gz")

    report = importer(kaggle_dir=folder, dicom_metadata=dicom)

    assert report.cases_created == 3851
    assert report.images_created == 4
    images = CaseImage.objects.select_related("case")
    assert {i.image_id: i.view for i in images} == KAGGLE_VIEWS
    # Kaggle's projection wins over DICOM's View Position, which is kept beside it.
    lateral = images.get(image_id="CXR1000_IM-0003-2001")
    assert lateral.view_position == "PA"
    assert lateral.original.name == "cases/original/1000_IM-0003-2001.dcm.png"
    assert lateral.case.uid == "CXR1000"
    for image in images:
        with Image.open(image.derivative.path) as derivative:
            assert (derivative.size, derivative.mode) == ((256, 256), "L")
        assert image.width * image.height > 2000 * 2000
    missing = [s for s in report.skipped if s["item"] == "CXR1"]
    assert missing[0]["reason"].startswith("report without image")
    assert Case.objects.get(uid="CXR2").problems == ["Cardiomegaly", "Pulmonary Artery"]

    again = importer(kaggle_dir=folder, dicom_metadata=dicom)
    assert (again.cases_created, again.cases_updated) == (0, 0)
    assert (again.images_created, again.images_updated, again.images_unchanged) == (
        0,
        0,
        4,
    )
    assert CaseImage.objects.count() == 4


def r2gen_folder(tmp_path: Path, entries: list[dict]) -> Path:
    """The real annotation beside stand-in images under the real names."""
    folder = tmp_path / "r2gen"
    folder.mkdir()
    shutil.copy(SHARED_DATA / "r2gen" / "annotation.json", folder / "annotation.json")
    for entry in entries:
        for index, relative in enumerate(entry["image_path"]):
            path = folder / "images" / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png_bytes(2048 // 8, 2496 // 8, seed=index + 1))
    return folder


def test_it_imports_the_r2gen_layout_keeping_its_split(importer, tmp_path: Path):
    annotation = require_shared(SHARED_DATA / "r2gen" / "annotation.json")
    data = json.loads(annotation.read_text())
    chosen = data["train"][:2] + data["val"][:1] + data["test"][:1]
    folder = r2gen_folder(tmp_path, chosen)

    report = importer(r2gen_dir=folder)

    assert report.cases_created == 2955
    assert report.images_created == 8
    for entry in chosen:
        case = Case.objects.get(uid=entry["id"].split("_")[0])
        assert (case.split, case.split_seed) == (entry["split"], None)
        assert case.findings == " ".join(entry["report"].split())
        views = dict(case.images.values_list("image_id", "view"))
        assert views == {f"{entry['id']}_0": "frontal", f"{entry['id']}_1": "lateral"}
    counts = {s: Case.objects.filter(split=s).count() for s in ("train", "val", "test")}
    assert counts == {"train": 2069, "val": 296, "test": 590}
    assert report.skipped_total == 2955 - 4  # reports whose images are not here
    assert report.skipped[0]["reason"].startswith("report without image")


def test_it_prints_a_brief_import_as_counts_by_reason(
    monkeypatch, clip_tokenizer, media_root, db
):
    """What scripts/start.sh shows: counts, skips by reason, no item per line."""
    from xrayweb.cases import services

    monkeypatch.setattr(services, "clip_tokenizer", lambda: clip_tokenizer)
    folder = require_shared(SHARED_DATA / "iuxray-kaggle")
    out = io.StringIO()

    call_command("import_iuxray", kaggle_dir=folder, brief=True, stdout=out)

    lines = out.getvalue().splitlines()
    assert lines[:2] == [
        "Cases: 3851 created, 0 updated, 0 unchanged",
        "Images: 4 created, 0 updated, 0 unchanged",
    ]
    assert lines[2].startswith("Skipped: 3850 items in ")
    assert lines[3] == "  3850 x report without image"
    assert lines[4].endswith(
        ": succeeded; each skipped item is in the admin's Import runs page"
    )
    assert len(lines) == 5
    assert not any(line.startswith("  CXR") for line in lines)
