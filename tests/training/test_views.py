"""Staff pages for training: start, follow, plot, cancel; others are refused."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.urls import reverse

from xrayweb.jobs.models import Status
from xrayweb.training import services
from xrayweb.training.forms import EvaluationForm, TrainingRunForm
from xrayweb.training.models import TrainingRun

PNG = b"\x89PNG grid"


def form_data(tiny_version, **overrides) -> dict:
    data = {
        "name": "gray-lora",
        "base": tiny_version.pk,
        "mode": "lora",
        "rank": 4,
        "alpha": 8,
        "target_modules": ["to_q", "to_v"],
        "epochs": 1,
        "resolution": 32,
        "batch_size": 1,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-3,
        "lr_warmup_steps": 0,
        "seed": 0,
        "checkpoint_every": 10,
        "mixed_precision": "no",
    }
    data.update(overrides)
    return data


@pytest.fixture
def run(staff, tiny_version, sent, media_root) -> TrainingRun:
    run = services.training_run_create(
        user=staff, name="gray-lora", base=tiny_version, config={"resolution": 32}
    )
    TrainingRun.objects.filter(pk=run.pk).update(
        loss_history=[[1, 1.2], [2, 1.0]], validation_history=[[0, 1.3], [2, 1.1]]
    )
    return run


def test_it_starts_a_run_from_the_staff_page(
    client, staff, tiny_version, sent, django_capture_on_commit_callbacks
):
    client.force_login(staff)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("training_home"), form_data(tiny_version))

    run = TrainingRun.objects.get()
    assert response.status_code == 302
    assert response.url == reverse("training_run_detail", args=[run.pk])
    assert run.config["rank"] == 4
    assert run.config["target_modules"] == ["to_q", "to_v"]
    assert sent == [("training.run", [run.pk], "train")]


def test_it_shows_the_bad_value_and_creates_nothing(client, staff, tiny_version, sent):
    client.force_login(staff)
    response = client.post(
        reverse("training_home"), form_data(tiny_version, resolution=100)
    )

    assert response.status_code == 200
    assert b"resolution has to be a positive multiple of 8, got 100" in response.content
    assert not TrainingRun.objects.exists()


def test_it_refuses_the_training_pages_to_non_staff(client, alice, run):
    client.force_login(alice)
    for url in (
        reverse("training_home"),
        reverse("training_run_detail", args=[run.pk]),
        reverse("training_run_loss_plot", args=[run.pk]),
    ):
        assert client.get(url).status_code == 403
    assert client.post(reverse("training_run_cancel", args=[run.pk])).status_code == 403
    run.refresh_from_db()
    assert run.status == Status.QUEUED


def test_it_sends_anonymous_users_to_the_login_page(client, run):
    response = client.get(reverse("training_run_detail", args=[run.pk]))
    assert response.status_code == 302
    assert reverse("login") in response.url


def test_it_shows_progress_and_the_loss_plot(client, staff, run):
    TrainingRun.objects.filter(pk=run.pk).update(
        status=Status.RUNNING, progress_step=2, progress_total=8, eta_s=42
    )
    client.force_login(staff)

    page = client.get(reverse("training_run_detail", args=[run.pk]))
    plot = client.get(reverse("training_run_loss_plot", args=[run.pk]))

    assert page.status_code == 200
    assert b"step 2 / 8" in page.content
    assert b"42 s" in page.content
    assert plot["Content-Type"] == "image/png"
    assert plot.content.startswith(b"\x89PNG")


def test_it_cancels_a_queued_run(client, staff, run):
    client.force_login(staff)
    response = client.post(reverse("training_run_cancel", args=[run.pk]))
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status == Status.CANCELLED


def test_it_keeps_one_validation_prompt_per_line(
    client, staff, tiny_version, sent, django_capture_on_commit_callbacks
):
    client.force_login(staff)
    data = form_data(tiny_version, validation_prompts="dark chest\n\n bright chest \n")
    client.post(reverse("training_home"), data)

    assert TrainingRun.objects.get().config["validation_prompts"] == [
        "dark chest",
        "bright chest",
    ]


def test_it_serves_the_runs_own_sample_grids_only(client, staff, alice, run):
    default_storage.save(f"{run.files_key}samples/epoch-000.png", ContentFile(PNG))
    default_storage.save(f"{run.files_key}samples/notes.txt", ContentFile(b"not"))
    client.force_login(staff)

    page = client.get(reverse("training_run_detail", args=[run.pk]))
    grid = client.get(reverse("training_run_sample", args=[run.pk, "epoch-000.png"]))
    other = client.get(reverse("training_run_sample", args=[run.pk, "notes.txt"]))

    assert b"epoch-000.png" in page.content
    assert b"".join(grid.streaming_content) == b"\x89PNG grid"
    assert other.status_code == 404
    client.force_login(alice)
    denied = client.get(reverse("training_run_sample", args=[run.pk, "epoch-000.png"]))
    assert denied.status_code == 403


@pytest.mark.parametrize("form_class", [TrainingRunForm, EvaluationForm])
def test_it_labels_every_training_field_in_words_with_help(form_class):
    for name, field in form_class.base_fields.items():
        # None: Django would make the label from the name (“Snr gamma”).
        assert field.label is not None, name
        assert "_" not in field.label, name
        if name != "model_version":
            assert field.help_text, name
