"""Least privilege: each staff action needs its own permission, granted through the
groups a migration made; trained versions wait for activation; withdrawn versions
are refused on rerun and through the API; local models only under the roots."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import PermissionDenied
from django.urls import reverse

from generator.sampling import GenerationParams
from tests.api.test_datasets import body
from tests.training.test_services import RUN_CONFIG
from xrayweb.cases import services as case_services
from xrayweb.cases.models import ImportRun
from xrayweb.datasets.models import Dataset
from xrayweb.generations import services
from xrayweb.generations.models import ModelVersion
from xrayweb.jobs import lifecycle
from xrayweb.jobs.models import Status
from xrayweb.training import services as training_services
from xrayweb.training.models import EvaluationRun, TrainingRun


@pytest.fixture
def dave(django_user_model):
    """Staff, but in no group: sees the staff pages, may start nothing."""
    return django_user_model.objects.create_user(
        "dave", password="dave-pass-123", is_staff=True
    )


def joined(user, group: str):
    """``user`` in ``group``, fetched again (has_perm caches what it read)."""
    user.groups.add(Group.objects.get(name=group))
    return type(user).objects.get(pk=user.pk)


def refused_then_allowed(user, group: str, action):
    with pytest.raises(PermissionDenied, match=f"the {group!r} group grants"):
        action(user)
    return action(joined(user, group))


def test_the_groups_hold_exactly_their_permissions(db):
    held = {
        group.name: sorted(
            f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.all()
        )
        for group in Group.objects.all()
    }

    assert held == {
        "trainers": ["training.start_evaluation", "training.start_training"],
        "data stewards": ["cases.run_import"],
        "operators": ["generations.activate_modelversion", "jobs.cancel_any_job"],
    }


def test_starting_training_needs_the_trainers_group(dave, tiny_version, sent):
    run = refused_then_allowed(
        dave,
        "trainers",
        lambda user: training_services.training_run_create(
            user=user, name="gray-lora", base=tiny_version, config=RUN_CONFIG
        ),
    )

    assert list(TrainingRun.objects.all()) == [run]


def test_starting_an_evaluation_needs_the_trainers_group(
    dave, tiny_version, case_with_image, sent
):
    case_with_image.split = "test"
    case_with_image.save()

    evaluation = refused_then_allowed(
        dave,
        "trainers",
        lambda user: training_services.evaluation_create(
            user=user, model_version=tiny_version, cases=1, chunk_size=1
        ),
    )

    assert list(EvaluationRun.objects.all()) == [evaluation]


def test_running_an_import_needs_the_data_stewards_group(dave, sent):
    run = refused_then_allowed(
        dave,
        "data stewards",
        lambda user: case_services.import_run_create(
            user=user, options={"download": True}
        ),
    )

    assert list(ImportRun.objects.all()) == [run]


def test_cancelling_another_users_job_needs_the_operators_group(
    dave, alice, tiny_version, sent
):
    request = services.generation_request_create(
        user=alice,
        params=GenerationParams(prompt="Clear lungs.", seed=1, steps=2),
        model_version=tiny_version,
    )

    refused = services.generation_request_cancel(request_id=request.pk, user=dave)
    allowed = services.generation_request_cancel(
        request_id=request.pk, user=joined(dave, "operators")
    )

    assert refused == lifecycle.CANCEL_FORBIDDEN
    assert allowed is None
    request.refresh_from_db()
    assert request.status == Status.CANCELLED


def test_activating_a_version_in_the_admin_needs_the_operators_group(
    client, dave, tiny_version
):
    tiny_version.is_active = False
    tiny_version.save()
    client.force_login(dave)
    changelist = reverse("admin:generations_modelversion_changelist")
    body = {"action": "activate", "_selected_action": [tiny_version.pk]}
    dave.user_permissions.add(Permission.objects.get(codename="view_modelversion"))

    refused = client.post(changelist, body)
    tiny_version.refresh_from_db()
    was_active = tiny_version.is_active
    joined(dave, "operators")
    allowed = client.post(changelist, body)
    tiny_version.refresh_from_db()

    assert refused.status_code == 200  # "No action selected": it is not offered
    assert not was_active
    assert allowed.status_code == 302
    assert tiny_version.is_active


def test_the_activation_service_refuses_a_user_without_the_permission(
    dave, tiny_version
):
    count = refused_then_allowed(
        dave,
        "operators",
        lambda user: services.model_version_set_active(
            versions=[tiny_version], user=user, active=False
        ),
    )

    tiny_version.refresh_from_db()
    assert (count, tiny_version.is_active) == (1, False)


def test_the_versions_setup_models_registers_are_active(db, settings, tiny_model_dir):
    settings.XRAY_TINY_MODEL_DIR = tiny_model_dir
    settings.XRAY_BASE_MODEL = ""

    versions = services.model_versions_register()

    assert versions
    assert all(version.is_active for version in versions)


# Withdrawn versions -----------------------------------------------------------------


@pytest.fixture
def withdrawn_request(alice, tiny_version, sent):
    request = services.generation_request_create(
        user=alice,
        params=GenerationParams(prompt="Clear lungs.", seed=1, steps=2),
        model_version=tiny_version,
    )
    tiny_version.is_active = False
    tiny_version.save()
    return request


def test_a_rerun_of_a_withdrawn_version_is_refused_on_the_page(
    client, alice, withdrawn_request
):
    client.force_login(alice)

    page = client.post(f"/requests/{withdrawn_request.pk}/rerun/", follow=True)

    assert "tiny-untrained" in page.content.decode()
    assert "was withdrawn" in page.content.decode()
    assert services.GenerationRequest.objects.count() == 1


def test_a_rerun_of_a_withdrawn_version_is_refused_through_the_api(
    client, alice, withdrawn_request
):
    client.force_login(alice)

    answer = client.post(f"/api/v1/generations/{withdrawn_request.pk}/rerun/")

    assert answer.status_code == 400
    error = answer.json()["errors"][0]
    assert error["field"] == "model_version"
    assert error["message"] == services.WITHDRAWN.format(name="tiny-untrained")
    assert services.GenerationRequest.objects.count() == 1


def test_a_new_request_for_a_withdrawn_version_is_refused_through_the_api(
    client, alice, withdrawn_request, tiny_version
):
    client.force_login(alice)

    answer = client.post(
        "/api/v1/generations/",
        {"prompt": "Clear lungs.", "model_version": tiny_version.pk},
        content_type="application/json",
    )

    assert answer.status_code == 400
    assert answer.json()["errors"][0]["message"] == (
        f"No active model version has id {tiny_version.pk!r}."
    )


def test_a_dataset_of_a_withdrawn_version_is_refused_through_the_api(
    client, alice, withdrawn_request, tiny_version
):
    client.force_login(alice)

    answer = client.post(
        "/api/v1/datasets/",
        body(tiny_version),
        content_type="application/json",
    )

    assert answer.status_code == 400
    error = answer.json()["errors"][0]
    assert error["field"] == "model_version"
    assert error["message"] == f"No active model version has id {tiny_version.pk!r}."
    assert not Dataset.objects.exists()


# Model roots ------------------------------------------------------------------------


def test_the_admin_refuses_a_model_folder_outside_the_roots(
    client, staff, settings, tmp_path
):
    settings.XRAY_MODEL_ROOTS = [tmp_path / "models"]
    (tmp_path / "models" / "sd").mkdir(parents=True)
    client.force_login(staff)
    add = reverse("admin:generations_modelversion_add")
    form = {"name": "x", "kind": "base", "config": "{}", "metrics": "{}"}

    outside = client.post(add, {**form, "source": "/etc"})
    hub = client.post(add, {**form, "name": "hub", "source": "CompVis/sd-v1-4"})
    inside = client.post(add, {**form, "source": str(tmp_path / "models" / "sd")})

    assert "neither a Hub id" in outside.content.decode()
    assert "/etc" in outside.content.decode()
    assert (hub.status_code, inside.status_code) == (302, 302)
    assert set(ModelVersion.objects.values_list("source", flat=True)) == {
        "CompVis/sd-v1-4",
        str(tmp_path / "models" / "sd"),
    }


def test_a_version_added_in_the_admin_without_the_permission_starts_withdrawn(
    client, dave, settings, tmp_path
):
    settings.XRAY_MODEL_ROOTS = [tmp_path]
    dave.user_permissions.add(Permission.objects.get(codename="add_modelversion"))
    client.force_login(dave)
    add = reverse("admin:generations_modelversion_add")
    form = {"kind": "base", "config": "{}", "metrics": "{}", "source": str(tmp_path)}

    added = client.post(add, {**form, "name": "by-dave", "is_active": "on"})
    client.force_login(joined(dave, "operators"))
    by_operator = client.post(add, {**form, "name": "by-operator", "is_active": "on"})

    assert (added.status_code, by_operator.status_code) == (302, 302)
    assert dict(ModelVersion.objects.values_list("name", "is_active")) == {
        "by-dave": False,
        "by-operator": True,
    }


def test_changing_an_active_versions_model_without_the_permission_withdraws_it(
    client, dave, settings, tmp_path, tiny_version
):
    settings.XRAY_MODEL_ROOTS = [tmp_path, Path(tiny_version.source).parent]
    dave.user_permissions.add(Permission.objects.get(codename="change_modelversion"))
    client.force_login(dave)
    change = reverse("admin:generations_modelversion_change", args=[tiny_version.pk])
    form = {"name": tiny_version.name, "kind": "tiny", "config": "{}", "metrics": "{}"}

    unchanged = client.post(change, {**form, "source": tiny_version.source})
    tiny_version.refresh_from_db()
    kept = tiny_version.is_active
    moved = client.post(change, {**form, "source": str(tmp_path)})
    tiny_version.refresh_from_db()

    assert (unchanged.status_code, moved.status_code) == (302, 302)
    assert kept  # nothing about the model changed
    assert (tiny_version.source, tiny_version.is_active) == (str(tmp_path), False)


def test_a_trained_model_folder_version_can_be_edited_in_the_admin(
    client, staff, tiny_model_dir
):
    from xrayweb.generations import model_files

    prefix, sha256 = model_files.folder_store(tiny_model_dir, "gray-full")
    version = ModelVersion.objects.create(
        name="gray-full",
        kind="mini",
        source=prefix,
        files_key=prefix,
        files_sha256=sha256,
        is_active=False,
    )
    client.force_login(staff)
    change = reverse("admin:generations_modelversion_change", args=[version.pk])
    form = {"name": "gray-full", "kind": "mini", "source": prefix, "metrics": "{}"}

    saved = client.post(change, {**form, "config": '{"note": "checked"}'})

    version.refresh_from_db()
    assert saved.status_code == 302
    assert version.config == {"note": "checked"}


def test_a_training_run_from_a_base_outside_the_workers_roots_fails_naming_it(
    staff, tiny_version, sent, settings, tmp_path
):
    from xrayweb.generations.model_files import SOURCE_REFUSED
    from xrayweb.training.runner import training_run_execute

    run = training_services.training_run_create(
        user=staff, name="gray-lora", base=tiny_version, config=RUN_CONFIG
    )
    settings.XRAY_MODEL_ROOTS = [tmp_path / "models"]  # this worker's roots

    training_run_execute(run_id=run.pk)

    run.refresh_from_db()
    assert (run.status, run.error) == (
        Status.FAILED,
        SOURCE_REFUSED.format(name="tiny-untrained"),
    )


def test_the_admin_cannot_set_a_versions_stored_files(client, staff, tiny_version):
    client.force_login(staff)
    change = reverse("admin:generations_modelversion_change", args=[tiny_version.pk])
    form = {"name": tiny_version.name, "kind": "tiny", "source": tiny_version.source}

    saved = client.post(
        change,
        {
            **form,
            "config": "{}",
            "metrics": "{}",
            "is_active": "on",
            "lora_key": "/etc/passwd",
            "lora_sha256": "0" * 64,
            "files_key": "models/planted/",
        },
    )

    tiny_version.refresh_from_db()
    assert saved.status_code == 302
    assert (tiny_version.lora_key, tiny_version.lora_sha256) == ("", "")
    assert tiny_version.files_key == ""
