"""Re-running an import adds nothing and updates what changed; folders work as tars."""

from __future__ import annotations

from pathlib import Path

from tests.cases.conftest import make_tar, png_bytes, report_xml
from xrayweb.cases.models import Case, CaseImage

IMAGE = "CXR1_IM-0001-1001"


def write_folders(tmp_path: Path, impression: str, seed: int) -> tuple[Path, Path]:
    reports, images = tmp_path / "ecgen-radiology", tmp_path / "png"
    reports.mkdir(exist_ok=True)
    images.mkdir(exist_ok=True)
    (reports / "1.xml").write_bytes(report_xml("CXR1", [IMAGE], impression=impression))
    (images / f"{IMAGE}.png").write_bytes(png_bytes(seed=seed))
    return reports, images


def test_it_imports_extracted_folders_and_updates_what_changed(
    importer, tmp_path: Path, media_root: Path
):
    reports, images = write_folders(tmp_path, "No acute disease.", seed=1)
    first = importer(reports=reports, images=images)
    old = CaseImage.objects.get()

    same = importer(reports=reports, images=images)
    reports, images = write_folders(tmp_path, "Small left effusion.", seed=2)
    changed = importer(reports=reports, images=images)

    assert (first.cases_created, first.images_created) == (1, 1)
    assert (same.cases_unchanged, same.images_unchanged) == (1, 1)
    assert (changed.cases_updated, changed.images_updated) == (1, 1)
    case = Case.objects.get()
    assert (case.impression, case.prompt) == ("Small left effusion.",) * 2
    image = CaseImage.objects.get()
    assert image.pk == old.pk
    assert image.sha256 != old.sha256
    assert Path(image.original.path).read_bytes() == png_bytes(seed=2)
    assert (
        not Path(old.original.path).exists() or old.original.name == image.original.name
    )
    assert len(list(media_root.rglob("*.png"))) == 2


def test_it_keeps_blank_fields_from_erasing_stored_ones(importer, tmp_path: Path):
    full = make_tar(tmp_path / "a.tgz", [("1.xml", report_xml("CXR1"))])
    blank = make_tar(
        tmp_path / "b.tgz", [("1.xml", report_xml("CXR1", findings="", impression=""))]
    )
    importer(reports=full)

    report = importer(reports=blank)

    assert report.cases_unchanged == 1
    assert Case.objects.get().impression == "No acute disease."


def test_it_gives_the_same_split_for_the_same_seed(importer, tmp_path: Path):
    members = [(f"{n}.xml", report_xml(f"CXR{n}")) for n in range(1, 60)]
    archive = make_tar(tmp_path / "r.tgz", members)
    importer(reports=archive, seed=11)
    first = dict(Case.objects.values_list("uid", "split"))
    Case.objects.all().delete()

    importer(reports=archive, seed=11)

    assert dict(Case.objects.values_list("uid", "split")) == first
    assert set(first.values()) == {"train", "val", "test"}


def test_it_skips_a_duplicate_image_id(importer, tmp_path: Path):
    reports = make_tar(tmp_path / "r.tgz", [("1.xml", report_xml("CXR1", [IMAGE]))])
    images = make_tar(
        tmp_path / "p.tgz",
        [(f"{IMAGE}.png", png_bytes()), (f"CXR1_1_{IMAGE[5:]}.png", png_bytes(seed=3))],
    )

    report = importer(reports=reports, images=images)

    assert report.images_created == 1
    assert "already read from another file" in report.skipped[0]["reason"]
