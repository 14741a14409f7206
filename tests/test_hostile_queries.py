"""Hostile input never answers 500: every query string and form field of every page,
fed non-ASCII digits, NUL bytes, huge and negative numbers and wrong types, gets a
400 that names the parameter or a form error on the field, and queues nothing."""

from __future__ import annotations

import pytest
from django import forms

from xrayweb.cases.models import ImportRun
from xrayweb.generations.models import GenerationRequest, ModelKind, ModelVersion
from xrayweb.training.forms import CONFIG_FIELDS, TrainingRunForm
from xrayweb.training.models import EvaluationRun, TrainingRun

HOSTILE = [
    "²",  # superscript two: str.isdigit() says yes, int() says no
    "٣",  # Arabic-Indic three: int() says 3
    "１２",  # fullwidth digits
    "\x00",
    "1\x00",
    "9" * 25,  # past bigint
    "9" * 5000,  # past int()'s 4300-digit limit
    "-1",
    "0",
    "1.5",
    "1e999",
    "nan",
    "-inf",
    "[1, 2]",
    "x" * 10_000,
    " ",
    "%",
    "' OR 1=1 --",
]

# Every query parameter a page reads (admin list pages read their own filters).
QUERY_PAGES = {
    "/": ["case", "q"],
    "/history/": ["status", "model_version", "case", "before", "after"],
    "/admin/cases/case/": ["q", "split", "source", "p", "o"],
    "/admin/generations/generationrequest/": ["q", "status", "p", "o", "user__id"],
    "/admin/cases/importrun/": ["q", "status", "p"],
}


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def offline_version(db) -> ModelVersion:
    """A version to pick in forms; its weights are never loaded by these tests."""
    return ModelVersion.objects.create(
        name="hostile-tiny", kind=ModelKind.TINY, source="/nonexistent/tiny"
    )


def assert_answered_without_500(response, what: str, name: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code}"
    if response.status_code == 400:
        body = response.content.decode(errors="replace")
        assert name in body, f"the 400 does not name {name!r}: {body[:300]}"


@pytest.mark.parametrize(
    ("page", "name"),
    [(page, name) for page, names in QUERY_PAGES.items() for name in names],
)
def test_hostile_query_values_get_a_400_naming_the_parameter_or_a_page(
    staff_client, offline_version, page, name
):
    for value in HOSTILE:
        response = staff_client.get(page, {name: value})

        assert_answered_without_500(response, f"{name}={value[:20]!r}", name)


def test_a_nul_in_a_parameter_name_answers_400(staff_client):
    response = staff_client.get("/history/?st%00atus=x")

    assert response.status_code == 400
    assert "st\\x00atus" in response.content.decode()


@pytest.mark.parametrize("value", ["²", "\x00", "9" * 25], ids=["sup2", "nul", "huge"])
def test_the_case_pick_answers_400_naming_case(staff_client, value):
    response = staff_client.get("/", {"case": value})

    assert response.status_code == 400
    assert "case" in response.content.decode()


@pytest.mark.parametrize(
    "path",
    [
        "/requests/99999999999999999999/",
        "/requests/99999999999999999999/status/",
        "/requests/99999999999999999999/compare/99999999999999999999/",
        "/media/results/99999999999999999999/image.png",
        "/media/cases/99999999999999999999/original.png",
        "/training/runs/99999999999999999999/",
        "/training/runs/99999999999999999999/loss.png",
        "/training/evaluations/99999999999999999999/ssim.png",
        "/admin/generations/generationrequest/99999999999999999999/change/",
        "/admin/cases/case/%00/change/",
    ],
)
def test_ids_in_paths_past_bigint_answer_404(staff_client, path):
    response = staff_client.get(path)

    # The admin redirects a missing object to its list with a message.
    assert response.status_code in (302, 404), response.status_code


GENERATE_FIELDS = [
    "prompt",
    "negative_prompt",
    "model_version",
    "case",
    "seed",
    "steps",
    "guidance_scale",
    "scheduler",
    "width",
    "height",
    "num_images",
    "lora_scale",
    "deep_cache_interval",
    "token_merging",
]


def generate_data(version: ModelVersion, **overrides: str) -> dict:
    data = {
        "prompt": "Heart size normal.",
        "negative_prompt": "",
        "model_version": str(version.pk),
        "seed": "5",
        "steps": "4",
        "guidance_scale": "7.5",
        "scheduler": "dpmpp",
        "width": "64",
        "height": "64",
        "num_images": "1",
        "lora_scale": "1.0",
        "deep_cache_interval": "1",
        "token_merging": "0",
    }
    return {**data, **overrides}


# Some hostile values are valid for some fields ("0" is a fine seed): what matters
# is no 500, an error on the field when refused, and nothing queued then.
@pytest.mark.parametrize("field", GENERATE_FIELDS)
def test_hostile_generate_fields_get_a_form_error_on_that_field(
    staff_client, offline_version, field
):
    for value in HOSTILE:
        what = f"{field}={value[:20]!r}"
        before = GenerationRequest.objects.count()

        response = staff_client.post(
            "/", generate_data(offline_version, **{field: value})
        )

        assert response.status_code in (200, 302), f"{what}: {response.status_code}"
        if response.status_code == 200:
            errors = response.context["form"].errors
            assert errors, f"{what}: the form was re-shown without an error"
            assert field in errors or "__all__" in errors, f"{what}: {errors}"
            assert GenerationRequest.objects.count() == before, what
        else:  # the value was valid for this field: one job was queued
            assert GenerationRequest.objects.count() == before + 1, what


# Every field a staff user types into (checkboxes take no hostile text).
TRAINING_FIELDS = [
    "name",
    "base",
    *(
        name
        for name in CONFIG_FIELDS
        if not isinstance(TrainingRunForm.base_fields[name], forms.BooleanField)
    ),
]


def training_data(version: ModelVersion, **overrides: str) -> dict:
    data = {
        "name": "hostile-run",
        "base": str(version.pk),
        "mode": "lora",
        "rank": "4",
        "alpha": "4",
        "target_modules": ["to_q", "to_v"],
        "epochs": "1",
        "resolution": "64",
        "batch_size": "1",
        "gradient_accumulation_steps": "1",
        "learning_rate": "0.0001",
        "lr_warmup_steps": "0",
        "snr_gamma": "",
        "seed": "0",
        "checkpoint_every": "10",
        "mixed_precision": "no",
        "validation_prompts": "",
    }
    return {**data, **overrides}


@pytest.mark.parametrize("field", TRAINING_FIELDS)
def test_hostile_training_fields_never_answer_500(staff_client, offline_version, field):
    for value in HOSTILE:
        what = f"{field}={value[:20]!r}"
        before = TrainingRun.objects.count()

        response = staff_client.post(
            "/training/", training_data(offline_version, **{field: value})
        )

        assert response.status_code in (200, 302), f"{what}: {response.status_code}"
        if response.status_code == 200:
            assert response.context["form"].errors, f"{what}: no error shown"
            assert TrainingRun.objects.count() == before, what


EVALUATION_FIELDS = ["model_version", "cases", "chunk_size", "steps"]


@pytest.mark.parametrize("field", EVALUATION_FIELDS)
def test_hostile_evaluation_fields_never_answer_500(
    staff_client, offline_version, field
):
    valid = {"model_version": str(offline_version.pk), "cases": "2", "chunk_size": "1"}
    for value in HOSTILE:
        what = f"{field}={value[:20]!r}"
        before = EvaluationRun.objects.count()

        response = staff_client.post(
            "/training/evaluations/", {**valid, "steps": "2", field: value}
        )

        assert response.status_code in (200, 302), f"{what}: {response.status_code}"
        if response.status_code == 200 and response.context["form"].errors:
            assert EvaluationRun.objects.count() == before, what


IMPORT_FIELDS = ["reports", "images", "kaggle_dir", "r2gen_dir", "seed"]


@pytest.mark.parametrize("field", IMPORT_FIELDS)
def test_hostile_import_fields_get_a_form_error_and_start_nothing(staff_client, field):
    for value in HOSTILE:
        what = f"{field}={value[:20]!r}"

        response = staff_client.post(
            "/admin/cases/importrun/start/", {field: value, "seed": "0"}
        )

        assert response.status_code == 200, f"{what}: {response.status_code}"
        assert response.context["form"].errors, f"{what}: no error shown"
        assert not ImportRun.objects.exists(), what


def test_a_too_long_import_path_is_named_cut_short(staff_client):
    response = staff_client.post(
        "/admin/cases/importrun/start/", {"reports": "x" * 10_000, "seed": "0"}
    )

    errors = " ".join(response.context["form"].non_field_errors())
    assert "reports path 'xxx" in errors
    assert "…" in errors
    assert len(errors) < 400


@pytest.mark.parametrize("value", ["\x00", "x" * 10_000, "²"], ids=["nul", "long", "2"])
def test_hostile_logins_are_refused_on_the_form(client, staff, value):
    response = client.post("/login/", {"username": value, "password": value})

    assert response.status_code == 200
    assert response.context["form"].errors


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rank", "9" * 25),
        ("epochs", "9" * 25),
        ("learning_rate", "9" * 25),
        ("checkpoint_every", "9" * 25),
        ("seed", "-1"),
        ("snr_gamma", "1e30"),
    ],
)
def test_training_values_past_their_bounds_are_refused_naming_the_field(
    staff_client, offline_version, field, value
):
    response = staff_client.post(
        "/training/", training_data(offline_version, **{field: value})
    )

    assert response.status_code == 200
    errors = " ".join(response.context["form"].non_field_errors())
    assert f"{field} must" in errors, errors
    assert not TrainingRun.objects.exists()
