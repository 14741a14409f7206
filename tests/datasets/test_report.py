"""A dataset's quality and privacy report: which training set a model version has,
the report job through the real worker (a training image planted among the
generated ones is flagged and shown; figures recomputed here), and the pages'
isolation."""

from __future__ import annotations

import csv
import io
import time

import numpy as np
import pytest
import torch
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.urls import reverse
from PIL import Image
from pytorch_msssim import ms_ssim
from scipy.spatial.distance import cdist

from generator import memorization
from generator.metrics import frechet_distance, inception_helper
from generator.mini import read_records, split_by_patient
from tests.conftest import SHARED_DATA, require_shared
from tests.datasets.conftest import create, wait_for_dataset
from tests.generator.test_memorization import reencoded_and_shifted
from xrayweb.cases.models import Case, CaseImage, Source, Split, View
from xrayweb.datasets import services, training_sets
from xrayweb.datasets.models import Dataset, DatasetImage, DatasetReport
from xrayweb.generations.models import ModelKind, ModelVersion
from xrayweb.jobs.models import Status
from xrayweb.training.models import TrainingRun

PUBLIC_CXR = SHARED_DATA / "public-cxr"
FINDINGS = (["Cardiomegaly/mild"], ["normal"], ["Pleural Effusion/right"])


def public_cxr():
    require_shared(PUBLIC_CXR / "labels.csv")
    return split_by_patient(read_records(PUBLIC_CXR))


def imported(uid: int, split: str, path, mesh: list[str]) -> CaseImage:
    """A case of ``split`` whose frontal image is the real X-ray at ``path``."""
    case = Case.objects.create(
        uid=f"CXR{uid}",
        source=Source.OPENI,
        impression=f"Case {uid}: {', '.join(mesh)}.",
        prompt=f"Case {uid}: {', '.join(mesh)}.",
        mesh_major=mesh,
        split=split,
    )
    image = CaseImage(
        case=case, image_id=f"CXR{uid}_IM-1", view=View.FRONTAL, width=256, height=256
    )
    image.derivative.save(f"CXR{uid}.png", ContentFile(path.read_bytes()))
    return image


@pytest.fixture
def cases_world(db):
    """12 train-split cases and 6 each of val and test, all real X-rays; the val
    and test images come from patients held out of public-cxr's training part."""
    split = public_cxr()
    world = {Split.TRAIN: [], Split.VALIDATION: [], Split.TEST: []}
    for i, record in enumerate(split.train[:12]):
        world[Split.TRAIN].append(
            imported(100 + i, Split.TRAIN, record.path, ["normal"])
        )
    for i, record in enumerate(split.heldout[:12]):
        name = Split.VALIDATION if i < 6 else Split.TEST
        image = imported(200 + i, name, record.path, FINDINGS[i % 3])
        world[name].append(image)
    return world


def trained_on_cases(version: ModelVersion, examples: int) -> TrainingRun:
    return TrainingRun.objects.create(
        name=version.name,
        base=version,
        model_version=version,
        status=Status.SUCCEEDED,
        examples=examples,
    )


# Which training set ------------------------------------------------------------------


def test_it_knows_no_training_set_for_a_model_without_a_record(tiny_version):
    found, reason = training_sets.training_set_of(tiny_version)
    assert found is None
    assert reason == training_sets.UNKNOWN.format(
        name="tiny-untrained", kind="Untrained tiny test model"
    )


def test_it_names_the_train_split_a_platform_run_trained_on(tiny_version, cases_world):
    trained_on_cases(tiny_version, examples=12)

    found, reason = training_sets.training_set_of(tiny_version)

    assert reason == ""
    train_ids = sorted(image.image_id for image in cases_world["train"])
    assert [image.name for image in found.training] == train_ids
    heldout = sorted(i.image_id for i in cases_world["val"] + cases_world["test"])
    assert [image.name for image in found.heldout] == heldout


def test_it_refuses_to_guess_when_the_train_split_changed_since_training(
    tiny_version, cases_world
):
    run = trained_on_cases(tiny_version, examples=11)

    found, reason = training_sets.training_set_of(tiny_version)

    assert found is None
    assert reason == training_sets.CASES_MISMATCH.format(
        run=run.pk, recorded=11, now=12
    )


def test_it_names_public_cxr_for_the_shipped_mini_model(db, settings):
    split = public_cxr()
    settings.XRAY_PUBLIC_CXR_DIR = PUBLIC_CXR
    version = ModelVersion.objects.create(
        name="mini-cxr", kind=ModelKind.MINI, source=str(settings.XRAY_MINI_MODEL_DIR)
    )

    found, reason = training_sets.training_set_of(version)

    assert reason == ""
    assert (len(found.training), len(found.heldout)) == (1003, 125)
    assert {i.name for i in found.training} == {r.path.name for r in split.train}
    assert not {i.name for i in found.training} & {i.name for i in found.heldout}


def test_it_refuses_the_mini_model_without_its_training_data(db, settings, tmp_path):
    settings.XRAY_PUBLIC_CXR_DIR = tmp_path
    version = ModelVersion.objects.create(
        name="mini-cxr", kind=ModelKind.MINI, source=str(settings.XRAY_MINI_MODEL_DIR)
    )
    found, reason = training_sets.training_set_of(version)
    assert found is None
    assert reason == training_sets.MINI_MISSING.format(path=tmp_path)


# Queueing and isolation --------------------------------------------------------------


def test_it_refuses_a_report_of_an_unfinished_dataset_from_the_page(
    client, alice, tiny_version
):
    dataset = create(alice, tiny_version)
    client.force_login(alice)

    response = client.post(reverse("dataset_report", args=[dataset.pk]), follow=True)

    message = services.NOT_REPORTABLE.format(id=dataset.pk, status="queued")
    assert message in response.content.decode()
    assert not DatasetReport.objects.exists()


def test_another_users_report_images_and_csv_are_404(client, alice, bob, tiny_version):
    dataset = create(alice, tiny_version)
    Dataset.objects.filter(pk=dataset.pk).update(status=Status.SUCCEEDED)
    key = default_storage.save("dataset-reports/x/pairs/0.png", ContentFile(b"png"))
    report = DatasetReport.objects.create(
        dataset=dataset,
        status=Status.SUCCEEDED,
        min_fid_images=2,
        threshold_margin=0.02,
        nearest_csv=key,
        results={"memorization": {"flagged": [{"training_key": key, "image_id": 0}]}},
    )
    pages = [
        reverse("dataset_report", args=[dataset.pk]),
        reverse("dataset_report_pair", args=[dataset.pk, report.pk, 0, "training"]),
        reverse("dataset_report_csv", args=[dataset.pk, report.pk]),
    ]
    client.force_login(bob)
    assert [client.post(pages[0]).status_code] + [
        client.get(page).status_code for page in pages[1:]
    ] == [404, 404, 404]
    client.force_login(alice)
    assert client.get(pages[1]).status_code == 200
    assert client.get(pages[2]).status_code == 200
    assert DatasetReport.objects.count() == 1


# Through the real worker -------------------------------------------------------------


def wait_for_report(pk: int, timeout: float = 300) -> DatasetReport:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = DatasetReport.objects.get(pk=pk)
        if row.is_terminal:
            return row
        time.sleep(0.5)
    raise AssertionError(f"report {pk} still {row.status!r} after {timeout} s")


def stored_gray(key: str) -> Image.Image:
    with default_storage.open(key, "rb") as handle:
        return Image.open(handle).convert("L")


def planted_copy(image: CaseImage) -> bytes:
    """The training image at the dataset's 64², JPEG-re-encoded and shifted 1 px."""
    small = stored_gray(image.derivative.name).resize((64, 64), Image.BICUBIC)
    buffer = io.BytesIO()
    reencoded_and_shifted(small, 1).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_it_reports_a_dataset_through_the_worker_and_flags_a_planted_copy(
    worker, client, alice, bob, tiny_version, cases_world, settings
):
    settings.XRAY_DATASET_REPORT_MIN_FID_IMAGES = 6
    trained_on_cases(tiny_version, examples=12)
    client.force_login(alice)
    dataset = create(
        alice,
        tiny_version,
        prompts=[p for p in _case_prompts(cases_world["test"][:3])],
        source="cases",
    )
    assert wait_for_dataset(dataset.pk, {Status.SUCCEEDED, Status.FAILED}) == (
        Status.SUCCEEDED
    )
    images = list(
        DatasetImage.objects.filter(prompt__dataset=dataset).order_by(
            "prompt__index", "index"
        )
    )
    # A near-copy of training image 5 stands in for generated image 3.
    source = cases_world["train"][5]
    default_storage.delete(images[3].image)
    default_storage.save(images[3].image, ContentFile(planted_copy(source)))

    client.post(reverse("dataset_report", args=[dataset.pk]), {"split": "test"})
    report = wait_for_report(DatasetReport.objects.get(dataset=dataset).pk)
    assert report.status == Status.SUCCEEDED, report.error
    results = report.results

    # Memorization: exactly the planted image, paired with its source.
    memo = results["memorization"]
    assert memo["flagged_count"] == 1
    assert memo["flagged"][0]["image"] == images[3].savename
    assert memo["flagged"][0]["training_image"] == source.image_id
    assert (memo["training_images"], memo["heldout_images"]) == (12, 12)
    # Recomputed here: features of the stored PNGs against the training images.
    helper = inception_helper()
    generated = [stored_gray(image.image) for image in images]
    training = [stored_gray(i.derivative.name) for i in _ordered(cases_world["train"])]
    heldout = [
        stored_gray(i.derivative.name)
        for i in _ordered(cases_world["val"] + cases_world["test"])
    ]
    rows = [memorization.features(helper, s, (64, 64)) for s in (generated, training)]
    heldout_rows = memorization.features(helper, heldout, (64, 64))
    centre = rows[1].mean(axis=0)
    best = 1 - cdist(rows[0] - centre, rows[1] - centre, "cosine").min(axis=1)
    assert memo["cosine"]["max"] == pytest.approx(best.max(), abs=1e-4)
    assert memo["cosine"]["mean"] == pytest.approx(best.mean(), abs=1e-4)
    heldout_best = 1 - cdist(heldout_rows - centre, rows[1] - centre, "cosine").min(1)
    assert memo["threshold"]["value"] == pytest.approx(
        heldout_best.max() + report.threshold_margin, abs=1e-4
    )

    # Diversity: MS-SSIM of each prompt's two images at 256², recomputed.
    pairs = []
    for first, second in zip(generated[::2], generated[1::2], strict=True):
        a, b = (_tensor_256(image) for image in (first, second))
        pairs.append(float(ms_ssim(a, b, data_range=1.0)))
    assert results["diversity"]["mean_msssim"] == pytest.approx(np.mean(pairs), 1e-5)
    assert results["diversity"]["pairs"] == 3

    # FID: 6 generated against the 6 test-split frontal images, at the minimum.
    assert (results["fid"]["generated"], results["fid"]["real"]) == (6, 6)
    assert results["fid"]["too_few"] is False
    real = [stored_gray(i.derivative.name) for i in _ordered(cases_world["test"])]
    real_rows = memorization.features(helper, real, (64, 64))
    assert results["fid"]["value"] == pytest.approx(
        frechet_distance(rows[0].astype(float), real_rows.astype(float)), rel=1e-4
    )
    assert set(results["by_finding"]) == {"cardiomegaly", "normal", "pleural effusion"}
    assert results["by_finding"]["normal"]["images"] == 2
    assert results["by_finding"]["normal"]["fid"]["too_few"] is True

    # The page shows the pair through permission-checked views.
    page = client.get(reverse("dataset_detail", args=[dataset.pk])).content.decode()
    assert "1</strong> of 6 generated images flagged" in page
    assert "cannot detect" in page
    generated_url = reverse(
        "dataset_report_pair", args=[dataset.pk, report.pk, 0, "generated"]
    )
    training_url = reverse(
        "dataset_report_pair", args=[dataset.pk, report.pk, 0, "training"]
    )
    assert generated_url in page
    assert training_url in page
    shown = client.get(training_url)
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(b"".join(shown.streaming_content)))),
        np.asarray(stored_gray(source.derivative.name)),
    )
    table = client.get(reverse("dataset_report_csv", args=[dataset.pk, report.pk]))
    rows_csv = list(
        csv.DictReader(io.StringIO(b"".join(table.streaming_content).decode()))
    )
    assert [row["flagged"] for row in rows_csv] == ["0", "0", "0", "1", "0", "0"]
    client.force_login(bob)
    assert client.get(training_url).status_code == 404


def _ordered(images: list[CaseImage]) -> list[CaseImage]:
    return sorted(images, key=lambda image: image.image_id)


def _case_prompts(images: list[CaseImage]):
    from xrayweb.datasets.sources import Prompt

    return [Prompt(image.case.prompt, case=image.case) for image in images]


def _tensor_256(image: Image.Image) -> torch.Tensor:
    resized = image.resize((256, 256), Image.BICUBIC)
    return torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0)[None, None]
