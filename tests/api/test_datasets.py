"""Datasets through the API: create from typed prompts, a CSV or a text given as a
string (refused with the page's own message, nothing queued), list one's own,
follow, cancel, export and download; another user's dataset is 404."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from tests.datasets.conftest import CSV, create
from tests.datasets.test_end_to_end import form
from xrayweb.api.forms import NOT_BOOLEAN, UNKNOWN_FIELD
from xrayweb.datasets import services, sources
from xrayweb.datasets.models import (
    Dataset,
    DatasetChunk,
    DatasetExport,
    DatasetReport,
)
from xrayweb.jobs.models import Status

URL = "/api/v1/datasets/"
TYPED = "Heart size normal.\n\n  Mild cardiomegaly.  \n"


def body(version, **overrides) -> dict:
    fields = {
        "name": "two findings",
        "model_version": version.pk,
        "source": "typed",
        "typed": TYPED,
        "images_per_prompt": 2,
        "seed": 7,
        "steps": 2,
        "width": 64,
        "height": 64,
    }
    return {**fields, **overrides}


def post(client, data: dict, **headers):
    return client.post(URL, data, format="json", headers=headers)


def succeeded_with_zip(user, version) -> tuple[Dataset, bytes]:
    dataset = create(user, version)
    Dataset.objects.filter(pk=dataset.pk).update(status=Status.SUCCEEDED)
    zipped = b"PK\x05\x06" + b"\x00" * 18  # an empty ZIP
    export = DatasetExport.objects.create(dataset=dataset, status=Status.SUCCEEDED)
    key = default_storage.save(f"exports/{dataset.pk}/d.zip", ContentFile(zipped))
    DatasetExport.objects.filter(pk=export.pk).update(archive=key, size_bytes=22)
    dataset.refresh_from_db()
    return dataset, zipped


# Create ----------------------------------------------------------------------------


def test_it_creates_a_dataset_from_typed_prompts(
    alice, alice_api, tiny_version, sent, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = post(alice_api, body(tiny_version))

    assert response.status_code == 201, response.json()
    dataset = Dataset.objects.get()
    assert response.json()["id"] == dataset.pk
    assert dataset.created_by == alice
    assert (dataset.source, dataset.source_description) == ("typed", "typed")
    texts = list(dataset.prompts.values_list("text", flat=True))
    assert texts == ["Heart size normal.", "Mild cardiomegaly."]
    assert (dataset.seed, dataset.images_per_prompt) == (7, 2)
    assert dataset.params["steps"] == 2
    size = settings.XRAY_DATASET_CHUNK_PROMPTS
    assert DatasetChunk.objects.filter(dataset=dataset).count() == -(-2 // size)
    assert [name for name, _, _ in sent] == ["dataset.chunk"] * len(sent)
    assert sent, "its chunks reach the broker once the transaction commits"
    assert response.json()["status"] == "queued"
    assert response.json()["progress"] == {
        "images_done": 0,
        "images_total": 4,
        "percent": 0,
    }


def test_it_creates_a_dataset_from_a_csv_string_keeping_its_labels(
    alice_api, tiny_version
):
    data = body(tiny_version, source="csv", upload=CSV.decode(), typed="")

    response = post(alice_api, {**data, "upload_name": "findings.csv"})

    assert response.status_code == 201, response.json()
    dataset = Dataset.objects.get()
    assert dataset.source_description == "file findings.csv"
    prompts = list(dataset.prompts.values_list("text", "labels"))
    assert prompts == [
        (prompt.text, prompt.labels)
        for prompt in sources.prompts_from_csv(CSV, "findings.csv")
    ]
    assert prompts[1] == ("Mild cardiomegaly.", {"finding": "cardiomegaly"})


def test_it_creates_a_dataset_from_a_text_string(alice_api, tiny_version):
    data = body(tiny_version, source="text", upload="One.\nTwo.\nThree.\n")

    response = post(alice_api, data)

    assert response.status_code == 201, response.json()
    assert Dataset.objects.get().prompts_total == 3


def test_it_creates_a_dataset_from_the_cases_filter(
    alice_api, tiny_version, case_with_image
):
    response = post(alice_api, body(tiny_version, source="cases", typed=""))

    assert response.status_code == 201, response.json()
    (prompt,) = Dataset.objects.get().prompts.all()
    assert (prompt.case, prompt.text) == (case_with_image, case_with_image.prompt)


def test_it_refuses_a_csv_without_a_prompt_column_as_the_page_does(
    alice, alice_api, client, tiny_version, sent, django_capture_on_commit_callbacks
):
    columns = b"text,finding\nClear.,normal\n"
    data = body(tiny_version, source="csv", upload=columns.decode())
    client.force_login(alice)

    with django_capture_on_commit_callbacks(execute=True):
        response = post(alice_api, {**data, "upload_name": "labels.csv"})
        page = client.post(
            reverse("datasets_home"),
            form(tiny_version, upload=SimpleUploadedFile("labels.csv", columns)),
        )

    message = sources.NO_PROMPT_COLUMN.format(
        name="labels.csv", columns="'text', 'finding'"
    )
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": None, "message": message, "code": "invalid"}
    ]
    assert page.context["form"].non_field_errors() == [message]
    assert not Dataset.objects.exists()
    assert not DatasetChunk.objects.exists()
    assert sent == []


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"typed": " \n "}, None, sources.NO_PROMPTS.format(where="the box")),
        ({"source": "csv"}, None, "Choose a file to upload for this source."),
        ({"name": ""}, "name", "This field is required."),
        ({"source": "zip"}, "source", None),
        ({"images_per_prompt": 0}, "images_per_prompt", None),
        ({"width": 65}, None, None),
        ({"typed": 5}, "typed", None),
    ],
    ids=["no-prompts", "no-file", "no-name", "source", "n", "width", "not-text"],
)
def test_it_refuses_bad_input_naming_it_and_stores_nothing(
    alice_api, tiny_version, overrides, field, message
):
    response = post(alice_api, body(tiny_version, **overrides))

    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert error["field"] == field
    if message:
        assert error["message"] == message
    assert not Dataset.objects.exists()


def test_it_refuses_a_field_the_form_lacks(alice_api, tiny_version):
    response = post(alice_api, {**body(tiny_version), "num_images": 2})

    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["field"] == "num_images"
    assert error["message"].startswith(
        UNKNOWN_FIELD.format(name="num_images", known="")[:30]
    )
    assert not Dataset.objects.exists()


def test_it_creates_once_per_idempotency_key(alice_api, tiny_version):
    first = post(alice_api, body(tiny_version), **{"Idempotency-Key": "d-1"})
    again = post(alice_api, body(tiny_version), **{"Idempotency-Key": "d-1"})

    assert first.status_code == again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert Dataset.objects.count() == 1


def test_it_refuses_a_dataset_over_the_queue_quota(
    alice, alice_api, tiny_version, settings
):
    settings.XRAY_QUOTA_MAX_QUEUED = 1
    create(alice, tiny_version)

    response = post(alice_api, body(tiny_version))

    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "quota_exceeded"
    assert Dataset.objects.count() == 1


# List, detail ----------------------------------------------------------------------


def test_it_lists_only_ones_own_datasets_newest_first(
    alice, bob, alice_api, tiny_version
):
    older = create(alice, tiny_version, name="older")
    newer = create(alice, tiny_version, name="newer")
    create(bob, tiny_version, name="bobs")

    response = alice_api.get(URL)

    assert response.status_code == 200
    results = response.json()["results"]
    assert [row["id"] for row in results] == [newer.pk, older.pk]
    assert results[0]["images_total"] == 6  # 3 prompts × 2


def test_it_shows_a_datasets_progress_params_and_no_export_yet(
    alice, alice_api, tiny_version
):
    dataset = create(alice, tiny_version)

    detail = alice_api.get(f"{URL}{dataset.pk}/").json()

    assert detail["id"] == dataset.pk
    assert detail["status"] == "queued"
    assert detail["progress"] == {"images_done": 0, "images_total": 6, "percent": 0}
    assert detail["eta_s"] is None
    assert detail["params"] == dataset.params
    assert (detail["prompts_total"], detail["chunks_total"]) == (
        3,
        dataset.chunks_total,
    )
    assert detail["model_version"] == {"id": tiny_version.pk, "name": tiny_version.name}
    assert (detail["error"], detail["export"]) == ("", None)


def test_it_links_the_zip_of_a_succeeded_export(alice, alice_api, tiny_version):
    dataset, zipped = succeeded_with_zip(alice, tiny_version)

    detail = alice_api.get(f"{URL}{dataset.pk}/").json()
    download = alice_api.get(f"{URL}{dataset.pk}/export.zip")

    link = f"http://testserver{URL}{dataset.pk}/export.zip"
    assert detail["export"]["status"] == "succeeded"
    assert detail["export"]["zip"] == link
    assert download.status_code == 200
    assert download["Content-Type"] == "application/zip"
    assert b"".join(download.streaming_content) == zipped


# Cancel, export ----------------------------------------------------------------------


def test_it_cancels_a_queued_dataset_and_its_chunks(alice, alice_api, tiny_version):
    dataset = create(alice, tiny_version)

    response = alice_api.post(f"{URL}{dataset.pk}/cancel/")
    again = alice_api.post(f"{URL}{dataset.pk}/cancel/")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    dataset.refresh_from_db()
    assert dataset.status == Status.CANCELLED
    assert set(dataset.chunks.values_list("status", flat=True)) == {Status.CANCELLED}
    assert again.status_code == 400
    message = services.NOT_CANCELLABLE.format(id=dataset.pk, status="cancelled")
    assert again.json()["errors"][0]["message"] == message


def test_it_refuses_to_export_an_unfinished_dataset(alice, alice_api, tiny_version):
    dataset = create(alice, tiny_version)

    response = alice_api.post(f"{URL}{dataset.pk}/export/")
    download = alice_api.get(f"{URL}{dataset.pk}/export.zip")

    assert response.status_code == 400
    message = services.NOT_EXPORTABLE.format(id=dataset.pk, status="queued")
    assert response.json()["errors"][0]["message"] == message
    assert not DatasetExport.objects.exists()
    assert download.status_code == 404


def test_it_queues_an_export_and_serves_no_zip_until_it_is_done(
    alice, alice_api, tiny_version, sent, django_capture_on_commit_callbacks
):
    dataset = create(alice, tiny_version)
    Dataset.objects.filter(pk=dataset.pk).update(status=Status.SUCCEEDED)

    with django_capture_on_commit_callbacks(execute=True):
        response = alice_api.post(f"{URL}{dataset.pk}/export/")
    again = alice_api.post(f"{URL}{dataset.pk}/export/")
    download = alice_api.get(f"{URL}{dataset.pk}/export.zip")
    detail = alice_api.get(f"{URL}{dataset.pk}/").json()

    assert response.status_code == 201
    export = DatasetExport.objects.get()
    assert response.json()["id"] == export.pk
    assert (response.json()["status"], response.json()["zip"]) == ("queued", None)
    assert response.json()["include_dicom"] is False
    assert export.include_dicom is False
    assert "dataset_export.run" in [name for name, _, _ in sent]
    assert again.status_code == 400
    message = services.EXPORT_RUNNING.format(id=dataset.pk)
    assert again.json()["errors"][0]["message"] == message
    assert download.status_code == 404
    assert detail["export"]["id"] == export.pk


def test_it_queues_an_export_with_dicom_when_asked(alice, alice_api, tiny_version):
    dataset = create(alice, tiny_version)
    Dataset.objects.filter(pk=dataset.pk).update(status=Status.SUCCEEDED)

    response = alice_api.post(f"{URL}{dataset.pk}/export/", {"dicom": True}, "json")

    assert response.status_code == 201
    assert response.json()["include_dicom"] is True
    assert DatasetExport.objects.get().include_dicom is True


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"dicom": "yes"}, "dicom", NOT_BOOLEAN.format(name="dicom", value="yes")),
        ({"dcm": True}, "dcm", UNKNOWN_FIELD.format(name="dcm", known="dicom")),
    ],
)
def test_it_refuses_a_bad_export_body_and_queues_nothing(
    alice, alice_api, tiny_version, data, field, message
):
    dataset = create(alice, tiny_version)
    Dataset.objects.filter(pk=dataset.pk).update(status=Status.SUCCEEDED)

    response = alice_api.post(f"{URL}{dataset.pk}/export/", data, "json")

    assert response.status_code == 400
    assert response.json()["errors"][0] == {
        "field": field,
        "message": message,
        "code": "invalid",
    }
    assert not DatasetExport.objects.exists()


# Report ------------------------------------------------------------------------------


def test_it_queues_a_report_on_the_train_queue_and_returns_it(
    alice, alice_api, tiny_version, sent, django_capture_on_commit_callbacks
):
    dataset = create(alice, tiny_version)
    Dataset.objects.filter(pk=dataset.pk).update(status=Status.SUCCEEDED)
    before = alice_api.get(f"{URL}{dataset.pk}/report/")

    with django_capture_on_commit_callbacks(execute=True):
        response = alice_api.post(
            f"{URL}{dataset.pk}/report/", {"split": "val"}, "json"
        )
    again = alice_api.post(f"{URL}{dataset.pk}/report/")
    shown = alice_api.get(f"{URL}{dataset.pk}/report/")

    assert before.status_code == 404
    assert response.status_code == 201
    report = DatasetReport.objects.get()
    assert (report.split, report.min_fid_images) == (
        "val",
        settings.XRAY_DATASET_REPORT_MIN_FID_IMAGES,
    )
    assert ("dataset_report.run", [report.pk], "train") in sent
    assert again.status_code == 400
    message = services.REPORT_RUNNING.format(id=dataset.pk)
    assert again.json()["errors"][0]["message"] == message
    assert shown.status_code == 200
    assert shown.json()["id"] == report.pk
    assert (shown.json()["status"], shown.json()["results"]) == ("queued", {})


def test_it_refuses_a_report_of_an_unfinished_dataset_or_a_bad_split(
    alice, alice_api, tiny_version
):
    dataset = create(alice, tiny_version)

    unfinished = alice_api.post(f"{URL}{dataset.pk}/report/")
    Dataset.objects.filter(pk=dataset.pk).update(status=Status.SUCCEEDED)
    bad_split = alice_api.post(f"{URL}{dataset.pk}/report/", {"split": "x"}, "json")

    assert unfinished.status_code == 400
    message = services.NOT_REPORTABLE.format(id=dataset.pk, status="queued")
    assert unfinished.json()["errors"][0]["message"] == message
    assert bad_split.status_code == 400
    assert bad_split.json()["errors"][0]["field"] == "split"
    assert "x" in bad_split.json()["errors"][0]["message"]
    assert not DatasetReport.objects.exists()


# Isolation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("get", "/"),
        ("post", "/cancel/"),
        ("post", "/export/"),
        ("get", "/export.zip"),
        ("get", "/report/"),
        ("post", "/report/"),
    ],
)
def test_it_answers_404_to_bob_on_alices_dataset(
    alice, bob_api, tiny_version, method, suffix
):
    dataset, _ = succeeded_with_zip(alice, tiny_version)
    DatasetReport.objects.create(
        dataset=dataset, status=Status.SUCCEEDED, min_fid_images=2, threshold_margin=0
    )
    exports = DatasetExport.objects.count()

    response = getattr(bob_api, method)(f"{URL}{dataset.pk}{suffix}")

    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "not_found"
    assert DatasetExport.objects.count() == exports
    assert DatasetReport.objects.count() == 1
    assert Dataset.objects.get(pk=dataset.pk).status == Status.SUCCEEDED
    assert bob_api.get(URL).json()["results"] == []


def test_it_refuses_anonymous_callers(api, db):
    assert api.get(URL).status_code == 401
    assert post(api, {"name": "x"}).status_code == 401
    assert not Dataset.objects.exists()
