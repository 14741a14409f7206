"""A dataset through the whole stack: the page → Redis → the real worker (chunks on
gpu, the export on cpu) → a ZIP, with DICOM, downloaded from the page."""

from __future__ import annotations

import csv
import io
import time
import zipfile

import pydicom
import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image

from tests.datasets.conftest import CSV, wait_for_dataset
from xrayweb.datasets import export, services
from xrayweb.datasets.models import Dataset, DatasetExport, DatasetImage
from xrayweb.jobs.models import Status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def form(version, **overrides) -> dict:
    data = {
        "name": "three findings",
        "model_version": version.pk,
        "source": "csv",
        "images_per_prompt": 2,
        "seed": 7,
        "steps": 2,
        "guidance_scale": 7.5,
        "scheduler": "dpmpp",
        "width": 64,
        "height": 64,
        "lora_scale": 1.0,
        "negative_prompt": "",
        "upload": SimpleUploadedFile("findings.csv", CSV, "text/csv"),
    }
    data.update(overrides)
    return data


def wait_for_export(pk: int, timeout: float = 60) -> DatasetExport:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = DatasetExport.objects.get(pk=pk)
        if row.is_terminal:
            return row
        time.sleep(0.2)
    raise AssertionError(f"export {pk} still {row.status!r} after {timeout} s")


def test_it_makes_a_3_by_2_dataset_and_exports_it_as_a_zip(
    worker, client, alice, tiny_version, settings
):
    settings.XRAY_DATASET_CHUNK_PROMPTS = 2  # two chunks: the fan-out is exercised
    client.force_login(alice)
    preview = client.post(
        reverse("datasets_home"), {**form(tiny_version), "action": "preview"}
    )
    assert preview.context["preview"] == services.Preview(3, 6, 6 * 2 * 64 * 64, 2)
    assert "6 images" in preview.content.decode()
    assert not Dataset.objects.exists()

    response = client.post(reverse("datasets_home"), form(tiny_version))
    dataset = Dataset.objects.get(created_by=alice)
    assert response["Location"] == reverse("dataset_detail", args=[dataset.pk])
    assert wait_for_dataset(dataset.pk, {Status.SUCCEEDED, Status.FAILED}) == (
        Status.SUCCEEDED
    ), Dataset.objects.get(pk=dataset.pk).error
    assert dataset.chunks.filter(status=Status.SUCCEEDED).count() == 2
    page = client.get(reverse("dataset_detail", args=[dataset.pk]))
    assert page.context["progress"].images_done == 6

    client.post(reverse("dataset_export", args=[dataset.pk]), {"dicom": "on"})
    done = wait_for_export(dataset.exports.get().pk)
    assert done.status == Status.SUCCEEDED, done.error
    assert done.archive.startswith(f"exports/{dataset.pk}/")
    assert done.archive.endswith(".zip")
    download = client.get(reverse("dataset_download", args=[dataset.pk, done.pk]))
    archive = zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content)))

    pngs = [name for name in archive.namelist() if name.startswith("images/")]
    assert len(pngs) == 6
    for name in pngs:
        image = Image.open(io.BytesIO(archive.read(name)))
        assert (image.size, image.text["Synthetic"]) == ((64, 64), "true")
    with archive.open("metadata.csv") as raw:
        rows = list(csv.reader(io.TextIOWrapper(raw, encoding="utf-8")))
    assert rows[0] == [*export.METADATA_COLUMNS, "finding"]
    records = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    stored = DatasetImage.objects.filter(prompt__dataset=dataset).order_by(
        "prompt__index", "index"
    )
    assert [(r["img_savename"], int(r["seed"])) for r in records] == [
        (image.savename, image.seed) for image in stored
    ]
    assert {f"images/{r['img_savename']}" for r in records} == set(pngs)
    first = records[0]
    assert first["prompt"] == "No acute cardiopulmonary disease."
    assert first["annotated_prompt"] == (
        "No acute cardiopulmonary disease. | finding: normal"
    )
    assert (first["finding"], first["model_version"], first["steps"]) == (
        "normal",
        tiny_version.name,
        "2",
    )
    with default_storage.open(stored[0].image, "rb") as original:
        assert archive.read(f"images/{stored[0].savename}") == original.read()
    dicoms = sorted(name for name in archive.namelist() if name.startswith("dicom/"))
    assert dicoms == sorted(
        f"dicom/{name.removeprefix('images/').removesuffix('.png')}.dcm"
        for name in pngs
    )
    first_dicom = pydicom.dcmread(io.BytesIO(archive.read(dicoms[0])))
    assert (first_dicom.ConversionType, first_dicom.Rows) == ("SYN", 64)
    sheet = archive.read("DATASHEET.md").decode()
    assert "synthetic" in sheet
    assert "not for diagnosis" in sheet
    assert "CC BY-NC-ND 4.0" in sheet
