"""Schemathesis against the live schema of a real gunicorn: every operation, with
generated inputs that fit its schema and inputs that break it, must answer without
a 5xx and as its schema says; the inputs that break it must be refused.

gunicorn runs on a free port against the test database (the test is transactional,
so it sees the rows committed here) and a queue prefix of its own; no worker runs,
so the jobs it is asked to create stay queued. Every call sends a staff token whose
limits are raised. Half the cases that fit the schema name real rows (ids in the
path, a body that creates a job), as schemathesis cannot guess them. A proxy that
refuses connections is set for the web process, so a request that reached out of
the machine (a download at request time) would fail as a 5xx.

The tests after it pin, through the test client, what the live run found.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import schemathesis
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.jobs.conftest import free_port
from tests.world import chest_like_png, database_url, gunicorn
from xrayweb.api import services as api_services
from xrayweb.api.forms import NOT_BOOLEAN, NOT_TEXT
from xrayweb.generations.forms import NOT_A_NUMBER, NOT_A_TIME
from xrayweb.jobs.models import Status, UserQuota

EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 15}  # per operation
SEED = 20261
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    negative_data_rejection,  # judges the negative cases only
]
SHOWN_PER_OPERATION = 3
RELAXED = 10**6
OPERATIONS = 37  # tests/api/test_schema.py lists those the issue names


@pytest.fixture
def web(transactional_db, settings, tmp_path: Path) -> Iterator[str]:
    """gunicorn serving this test's database and media; its base URL."""
    refused = f"http://127.0.0.1:{free_port()}"
    env = {
        "DATABASE_URL": database_url(),
        "XRAY_MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "XRAY_WORK_DIR": str(tmp_path / "web-work"),
        "XRAY_MODEL_CACHE": str(tmp_path / "web-model-cache"),
        "XRAY_QUEUE_PREFIX": f"t{uuid.uuid4().hex[:8]}-",
        "HF_HUB_OFFLINE": "1",
        "HTTP_PROXY": refused,
        "HTTPS_PROXY": refused,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    with gunicorn(env) as url:
        yield url


# The world: real rows of every kind the API serves -----------------------------------


@pytest.fixture
def world(staff, tiny_version, case_with_image) -> dict:
    """For each operation, ids of real rows to put in its path (queued rows for a
    cancel, so one succeeds) and a body that creates a job; the staff token."""
    UserQuota.objects.create(
        user=staff,
        api_reads_per_minute=RELAXED,
        api_writes_per_minute=RELAXED,
        max_queued_jobs=RELAXED,
        daily_pixel_steps=10**15,
    )
    key = api_services.api_token_create(user=staff, name="schemathesis")
    spare = api_services.api_token_create(user=staff, name="to revoke")
    case_image = case_with_image.images.get()
    return {
        "key": key.key,
        "key_token_id": str(key.token.pk),
        "path": {
            "/api/v1/cases/": {"id": case_with_image.pk, "image_pk": case_image.pk},
            **_generations(staff, tiny_version, case_with_image),
            **_datasets(staff, tiny_version),
            "/api/v1/tokens/": {"id": str(spare.token.pk)},
            **_staff_jobs(staff, tiny_version),
        },
        "body": {
            "/api/v1/generations/": {
                "prompt": "Cardiomegaly.",
                "model_version": tiny_version.pk,
                "case": case_with_image.pk,
                "steps": 2,
                "width": 64,
                "height": 64,
            },
            "/api/v1/datasets/": {
                "name": "two findings",
                "model_version": tiny_version.pk,
                "source": "typed",
                "typed": "Cardiomegaly.\nNo acute disease.",
                "steps": 2,
                "width": 64,
                "height": 64,
            },
            "/api/v1/tokens/": {"name": "script", "expires_days": 30},
            "/api/v1/imports/": {"download": True, "seed": 1},
            "/api/v1/training-runs/": {"name": "tiny-lora-2", "base": tiny_version.pk},
            "/api/v1/evaluations/": {
                "model_version": tiny_version.pk,
                "cases": 1,
                "steps": 2,
                "with_fid": False,
            },
        },
    }


def _generations(user, version, case) -> dict:
    """A succeeded request with an image and its diff map; a queued one."""
    from xrayweb.generations.models import GenerationImage, GenerationRequest

    params = {
        "user": user,
        "model_version": version,
        "case": case,
        "prompt": "No acute cardiopulmonary disease.",
        "seed": 1,
        "steps": 2,
        "guidance_scale": 7.5,
        "scheduler": "ddim",
        "width": 64,
        "height": 64,
    }
    done = GenerationRequest.objects.create(status=Status.SUCCEEDED, **params)
    queued = GenerationRequest.objects.create(**params)
    image = GenerationImage(
        request=done, index=0, seed=1, reference=case.images.get(), ssim=0.5, psnr=20
    )
    image.image.save("0.png", ContentFile(chest_like_png(1)), save=False)
    image.diff_map.save("0-diff.png", ContentFile(chest_like_png(2)), save=False)
    image.save()
    return {  # the most precise prefix first
        "/api/v1/generations/{id}/cancel/": {"id": queued.pk},
        "/api/v1/generations/": {"id": done.pk, "index": 0},
    }


def _datasets(user, version) -> dict:
    """A succeeded dataset with a done export and its ZIP, and a done report; a
    queued one."""
    from xrayweb.datasets.models import Dataset, DatasetExport, DatasetReport

    fields = {
        "name": "findings",
        "created_by": user,
        "model_version": version,
        "params": {"steps": 2, "width": 64, "height": 64},
        "seed": 1,
        "source": "typed",
        "prompts_total": 1,
        "chunks_total": 1,
    }
    done = Dataset.objects.create(status=Status.SUCCEEDED, chunks_done=1, **fields)
    queued = Dataset.objects.create(**fields)
    key = default_storage.save(f"exports/{done.pk}/d.zip", ContentFile(b"PK\x05\x06"))
    DatasetExport.objects.create(dataset=done, status=Status.SUCCEEDED, archive=key)
    DatasetReport.objects.create(
        dataset=done,
        status=Status.SUCCEEDED,
        min_fid_images=100,
        threshold_margin=0.02,
        results={"images": 1, "memorization": {"known": False, "reason": "none"}},
    )
    return {  # the most precise prefix first
        "/api/v1/datasets/{id}/cancel/": {"id": queued.pk},
        "/api/v1/datasets/": {"id": done.pk},
    }


def _staff_jobs(user, version) -> dict:
    """A queued import and training run (with a sample grid), a succeeded
    evaluation with its histogram and a queued one."""
    from xrayweb.cases.models import ImportRun
    from xrayweb.training.models import EvaluationRun, TrainingRun

    run = TrainingRun.objects.create(
        name="tiny-lora",
        created_by=user,
        base=version,
        loss_history=[[1, 0.5], [2, 0.4]],
        files_key="training/1/",
    )
    default_storage.save(f"{run.files_key}samples/epoch-1.png", ContentFile(b"png"))
    scored = EvaluationRun.objects.create(
        model_version=version, created_by=user, status=Status.SUCCEEDED
    )
    scored.histogram.save("histogram.png", ContentFile(chest_like_png(3)))
    scoring = EvaluationRun.objects.create(model_version=version, created_by=user)
    imported = ImportRun.objects.create(created_by=user, options={"download": True})
    return {
        "/api/v1/imports/": {"id": imported.pk},
        "/api/v1/training-runs/": {"id": run.pk, "name": "epoch-1.png"},
        "/api/v1/evaluations/{id}/cancel/": {"id": scoring.pk},
        "/api/v1/evaluations/": {"id": scored.pk},
    }


def _real(world: dict, operation) -> dict:
    """What of this operation can name real rows: its path's ids, its body."""
    names = {parameter.name for parameter in operation.path_parameters}
    real = {}
    for prefix, ids in world["path"].items():
        if operation.path.startswith(prefix):
            real["path_parameters"] = {k: v for k, v in ids.items() if k in names}
            break
    body = world["body"].get(operation.path)
    if operation.method.upper() == "POST" and body is not None:
        real["body"] = body
    return {name: value for name, value in real.items() if value}


# The run ------------------------------------------------------------------------------


def _strategy(world: dict, operation, mode: GenerationMode):
    """Generated cases, and (fitting the schema) as many that name real rows."""
    generated = operation.as_strategy(mode)
    real = _real(world, operation)
    if mode is GenerationMode.NEGATIVE or not real:
        return generated
    return st.one_of(generated, operation.as_strategy(mode, **real))


def _fuzz(strategy, call: Callable, examples: int) -> None:
    """``call`` on each generated case, with a fixed seed and a bounded count."""

    @seed(SEED)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case) -> None:
        call(case)

    with contextlib.suppress(Unsatisfiable):  # negative mode, nothing to break
        run()


@dataclass
class Tally:
    """Each case sent, and each that failed a check (the first few shown)."""

    base_url: str
    headers: dict
    skip_token_id: str
    session: requests.Session = field(default_factory=requests.Session)
    answers: Counter = field(default_factory=Counter)  # (operation, status // 100)
    failures: dict[str, list[str]] = field(default_factory=dict)

    def call(self, case) -> None:
        if case.method == "DELETE" and case.path_parameters["id"] == self.skip_token_id:
            return  # revoking the token every call sends would end the run
        label = case.operation.label
        try:
            response = case.call_and_validate(
                base_url=self.base_url,
                session=self.session,
                headers=self.headers,
                checks=CHECKS,
            )
        except (AssertionError, FailureGroup) as exc:
            found = self.failures.setdefault(label, [])
            shown = len(found) < SHOWN_PER_OPERATION
            found.append(f"{str(exc)[:800]}\n{case.as_curl_command()[:400]}" * shown)
            return
        self.answers[label, response.status_code // 100] += 1

    def report(self) -> str:
        return "\n\n".join(
            f"{label} ({len(found)} failing):\n" + "\n".join(filter(None, found))
            for label, found in self.failures.items()
        )


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_answers_every_operation_as_its_schema_says(web, world):
    schema = schemathesis.openapi.from_url(f"{web}/api/schema/?format=json")
    operations = [result.ok() for result in schema.get_all_operations()]
    headers = {"Authorization": f"Token {world['key']}"}
    tally = Tally(base_url=web, headers=headers, skip_token_id=world["key_token_id"])

    for mode, examples in EXAMPLES.items():
        for operation in operations:
            _fuzz(_strategy(world, operation, mode), tally.call, examples)

    failing = sum(len(found) for found in tally.failures.values())
    sent = sum(tally.answers.values()) + failing
    print(
        f"schemathesis: {len(operations)} operations, {sent} cases, {failing} failing"
    )
    assert not tally.failures, tally.report()
    assert len(operations) >= OPERATIONS
    never_2xx = [op.label for op in operations if not tally.answers[op.label, 2]]
    assert not never_2xx, f"never answered 2xx: {never_2xx}"


# What the live run found, pinned -----------------------------------------------------


def test_it_answers_json_404_for_an_api_path_no_route_matches(staff_api, client, db):
    response = staff_api.get("/api/v1/cases/1.5/")  # an id with a dot: no route

    assert response.status_code == 404
    assert response.json() == {
        "errors": [{"field": None, "message": "Not found.", "code": "not_found"}]
    }
    assert client.get("/nowhere/")["Content-Type"].startswith("text/html")


def test_it_still_adds_the_slash_to_an_api_path_without_one(staff_api, db):
    response = staff_api.get("/api/v1/cases")

    assert response.status_code == 301
    assert response["Location"] == "/api/v1/cases/"


@pytest.mark.parametrize(
    "query",
    ["view=&split=&q=&mesh=&page_size=&cursor=", "kind="],
    ids=["cases", "case-image"],
)
def test_it_reads_a_blank_query_parameter_as_not_given(
    staff_api, case_with_image, query
):
    image = case_with_image.images.get()
    path = "/api/v1/cases/"
    if query == "kind=":
        path = f"/api/v1/cases/{case_with_image.pk}/images/{image.pk}.png"
    blank = staff_api.get(f"{path}?{query}")
    plain = staff_api.get(path)

    assert blank.status_code == plain.status_code == 200
    assert blank.getvalue() == plain.getvalue()


def test_it_reads_a_time_with_any_utc_offset_as_its_instant(
    staff_api, staff, tiny_version
):
    from xrayweb.generations.models import GenerationRequest

    GenerationRequest.objects.create(
        user=staff,
        model_version=tiny_version,
        prompt="x",
        seed=1,
        steps=2,
        guidance_scale=7.5,
        scheduler="ddim",
        width=64,
        height=64,
    )
    moment = "2000-01-02T00:00+22:00"  # 2000-01-01T02:00Z; PostgreSQL: out of range
    after = staff_api.get("/api/v1/generations/", {"created_after": moment})
    before = staff_api.get("/api/v1/generations/", {"created_before": moment})

    assert after.status_code == before.status_code == 200
    assert (len(after.json()["results"]), len(before.json()["results"])) == (1, 0)


def test_it_refuses_a_time_that_is_before_year_1_in_utc(staff_api, db):
    value = "0001-01-01T00:00:00+22:00"

    response = staff_api.get("/api/v1/generations/", {"created_after": value})

    assert response.status_code == 400
    message = NOT_A_TIME.format(name="created_after", value=value)
    assert response.json()["errors"][0] == {
        "field": "created_after",
        "message": message,
        "code": "invalid",
    }


@pytest.mark.parametrize(
    ("url", "body", "field", "message"),
    [
        ("tokens", {"name": 5}, "name", NOT_TEXT.format(name="name", value=5)),
        (
            "tokens",
            {"expires_days": "5"},
            "expires_days",
            NOT_A_NUMBER.format(name="expires_days", kind="whole number", value="5"),
        ),
        (
            "imports",
            {"download": "no"},
            "download",
            NOT_BOOLEAN.format(name="download", value="no"),
        ),
        (
            "generations",
            {"prompt": "x", "steps": "2"},
            "steps",
            NOT_A_NUMBER.format(name="steps", kind="whole number", value="2"),
        ),
        (
            "generations",
            {"prompt": "x", "guidance_scale": True},
            "guidance_scale",
            NOT_A_NUMBER.format(name="guidance_scale", kind="number", value=True),
        ),
        (
            "evaluations",
            {"model_version": "1"},
            "model_version",
            NOT_A_NUMBER.format(name="model_version", kind="whole number", value="1"),
        ),
    ],
)
def test_it_refuses_a_value_of_another_json_type_than_its_schema_says(
    staff_api, tiny_version, url, body, field, message
):
    response = staff_api.post(f"/api/v1/{url}/", body, format="json")

    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": field, "message": message, "code": "invalid"}
    ]


def test_it_measures_a_token_name_as_sent(staff_api, db):
    response = staff_api.post(
        "/api/v1/tokens/", {"name": " " + "n" * 100}, format="json"
    )

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "name"
