"""Training runs as jobs: create, claim, reclaim after a dead worker, register."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image

from generator.errors import InvalidParameterError
from generator.training import TrainingConfig, train
from tests.training.conftest import RUN_CONFIG
from xrayweb.generations.models import ModelKind, ModelVersion
from xrayweb.jobs import lifecycle
from xrayweb.jobs.models import Status
from xrayweb.training import selectors, services
from xrayweb.training.files import work_dir
from xrayweb.training.models import TrainingRun
from xrayweb.training.runner import training_run_execute


@pytest.fixture
def run(staff, tiny_version, sent, django_capture_on_commit_callbacks) -> TrainingRun:
    with django_capture_on_commit_callbacks(execute=True):
        return services.training_run_create(
            user=staff, name="gray-lora", base=tiny_version, config=RUN_CONFIG
        )


def test_it_creates_a_run_and_enqueues_it_on_the_gpu_queue(run, sent):
    assert sent == [("training.run", [run.pk], "train")]
    run.refresh_from_db()
    assert run.status == Status.QUEUED
    assert run.enqueued_at is not None
    assert run.files_key == f"training/{run.pk}/"


def test_it_refuses_a_run_from_a_non_staff_user(alice, tiny_version, sent):
    with pytest.raises(PermissionDenied, match=r"permission .training\.start_training"):
        services.training_run_create(
            user=alice, name="x", base=tiny_version, config=RUN_CONFIG
        )
    assert not TrainingRun.objects.exists()


def test_it_refuses_bad_training_parameters(staff, tiny_version, sent):
    with pytest.raises(InvalidParameterError, match="rank must be greater than 0"):
        services.training_run_create(
            user=staff, name="x", base=tiny_version, config={**RUN_CONFIG, "rank": 0}
        )
    assert not TrainingRun.objects.exists()


def test_it_refuses_a_name_already_taken(staff, tiny_version, sent):
    with pytest.raises(ValueError, match="'tiny-untrained' already exists"):
        services.training_run_create(
            user=staff, name="tiny-untrained", base=tiny_version, config=RUN_CONFIG
        )


def test_it_claims_a_queued_run_once(run):
    assert lifecycle.claim(TrainingRun, run.pk, "w1") == 1
    assert lifecycle.claim(TrainingRun, run.pk, "w2") is None
    run.refresh_from_db()
    assert (run.status, run.worker, run.attempt) == (Status.RUNNING, "w1", 1)


def test_it_reclaims_a_running_run_whose_lease_ran_out(run):
    lifecycle.claim(TrainingRun, run.pk, "w1")
    TrainingRun.objects.filter(pk=run.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert lifecycle.recover(TrainingRun) == 1
    assert lifecycle.claim(TrainingRun, run.pk, "w2") == 2
    run.refresh_from_db()
    assert (run.worker, run.attempt) == ("w2", 2)


def test_it_builds_frontal_examples_from_train_cases_only(train_cases):
    examples = selectors.training_examples()
    assert [example.caption for example in examples] == [
        "dark chest",
        "bright chest",
        "dark chest",
        "bright chest",
    ]
    # Each image is opened through storage (no host path): 32² gray PNGs.
    for example in examples:
        with example.image() as stream, Image.open(stream) as image:
            assert image.size == (32, 32)


def test_it_names_the_view_when_laterals_are_included(train_cases):
    captions = [e.caption for e in selectors.training_examples(include_laterals=True)]
    assert len(captions) == 5
    assert "lateral view. dark chest" in captions
    assert "frontal view. bright chest" in captions


def test_it_trains_and_registers_a_lora_model_version(run, train_cases):
    assert training_run_execute(run_id=run.pk)

    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED, run.error
    version = run.model_version
    assert (version.name, version.kind) == ("gray-lora", ModelKind.LORA)
    assert not version.is_active  # offered once someone with the permission activates
    assert version.source == run.base.source
    # The file is in storage under a key naming its sha256, not on a host path.
    assert version.lora_key.startswith(f"models/gray-lora/{version.lora_sha256}/")
    with default_storage.open(version.lora_key, "rb") as stored:
        assert hashlib.sha256(stored.read()).hexdigest() == version.lora_sha256
    assert version.metrics["steps"] == 4
    assert version.config["rank"] == 4
    assert [point[0] for point in run.loss_history] == [1, 2, 3, 4]
    assert run.validation_history[0][0] == 0
    assert not training_run_execute(run_id=run.pk)


class Killed(Exception):
    pass


def test_it_resumes_a_killed_run_from_its_last_checkpoint(run, train_cases):
    # The first worker trains to step 3 (checkpoints every step) and dies.
    lifecycle.claim(TrainingRun, run.pk, "w1")
    config = TrainingConfig(
        base=run.base.source, output_dir=str(work_dir(run.pk)), **run.config
    )

    def die_at_3(report) -> None:
        if report.step == 3:
            raise Killed

    with pytest.raises(Killed):
        train(config, selectors.training_examples(), progress=die_at_3)
    TrainingRun.objects.filter(pk=run.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=60)
    )
    lifecycle.recover(TrainingRun)

    # Recovery queued it again; the next delivery claims it and finishes it.
    assert training_run_execute(run_id=run.pk)

    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED, run.error
    assert (run.resumed_from_step, run.attempt, run.progress_step) == (2, 2, 4)
    assert ModelVersion.objects.filter(name="gray-lora").count() == 1


def test_it_fails_a_run_with_no_training_data(run, db):
    training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == Status.FAILED
    assert "No training examples" in run.error


def test_it_stops_a_run_cancelled_while_training(run, train_cases, staff, settings):
    settings.XRAY_PROGRESS_INTERVAL_S = 0

    def cancel_at_2(report) -> None:
        if report.step == 2:
            services.training_run_cancel(run_id=run.pk, user=staff)

    assert training_run_execute(run_id=run.pk, echo=cancel_at_2)

    run.refresh_from_db()
    # Cancel arrived during step 2: that step is the last one recorded.
    assert (run.status, run.progress_step, run.model_version) == (
        Status.CANCELLED,
        2,
        None,
    )
    assert not ModelVersion.objects.filter(name="gray-lora").exists()
