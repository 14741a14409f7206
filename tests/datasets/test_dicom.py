"""DICOM in a dataset's export: one Secondary Capture per PNG, marked SYN, with the
PNG's pixels and nothing from the source case, valid by dciodvfy (dicom3tools)."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian

from tests.datasets.conftest import create, run_chunks
from xrayweb.datasets import dicom, export, sources
from xrayweb.datasets.models import Dataset, PromptSource


def from_case(user, version, case) -> Dataset:
    """A succeeded 1-prompt × 2-image dataset whose prompt is the case's."""
    prompts = sources.prompts_from_cases(mesh="normal", split="test", limit=10)
    assert [p.case for p in prompts] == [case]
    dataset = create(
        user, version, prompts=prompts, source=PromptSource.CASES, source_description=""
    )
    run_chunks(dataset)
    return dataset


def zip_of(dataset: Dataset, folder: Path, *, include_dicom: bool) -> zipfile.ZipFile:
    target = folder / f"dataset-{include_dicom}.zip"
    export.zip_write(dataset, target, include_dicom=include_dicom)
    return zipfile.ZipFile(target)


def secondary_captures(archive: zipfile.ZipFile) -> dict[str, pydicom.Dataset]:
    return {
        name: pydicom.dcmread(io.BytesIO(archive.read(name)))
        for name in archive.namelist()
        if name.startswith("dicom/")
    }


def source_texts(case) -> list[str]:
    return [case.uid, case.findings, case.impression, case.prompt, case.prompt_full]


def test_it_exports_one_dcm_per_png_only_when_asked(
    alice, tiny_version, case_with_image, tmp_path
):
    dataset = from_case(alice, tiny_version, case_with_image)

    plain = zip_of(dataset, tmp_path, include_dicom=False).namelist()
    with_dicom = zip_of(dataset, tmp_path, include_dicom=True).namelist()

    pngs = sorted(n.removeprefix("images/") for n in plain if n.startswith("images/"))
    assert pngs == ["p00000_0.png", "p00000_1.png"]
    assert not [name for name in plain if name.startswith("dicom/")]
    dcms = sorted(n for n in with_dicom if n.startswith("dicom/"))
    assert dcms == [f"dicom/{png.removesuffix('.png')}.dcm" for png in pngs]


def test_it_reads_back_as_secondary_capture_marked_syn_with_the_pngs_pixels(
    alice, tiny_version, case_with_image, tmp_path
):
    dataset = from_case(alice, tiny_version, case_with_image)
    archive = zip_of(dataset, tmp_path, include_dicom=True)

    found = secondary_captures(archive)

    assert len(found) == 2
    for name, ds in found.items():
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == dicom.SECONDARY_CAPTURE
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.ConversionType == "SYN"
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert ds.BurnedInAnnotation == "NO"  # the mark is in text chunks only
        assert tiny_version.name in ds.DerivationDescription
        assert str(ds.PatientName) == "SYNTHETIC^IMAGE"
        assert ds.PatientID == f"SYNTHETIC-{dataset.pk}"
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        png = archive.read(name.replace("dicom/", "images/").replace(".dcm", ".png"))
        expected = np.asarray(Image.open(io.BytesIO(png)))
        assert np.array_equal(ds.pixel_array, expected)
    uids = [ds.SOPInstanceUID for ds in found.values()]
    studies = {ds.StudyInstanceUID for ds in found.values()}
    assert len(set(uids)) == 2
    assert len(studies) == 1
    assert not studies & set(uids)


def test_it_carries_no_identifier_or_report_text_of_the_source_case(
    alice, tiny_version, case_with_image, tmp_path
):
    dataset = from_case(alice, tiny_version, case_with_image)
    archive = zip_of(dataset, tmp_path, include_dicom=True)

    for name, ds in secondary_captures(archive).items():
        values = [
            str(element.value)
            for element in ds.iterall()
            if element.keyword != "PixelData"
        ]
        values += [str(element.value) for element in ds.file_meta]
        for text in source_texts(case_with_image):
            assert not [v for v in values if text in v], (name, text)
        for text in source_texts(case_with_image):  # nor anywhere in the bytes
            assert text.encode() not in archive.read(name), (name, text)


def test_it_passes_dciodvfy_with_no_errors(
    alice, tiny_version, case_with_image, tmp_path
):
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy is missing: install Debian's dicom3tools")
    dataset = from_case(alice, tiny_version, case_with_image)
    archive = zip_of(dataset, tmp_path, include_dicom=True)

    names = [n for n in archive.namelist() if n.startswith("dicom/")]
    assert len(names) == 2
    for name in names:
        path = tmp_path / Path(name).name
        path.write_bytes(archive.read(name))
        run = subprocess.run(
            [dciodvfy, str(path)], capture_output=True, text=True, timeout=60
        )
        report = (run.stdout + run.stderr).splitlines()
        assert "SCImage" in run.stdout + run.stderr  # it knew the IOD
        assert not [line for line in report if line.startswith("Error")], report


def test_it_refuses_a_png_that_is_not_8_bit_grayscale():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")

    message = dicom.NOT_GRAYSCALE.format(name="p00000_0.png", mode="RGB")

    with pytest.raises(ValueError, match=re.escape(message)):
        dicom.pixels_of(buffer.getvalue(), "p00000_0.png")
