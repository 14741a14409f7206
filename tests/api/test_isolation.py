"""Who may call what: every endpoint and method, anonymous (401), another user
(404, nothing changed), a user on staff endpoints (403), and staff (allowed)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from tests.world import chest_like_png
from xrayweb.api.models import ApiToken, IdempotentRequest
from xrayweb.cases.models import ImportRun
from xrayweb.datasets.models import (
    Dataset,
    DatasetChunk,
    DatasetExport,
    DatasetReport,
)
from xrayweb.generations.models import GenerationImage, GenerationRequest
from xrayweb.jobs.models import Status
from xrayweb.training.models import EvaluationChunk, EvaluationRun, TrainingRun

V1 = "/api/v1"

# Every route and method, by name: (method, path template). The ids come from the
# world below.
CASE_ENDPOINTS = {
    "cases-list": ("get", "/cases/"),
    "cases-detail": ("get", "/cases/{case}/"),
    "cases-image": ("get", "/cases/{case}/images/{case_image}.png"),
}
MODEL_ENDPOINTS = {"models-list": ("get", "/models/")}
GENERATION_ENDPOINTS = {
    "generations-list": ("get", "/generations/"),
    "generations-create": ("post", "/generations/"),
    "generations-detail": ("get", "/generations/{generation}/"),
    "generations-cancel": ("post", "/generations/{generation}/cancel/"),
    "generations-rerun": ("post", "/generations/{generation}/rerun/"),
    "generations-image": ("get", "/generations/{generation}/images/0.png"),
    "generations-diff": ("get", "/generations/{generation}/images/0/diff.png"),
}
DATASET_ENDPOINTS = {
    "datasets-list": ("get", "/datasets/"),
    "datasets-create": ("post", "/datasets/"),
    "datasets-detail": ("get", "/datasets/{dataset}/"),
    "datasets-cancel": ("post", "/datasets/{dataset}/cancel/"),
    "datasets-export": ("post", "/datasets/{dataset}/export/"),
    "datasets-export-zip": ("get", "/datasets/{dataset}/export.zip"),
    "datasets-report": ("get", "/datasets/{dataset}/report/"),
    "datasets-report-create": ("post", "/datasets/{dataset}/report/"),
}
TOKEN_ENDPOINTS = {
    "tokens-list": ("get", "/tokens/"),
    "tokens-create": ("post", "/tokens/"),
    "tokens-delete": ("delete", "/tokens/{token}/"),
}
STAFF_ENDPOINTS = {
    "imports-list": ("get", "/imports/"),
    "imports-create": ("post", "/imports/"),
    "imports-detail": ("get", "/imports/{import_run}/"),
    "imports-cancel": ("post", "/imports/{import_run}/cancel/"),
    "training-runs-list": ("get", "/training-runs/"),
    "training-runs-create": ("post", "/training-runs/"),
    "training-runs-detail": ("get", "/training-runs/{training_run}/"),
    "training-runs-cancel": ("post", "/training-runs/{training_run}/cancel/"),
    "training-runs-loss": ("get", "/training-runs/{training_run}/loss.png"),
    "training-runs-sample": (
        "get",
        "/training-runs/{training_run}/samples/epoch-1.png",
    ),
    "evaluations-list": ("get", "/evaluations/"),
    "evaluations-create": ("post", "/evaluations/"),
    "evaluations-detail": ("get", "/evaluations/{evaluation}/"),
    "evaluations-cancel": ("post", "/evaluations/{evaluation}/cancel/"),
    "evaluations-histogram": ("get", "/evaluations/{evaluation}/histogram.png"),
}
ENDPOINTS = {
    **CASE_ENDPOINTS,
    **MODEL_ENDPOINTS,
    **GENERATION_ENDPOINTS,
    **DATASET_ENDPOINTS,
    **TOKEN_ENDPOINTS,
    **STAFF_ENDPOINTS,
}
# Alice's generation, as Bob tries it.
ALICES_GENERATION = [
    "generations-detail",
    "generations-cancel",
    "generations-rerun",
    "generations-image",
    "generations-diff",
]
# Alice's dataset (succeeded, with a done export), as Bob tries it.
ALICES_DATASET = [
    name for name in DATASET_ENDPOINTS if "{dataset}" in ENDPOINTS[name][1]
]


@dataclass
class World:
    ids: dict[str, int]
    bodies: dict[str, dict]
    generation: GenerationRequest
    image_png: bytes
    diff_png: bytes
    dataset: Dataset
    zip_bytes: bytes

    def url(self, name: str) -> tuple[str, str]:
        method, template = ENDPOINTS[name]
        return method, V1 + template.format(**self.ids)


def call(client, world: World, name: str, **headers):
    method, url = world.url(name)
    if method == "post":
        body = world.bodies.get(name, {})
        return client.post(url, body, format="json", headers=headers)
    return getattr(client, method)(url, headers=headers)


def body_of(response) -> bytes:
    if response.streaming:
        return b"".join(response.streaming_content)
    return response.content


def stored_png(key: str, seed: int) -> tuple[str, bytes]:
    png = chest_like_png(seed=seed, size=64)
    return default_storage.save(key, ContentFile(png)), png


@pytest.fixture
def world(alice, staff, tiny_version, case_with_image) -> World:
    """Alice's queued generation with a stored image and diff map, her token, and
    one import, training run and evaluation, each with the files it serves."""
    generation = GenerationRequest.objects.create(
        user=alice,
        model_version=tiny_version,
        case=case_with_image,
        prompt="Heart size normal.",
        seed=5,
        steps=4,
        guidance_scale=7.5,
        scheduler="dpmpp",
        width=256,
        height=256,
        progress_total=4,
    )
    image_key, image_png = stored_png(f"generations/{generation.pk}/1/0.png", 1)
    diff_key, diff_png = stored_png(f"generations/diff/{generation.pk}/1/0.png", 2)
    GenerationImage.objects.create(
        request=generation,
        index=0,
        seed=5,
        image=image_key,
        diff_map=diff_key,
        reference=case_with_image.images.get(),
    )
    run = TrainingRun.objects.create(
        name="run-1",
        created_by=staff,
        base=tiny_version,
        loss_history=[[1, 0.5], [2, 0.4]],
    )
    run.files_key = f"training/{run.pk}/"
    run.save(update_fields=["files_key"])
    stored_png(f"{run.files_key}samples/epoch-1.png", 3)
    evaluation = EvaluationRun.objects.create(
        model_version=tiny_version, created_by=staff, chunks_total=1
    )
    EvaluationChunk.objects.create(
        evaluation=evaluation, index=0, case_ids=[case_with_image.pk]
    )
    evaluation.histogram.save("histogram.png", ContentFile(chest_like_png(4, 64)))
    dataset, zip_bytes = succeeded_dataset(alice, tiny_version)
    ids = {
        "case": case_with_image.pk,
        "case_image": case_with_image.images.get().pk,
        "generation": generation.pk,
        "dataset": dataset.pk,
        "token": ApiToken.objects.create(user=alice, name="alices")[0].pk,
        "import_run": ImportRun.objects.create(
            created_by=staff, options={"download": True}
        ).pk,
        "training_run": run.pk,
        "evaluation": evaluation.pk,
    }
    bodies = {
        "generations-create": {
            "prompt": "Heart size normal.",
            "model_version": tiny_version.pk,
            "seed": 5,
            "steps": 4,
            "scheduler": "dpmpp",
        },
        "datasets-create": {
            "name": "two",
            "model_version": tiny_version.pk,
            "source": "typed",
            "typed": "Heart size normal.\nCardiomegaly.",
            "steps": 2,
            "width": 64,
            "height": 64,
        },
        "tokens-create": {"name": "new"},
        "imports-create": {"download": True},
        "training-runs-create": {"name": "run-2", "base": tiny_version.pk},
        "evaluations-create": {
            "model_version": tiny_version.pk,
            "cases": 1,
            "chunk_size": 1,
            "steps": 2,
            "with_fid": False,
        },
    }
    return World(ids, bodies, generation, image_png, diff_png, dataset, zip_bytes)


def succeeded_dataset(user, version) -> tuple[Dataset, bytes]:
    """A succeeded dataset of one prompt, with a done export and its stored ZIP,
    and a done report."""
    dataset = Dataset.objects.create(
        name="done",
        created_by=user,
        model_version=version,
        params={"steps": 2, "width": 64, "height": 64},
        seed=1,
        source="typed",
        prompts_total=1,
        chunks_total=1,
        chunks_done=1,
        status=Status.SUCCEEDED,
    )
    zip_bytes = b"PK\x05\x06" + b"\x00" * 18  # an empty ZIP
    key = default_storage.save(f"exports/{dataset.pk}/d.zip", ContentFile(zip_bytes))
    DatasetExport.objects.create(
        dataset=dataset, status=Status.SUCCEEDED, archive=key, size_bytes=22
    )
    DatasetReport.objects.create(
        dataset=dataset,
        status=Status.SUCCEEDED,
        min_fid_images=100,
        threshold_margin=0.02,
        results={"images": 1},
    )
    return dataset, zip_bytes


def row_counts() -> dict[str, int]:
    models = [
        GenerationRequest,
        GenerationImage,
        ApiToken,
        IdempotentRequest,
        ImportRun,
        TrainingRun,
        EvaluationRun,
        EvaluationChunk,
        Dataset,
        DatasetChunk,
        DatasetExport,
        DatasetReport,
    ]
    return {model.__name__: model.objects.count() for model in models}


def job_states() -> list[tuple]:
    fields = ("pk", "status", "cancel_requested_at")
    return [
        list(model.objects.order_by("pk").values_list(*fields))
        for model in (
            GenerationRequest,
            ImportRun,
            TrainingRun,
            EvaluationRun,
            Dataset,
            DatasetExport,
            DatasetReport,
        )
    ]


# Anonymous -------------------------------------------------------------------------


def test_it_lists_every_route_the_api_has():
    """The lists above are every route: a new one must be added to them."""
    from xrayweb.api.urls import router

    names = {url.name for url in router.urls}
    routes = {
        "api-case-list",
        "api-case-detail",
        "api-case-image",
        "api-model-list",
        "api-generation-list",
        "api-generation-detail",
        "api-generation-cancel",
        "api-generation-rerun",
        "api-generation-image",
        "api-generation-diff",
        "api-dataset-list",
        "api-dataset-detail",
        "api-dataset-cancel",
        "api-dataset-export",
        "api-dataset-export-zip",
        "api-dataset-report",
        "api-token-list",
        "api-token-detail",
        "api-import-list",
        "api-import-detail",
        "api-import-cancel",
        "api-training-run-list",
        "api-training-run-detail",
        "api-training-run-cancel",
        "api-training-run-loss",
        "api-training-run-sample",
        "api-evaluation-list",
        "api-evaluation-detail",
        "api-evaluation-cancel",
        "api-evaluation-histogram",
    }
    assert names == routes


@pytest.mark.parametrize("name", list(ENDPOINTS))
def test_it_refuses_anonymous_callers_with_401_json(api, world, name):
    before, states = row_counts(), job_states()

    response = call(api, world, name)

    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response["WWW-Authenticate"] == "Token"
    assert response.json() == {
        "errors": [
            {
                "field": None,
                "message": "Authentication credentials were not provided.",
                "code": "not_authenticated",
            }
        ]
    }
    assert row_counts() == before
    assert job_states() == states


# Another user ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ALICES_GENERATION)
def test_it_answers_404_to_bob_on_alices_generation(bob_api, world, name):
    before, states = row_counts(), job_states()

    response = call(bob_api, world, name, **{"Idempotency-Key": "bob-1"})

    assert response.status_code == 404
    assert response.json() == {
        "errors": [{"field": None, "message": "Not found.", "code": "not_found"}]
    }
    assert row_counts() == before
    assert job_states() == states
    world.generation.refresh_from_db()
    assert world.generation.status == Status.QUEUED
    assert world.generation.cancel_requested_at is None


@pytest.mark.parametrize("name", ALICES_DATASET)
def test_it_answers_404_to_bob_on_alices_dataset(bob_api, world, name):
    before, states = row_counts(), job_states()

    response = call(bob_api, world, name, **{"Idempotency-Key": "bob-1"})

    assert response.status_code == 404
    assert response.json() == {
        "errors": [{"field": None, "message": "Not found.", "code": "not_found"}]
    }
    assert row_counts() == before
    assert job_states() == states


def test_it_lists_none_of_alices_datasets_to_bob_or_staff(bob_api, staff_api, world):
    for client in (bob_api, staff_api):
        assert call(client, world, "datasets-list").json()["results"] == []
        assert call(client, world, "datasets-detail").status_code == 404


def test_it_serves_alice_her_own_dataset(alice, alice_api, world):
    """The routes Bob was refused do work, for their owner."""
    listed = call(alice_api, world, "datasets-list")
    detail = call(alice_api, world, "datasets-detail")
    download = call(alice_api, world, "datasets-export-zip")
    export = call(alice_api, world, "datasets-export")
    cancel = call(alice_api, world, "datasets-cancel")  # succeeded: too late
    report = call(alice_api, world, "datasets-report")
    queued = call(alice_api, world, "datasets-report-create")
    created = call(alice_api, world, "datasets-create")

    assert [row["id"] for row in listed.json()["results"]] == [world.dataset.pk]
    assert detail.json()["status"] == "succeeded"
    assert body_of(download) == world.zip_bytes
    assert export.status_code == 201
    assert DatasetExport.objects.get(pk=export.json()["id"]).dataset == world.dataset
    assert cancel.status_code == 400
    assert (report.status_code, report.json()["results"]) == (200, {"images": 1})
    assert queued.status_code == 201
    assert DatasetReport.objects.get(pk=queued.json()["id"]).dataset == world.dataset
    assert created.status_code == 201
    assert Dataset.objects.get(pk=created.json()["id"]).created_by == alice


def test_it_answers_404_to_bob_for_an_id_that_does_not_exist(bob_api, world):
    """Alice's id and a missing id look the same to Bob."""
    missing = bob_api.get(f"{V1}/generations/999999999/")
    alices = bob_api.get(f"{V1}/generations/{world.generation.pk}/")

    assert missing.status_code == alices.status_code == 404
    assert missing.json() == alices.json()


def test_it_lists_none_of_alices_generations_to_bob(bob_api, world):
    response = bob_api.get(f"{V1}/generations/")

    assert response.status_code == 200
    assert response.json()["results"] == []


def test_it_filters_none_of_alices_generations_in_for_bob(bob_api, world):
    case = world.ids["case"]
    model = world.generation.model_version_id

    response = bob_api.get(f"{V1}/generations/?case={case}&model_version={model}")

    assert response.status_code == 200
    assert response.json()["results"] == []


def test_it_serves_alice_her_own_generation(alice_api, world):
    """The routes Bob was refused do work, for their owner."""
    listed = call(alice_api, world, "generations-list")
    detail = call(alice_api, world, "generations-detail")
    image = call(alice_api, world, "generations-image")
    diff = call(alice_api, world, "generations-diff")

    assert [row["id"] for row in listed.json()["results"]] == [world.generation.pk]
    assert detail.status_code == 200
    assert detail.json()["id"] == world.generation.pk
    assert detail.json()["status"] == "queued"
    assert image.status_code == diff.status_code == 200
    assert image["Content-Type"] == diff["Content-Type"] == "image/png"
    assert body_of(image) == world.image_png
    assert body_of(diff) == world.diff_png


def test_it_lets_alice_cancel_and_rerun_her_generation(alice, alice_api, world):
    rerun = call(alice_api, world, "generations-rerun")
    cancel = call(alice_api, world, "generations-cancel")

    assert rerun.status_code == 201
    copy = GenerationRequest.objects.get(pk=rerun.json()["id"])
    assert copy.user == alice
    assert (copy.seed, copy.prompt) == (world.generation.seed, world.generation.prompt)
    assert cancel.status_code == 200
    assert cancel.json()["status"] == "cancelled"
    world.generation.refresh_from_db()
    assert world.generation.status == Status.CANCELLED
    copy.refresh_from_db()
    assert copy.status == Status.QUEUED


# Staff endpoints -------------------------------------------------------------------


@pytest.mark.parametrize("name", list(STAFF_ENDPOINTS))
def test_it_refuses_staff_endpoints_to_a_user_with_403(alice_api, world, name):
    before, states = row_counts(), job_states()

    response = call(alice_api, world, name)

    assert response.status_code == 403
    assert response.json() == {
        "errors": [
            {
                "field": None,
                "message": "You do not have permission to perform this action.",
                "code": "permission_denied",
            }
        ]
    }
    assert row_counts() == before
    assert job_states() == states


STAFF_ALLOWED = {
    "imports-list": 200,
    "imports-create": 201,
    "imports-detail": 200,
    "imports-cancel": 200,
    "training-runs-list": 200,
    "training-runs-create": 201,
    "training-runs-detail": 200,
    "training-runs-cancel": 200,
    "training-runs-loss": 200,
    "training-runs-sample": 200,
    "evaluations-list": 200,
    "evaluations-create": 201,
    "evaluations-detail": 200,
    "evaluations-cancel": 200,
    "evaluations-histogram": 200,
}


def test_it_names_a_status_for_staff_on_every_staff_endpoint():
    assert set(STAFF_ALLOWED) == set(STAFF_ENDPOINTS)


@pytest.mark.parametrize("name", list(STAFF_ENDPOINTS))
def test_it_allows_staff_on_staff_endpoints(staff_api, world, name):
    response = call(staff_api, world, name)

    assert response.status_code == STAFF_ALLOWED[name]
    if response["Content-Type"] == "image/png":
        assert body_of(response).startswith(b"\x89PNG\r\n\x1a\n")
    else:
        assert "errors" not in response.json()


def test_it_cancels_and_creates_for_staff(staff_api, world):
    before = row_counts()

    imports = call(staff_api, world, "imports-cancel").json()
    runs = call(staff_api, world, "training-runs-cancel").json()
    evaluations = call(staff_api, world, "evaluations-cancel").json()
    call(staff_api, world, "imports-create")
    call(staff_api, world, "training-runs-create")
    call(staff_api, world, "evaluations-create")

    assert (imports["status"], runs["status"]) == ("cancelled", "cancelled")
    assert evaluations["status"] == "cancelled"
    assert ImportRun.objects.get(pk=world.ids["import_run"]).status == "cancelled"
    after = row_counts()
    assert after["ImportRun"] == before["ImportRun"] + 1
    assert after["TrainingRun"] == before["TrainingRun"] + 1
    assert after["EvaluationRun"] == before["EvaluationRun"] + 1
    assert TrainingRun.objects.filter(name="run-2").exists()


@pytest.mark.parametrize(
    "name",
    [
        *CASE_ENDPOINTS,
        *MODEL_ENDPOINTS,
        "generations-list",
        "datasets-list",
        "tokens-list",
    ],
)
def test_it_serves_the_user_endpoints_to_staff_and_users(
    alice_api, staff_api, world, name
):
    for client in (alice_api, staff_api):
        response = call(client, world, name)
        assert response.status_code == 200


def test_it_lists_none_of_alices_generations_to_staff(staff_api, world):
    """Staff manage jobs on the staff endpoints; a user's generations stay theirs."""
    assert call(staff_api, world, "generations-list").json()["results"] == []
    assert call(staff_api, world, "generations-detail").status_code == 404
