"""Staff pages for training: start, follow, plot, cancel; others are refused."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from xrayweb.jobs.models import Status
from xrayweb.training import services
from xrayweb.training.forms import EvaluationForm, TrainingRunForm
from xrayweb.training.models import EvaluationChunk, EvaluationRun, TrainingRun

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
    assert b"2 of 8 training steps done, about 42.0 s left." in page.content
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


def test_it_polls_a_runs_status_with_steps_and_its_eta(client, staff, run):
    client.force_login(staff)
    page = client.get(reverse("training_run_detail", args=[run.pk])).content.decode()
    assert f'data-poll="{reverse("training_run_status", args=[run.pk])}"' in page
    assert 'http-equiv="refresh"' not in page
    TrainingRun.objects.filter(pk=run.pk).update(
        status=Status.RUNNING,
        started_at=timezone.now(),
        progress_step=30,
        progress_total=120,
        eta_s=185.0,
    )
    fragment = client.get(reverse("training_run_status", args=[run.pk]))
    text = fragment.content.decode()
    assert "30 of 120 training steps done, about 3 min 5 s left." in text
    assert '<progress max="120" value="30"' in text
    assert "data-terminal" not in text
    TrainingRun.objects.filter(pk=run.pk).update(
        status=Status.SUCCEEDED,
        finished_at=F("started_at") + timedelta(seconds=4000),
    )
    done = client.get(reverse("training_run_status", args=[run.pk])).content.decode()
    assert "Succeeded after 1 h 6 min" in done
    assert "data-terminal" in done


def test_it_shows_running_evaluations_with_chunk_counts(
    client, staff, tiny_version, sent, media_root
):
    evaluation = EvaluationRun.objects.create(
        model_version=tiny_version, created_by=staff, chunks_total=4
    )
    for index in range(4):
        EvaluationChunk.objects.create(evaluation=evaluation, index=index)
    client.force_login(staff)
    queued = client.get(reverse("evaluations_pending")).content.decode()
    assert "Queued: number 1 in the queue" in queued
    EvaluationChunk.objects.filter(evaluation=evaluation, index=0).update(
        status=Status.SUCCEEDED, started_at=timezone.now() - timedelta(seconds=60)
    )
    EvaluationRun.objects.filter(pk=evaluation.pk).update(
        status=Status.RUNNING, chunks_done=1
    )
    running = client.get(reverse("evaluations_pending")).content.decode()
    # 60 s for the first chunk, 3 left: about 3 min.
    assert "1 of 4 chunks done, about 3 min 0 s left." in running
    assert '<progress max="4" value="1"' in running
