"""Least privilege: each staff action needs its own permission, granted through the
groups a migration made; trained versions wait for activation; withdrawn versions
are refused on rerun and through the API; local models only under the roots."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import PermissionDenied
from django.urls import reverse

from generator.sampling import GenerationParams
from tests.training.test_services import RUN_CONFIG
from xrayweb.cases import services as case_services
from xrayweb.cases.models import ImportRun
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
