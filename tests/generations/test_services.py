"""Job lifecycle: claim, redelivery, cancel, reconcile — the database is the truth."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from generator.sampling import GenerationParams
from xrayweb.generations import services
from xrayweb.generations.models import GenerationRequest
from xrayweb.jobs.models import Status


@pytest.fixture
def sent(monkeypatch) -> list[int]:
    """Messages handed to the broker, recorded instead of sent (no worker here)."""
    ids: list[int] = []
    monkeypatch.setattr(
        "worker.app.app.send_task",
        lambda name, args, queue: ids.append(args[0]) if queue == "gpu" else None,
    )
    return ids


@pytest.fixture
def queued(alice, tiny_version, sent, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        return services.generation_request_create(
            user=alice,
            params=GenerationParams(prompt="Normal chest.", seed=7, steps=3),
            model_version=tiny_version,
        )


def test_it_enqueues_after_commit_on_the_gpu_queue(queued, sent):
    assert sent == [queued.pk]
    queued.refresh_from_db()
    assert queued.status == Status.QUEUED
    assert queued.enqueued_at is not None


def test_it_claims_a_queued_request_once(queued):
    assert services.generation_request_claim(request_id=queued.pk, worker="w1")
    assert not services.generation_request_claim(request_id=queued.pk, worker="w2")
    queued.refresh_from_db()
    assert queued.status == Status.RUNNING
    assert queued.worker == "w1"
    assert queued.deliveries == 1


def test_it_ignores_a_redelivered_message_for_a_finished_request(queued):
    from xrayweb.generations.runner import generation_run

    GenerationRequest.objects.filter(pk=queued.pk).update(
        status=Status.SUCCEEDED, finished_at=timezone.now()
    )
    before = GenerationRequest.objects.values().get(pk=queued.pk)
    generation_run(request_id=queued.pk, worker="late")
    assert GenerationRequest.objects.values().get(pk=queued.pk) == before
    assert not queued.images.exists()


def test_it_cancels_only_a_queued_request(queued, alice):
    assert services.generation_request_cancel(request_id=queued.pk, user=alice) is None
    queued.refresh_from_db()
    assert queued.status == Status.CANCELLED
    error = services.generation_request_cancel(request_id=queued.pk, user=alice)
    assert (
        error
        == f"Request {queued.pk} is cancelled; only a queued request can be cancelled."
    )


def test_it_does_not_let_a_stranger_cancel(queued, bob):
    assert services.generation_request_cancel(request_id=queued.pk, user=bob)
    queued.refresh_from_db()
    assert queued.status == Status.QUEUED


def test_it_does_not_run_a_cancelled_request(queued, alice):
    services.generation_request_cancel(request_id=queued.pk, user=alice)
    assert not services.generation_request_claim(request_id=queued.pk, worker="w1")


def test_it_resends_queued_jobs_older_than_the_threshold(queued, sent):
    sent.clear()
    assert services.generation_requests_reconcile(older_than_s=3600) == 0
    GenerationRequest.objects.filter(pk=queued.pk).update(
        enqueued_at=timezone.now() - timedelta(hours=2)
    )
    assert services.generation_requests_reconcile(older_than_s=3600) == 1
    assert sent == [queued.pk]


def test_it_requeues_a_job_whose_worker_died(queued, sent, settings):
    services.generation_request_claim(request_id=queued.pk, worker="dead")
    long_ago = timezone.now() - timedelta(seconds=settings.XRAY_JOB_HARD_LIMIT_S + 120)
    GenerationRequest.objects.filter(pk=queued.pk).update(started_at=long_ago)
    sent.clear()
    services.generation_requests_reconcile(older_than_s=0)
    queued.refresh_from_db()
    assert queued.status == Status.QUEUED
    assert sent == [queued.pk]


def test_it_fails_a_job_after_too_many_lost_workers(queued, settings):
    long_ago = timezone.now() - timedelta(seconds=settings.XRAY_JOB_HARD_LIMIT_S + 120)
    GenerationRequest.objects.filter(pk=queued.pk).update(
        status=Status.RUNNING, started_at=long_ago, deliveries=services.MAX_DELIVERIES
    )
    services.generation_requests_reconcile(older_than_s=0)
    queued.refresh_from_db()
    assert queued.status == Status.FAILED
    assert "stopped before finishing" in queued.error


def test_it_rerun_copies_every_parameter(queued, alice, sent):
    rerun = services.generation_request_rerun(request=queued, user=alice)
    fields = ["prompt", "seed", "steps", "guidance_scale", "scheduler", "width"]
    fields += ["height", "num_images", "lora_scale", "model_version_id", "case_id"]
    assert all(getattr(rerun, f) == getattr(queued, f) for f in fields)
    assert rerun.pk != queued.pk


def test_it_keeps_the_request_when_the_broker_is_down(
    alice, tiny_version, monkeypatch, django_capture_on_commit_callbacks
):
    from kombu.exceptions import OperationalError

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379.")

    monkeypatch.setattr("worker.app.app.send_task", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        request = services.generation_request_create(
            user=alice, params=GenerationParams(prompt="p"), model_version=tiny_version
        )
    request.refresh_from_db()
    assert request.status == Status.QUEUED
    assert request.enqueued_at is None  # reconcile will send it


def test_it_defaults_to_a_reachable_base_model(db, settings, tiny_model_dir):
    settings.XRAY_BASE_MODEL = str(tiny_model_dir)
    version = services.model_version_default()
    assert (version.kind, version.source) == ("base", str(tiny_model_dir))


def test_it_falls_back_to_the_shipped_offline_model(db, settings, tmp_path):
    settings.XRAY_BASE_MODEL = str(tmp_path / "no-such-sd")
    mini = tmp_path / "mini-cxr"
    mini.mkdir()
    (mini / "model_index.json").write_text("{}")
    (mini / "generation_defaults.json").write_text('{"width": 64, "height": 64}')
    settings.XRAY_MINI_MODEL_DIR = mini
    version = services.model_version_default()
    assert (version.kind, version.source) == ("mini", str(mini))
    assert version.config == {"defaults": {"width": 64, "height": 64}}


def test_it_falls_back_to_the_tiny_test_model_last(db, settings, tmp_path):
    settings.XRAY_BASE_MODEL = ""
    settings.XRAY_MINI_MODEL_DIR = tmp_path / "absent"
    version = services.model_version_default()
    assert (version.kind, version.get_kind_display()) == (
        "tiny",
        "Untrained tiny test model",
    )


def test_it_does_not_reach_an_uncached_hub_id_offline(
    db, settings, monkeypatch, tmp_path
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    settings.XRAY_BASE_MODEL = "CompVis/stable-diffusion-v1-4"
    settings.XRAY_MINI_MODEL_DIR = tmp_path / "absent"
    assert services.model_version_default().kind == "tiny"
