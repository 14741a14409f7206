"""Job lifecycle: claim, redelivery, cancel, reconcile — the database is the truth."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from generator.sampling import GenerationParams
from xrayweb.generations import services
from xrayweb.generations.models import GenerationRequest
from xrayweb.jobs import lifecycle
from xrayweb.jobs.models import Status, UserQuota
from xrayweb.jobs.quotas import QuotaExceeded


@pytest.fixture
def sent(monkeypatch) -> list[int]:
    """Messages handed to the broker, recorded instead of sent (no worker here)."""
    ids: list[int] = []

    def record(name, args, queue=None, **_):
        if queue == "gpu":
            ids.append(args[0])

    monkeypatch.setattr("worker.app.app.send_task", record)
    return ids


@pytest.fixture
def queued(alice, tiny_version, sent, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        return services.generation_request_create(
            user=alice,
            params=GenerationParams(prompt="Normal chest.", seed=7, steps=3),
            model_version=tiny_version,
        )


def test_it_dispatches_after_commit_on_the_gpu_queue(queued, sent):
    assert sent == [queued.pk]
    queued.refresh_from_db()
    assert queued.status == Status.QUEUED
    assert queued.enqueued_at is not None


def test_it_claims_a_queued_request_once(queued):
    assert lifecycle.claim(GenerationRequest, queued.pk, "w1") == 1
    assert lifecycle.claim(GenerationRequest, queued.pk, "w2") is None
    queued.refresh_from_db()
    assert (queued.status, queued.worker, queued.attempt) == (Status.RUNNING, "w1", 1)
    assert queued.lease_expires_at > timezone.now()


def test_it_ignores_a_redelivered_message_for_a_finished_request(queued):
    from xrayweb.generations.runner import generation_run

    GenerationRequest.objects.filter(pk=queued.pk).update(
        status=Status.SUCCEEDED, finished_at=timezone.now()
    )
    before = GenerationRequest.objects.values().get(pk=queued.pk)
    generation_run(request_id=queued.pk)
    assert GenerationRequest.objects.values().get(pk=queued.pk) == before


def test_it_cancels_a_queued_request_at_once_and_refuses_twice(queued, alice):
    assert services.generation_request_cancel(request_id=queued.pk, user=alice) is None
    queued.refresh_from_db()
    assert queued.status == Status.CANCELLED
    error = services.generation_request_cancel(request_id=queued.pk, user=alice)
    assert error == (
        f"Generation request {queued.pk} is cancelled; it can no longer be cancelled."
    )


def test_it_flags_a_running_request_for_its_worker(queued, alice):
    attempt = lifecycle.claim(GenerationRequest, queued.pk, "w1")
    assert services.generation_request_cancel(request_id=queued.pk, user=alice) is None
    queued.refresh_from_db()
    assert queued.status == Status.RUNNING
    assert queued.cancel_pending
    beat = lifecycle.heartbeat(GenerationRequest, queued.pk, attempt)
    assert beat.held
    assert beat.cancel_requested
    assert lifecycle.stop(GenerationRequest, queued.pk, attempt)
    queued.refresh_from_db()
    assert queued.status == Status.CANCELLED


def test_it_refuses_a_strangers_cancel(queued, bob):
    error = services.generation_request_cancel(request_id=queued.pk, user=bob)
    assert error == lifecycle.CANCEL_FORBIDDEN
    assert GenerationRequest.objects.get(pk=queued.pk).status == Status.QUEUED


def test_it_lets_a_holder_of_the_permission_cancel_anyones(queued, bob):
    bob.user_permissions.add(Permission.objects.get(codename="cancel_any_job"))
    bob = type(bob).objects.get(pk=bob.pk)  # fresh permission cache
    assert services.generation_request_cancel(request_id=queued.pk, user=bob) is None
    assert GenerationRequest.objects.get(pk=queued.pk).status == Status.CANCELLED


def test_it_does_not_run_a_cancelled_request(queued, alice):
    services.generation_request_cancel(request_id=queued.pk, user=alice)
    assert lifecycle.claim(GenerationRequest, queued.pk, "w1") is None


def test_it_requeues_a_job_whose_lease_ran_out(queued):
    lifecycle.claim(GenerationRequest, queued.pk, "dead")
    GenerationRequest.objects.filter(pk=queued.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1), progress_step=2
    )
    assert lifecycle.recover(GenerationRequest) == 1
    queued.refresh_from_db()
    assert (queued.status, queued.enqueued_at, queued.progress_step) == (
        Status.QUEUED,
        None,
        0,
    )
    assert lifecycle.claim(GenerationRequest, queued.pk, "w2") == 2


def test_it_fails_a_job_after_too_many_lost_workers(queued, settings):
    GenerationRequest.objects.filter(pk=queued.pk).update(
        status=Status.RUNNING,
        attempt=settings.XRAY_JOB_MAX_DELIVERIES,
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )
    lifecycle.recover(GenerationRequest)
    queued.refresh_from_db()
    assert queued.status == Status.FAILED
    assert queued.error == lifecycle.WORKER_LOST.format(n=3)


def test_it_ignores_the_late_writes_of_a_superseded_attempt(queued):
    first = lifecycle.claim(GenerationRequest, queued.pk, "slow")
    GenerationRequest.objects.filter(pk=queued.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    lifecycle.recover(GenerationRequest)
    second = lifecycle.claim(GenerationRequest, queued.pk, "fast")

    beat = lifecycle.heartbeat(GenerationRequest, queued.pk, first, progress_step=3)
    assert not beat.held
    assert not lifecycle.finish(GenerationRequest, queued.pk, first, Status.SUCCEEDED)
    queued.refresh_from_db()
    assert (queued.status, queued.attempt, queued.progress_step) == (
        Status.RUNNING,
        second,
        0,
    )


def test_it_refuses_a_request_over_the_cost_cap_naming_cost_and_limit(
    alice, tiny_version, settings
):
    settings.XRAY_MAX_REQUEST_PIXEL_STEPS = 1_000_000
    params = GenerationParams(prompt="p", steps=20, width=256, height=256)
    with pytest.raises(QuotaExceeded) as caught:
        services.generation_request_create(
            user=alice, params=params, model_version=tiny_version
        )
    assert str(caught.value) == (
        "This request costs 1.3 million pixel-steps (256×256 px × 20 steps × 1 "
        "images); the limit per request is 1.0 million. Use fewer steps, images or "
        "a smaller size."
    )
    assert not GenerationRequest.objects.exists()


def test_it_refuses_a_request_over_the_users_queue_limit(alice, tiny_version, sent):
    UserQuota.objects.create(user=alice, max_queued_jobs=2)
    params = GenerationParams(prompt="p", steps=2)
    for _ in range(2):
        services.generation_request_create(
            user=alice, params=params, model_version=tiny_version
        )
    with pytest.raises(QuotaExceeded) as caught:
        services.generation_request_create(
            user=alice, params=params, model_version=tiny_version
        )
    assert "You have 2 requests queued or running; the limit is 2." in str(caught.value)
    assert GenerationRequest.objects.count() == 2


def test_it_refuses_a_request_over_the_daily_budget(alice, tiny_version, sent):
    UserQuota.objects.create(user=alice, daily_pixel_steps=200_000)
    params = GenerationParams(prompt="p", steps=2)
    services.generation_request_create(
        user=alice, params=params, model_version=tiny_version
    )
    with pytest.raises(QuotaExceeded) as caught:
        services.generation_request_create(
            user=alice, params=params, model_version=tiny_version
        )
    assert str(caught.value) == (
        "This request costs 0.1 million pixel-steps, and you have used 0.1 million "
        "of your 0.2 million for the last 24 hours."
    )


def test_it_rerun_copies_every_parameter(queued, alice, sent):
    rerun = services.generation_request_rerun(request=queued, user=alice)
    fields = ["prompt", "seed", "steps", "guidance_scale", "scheduler", "width"]
    fields += ["height", "num_images", "lora_scale", "model_version_id", "case_id"]
    fields += ["deep_cache_interval", "token_merging"]
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


@pytest.mark.parametrize(
    ("name", "kind", "revision", "label"),
    [
        ("/srv/weights/sd-v1-4@main", "base", "main", "sd-v1-4@main"),
        (
            "CompVis/stable-diffusion-v1-4@abc123",
            "base",
            "abc123",
            "CompVis/stable-diffusion-v1-4@abc123",
        ),
        ("my-base", "base", "fedcba", "my-base@fedcba"),
        ("mini-cxr", "mini", "", "mini-cxr"),
        ("lora-cardio", "lora", "main", "lora-cardio"),
    ],
)
def test_it_labels_a_model_by_name_and_revision(name, kind, revision, label):
    from xrayweb.generations.models import ModelVersion

    version = ModelVersion(name=name, kind=kind, source="/x", revision=revision)
    assert version.label == label


def test_it_refuses_to_delete_a_running_request_and_keeps_it(alice, tiny_version):
    request = services.generation_request_create(
        user=alice, params=GenerationParams(prompt="p"), model_version=tiny_version
    )
    GenerationRequest.objects.filter(pk=request.pk).update(status=Status.RUNNING)
    error = services.generation_request_delete(request_id=request.pk, user=alice)
    assert error == (
        f"Request {request.pk} is running: cancel it first, then delete it once it "
        "has stopped."
    )
    assert GenerationRequest.objects.filter(pk=request.pk).exists()


def test_it_deletes_only_the_owners_request(alice, bob, tiny_version):
    request = services.generation_request_create(
        user=alice, params=GenerationParams(prompt="p"), model_version=tiny_version
    )
    services.generation_request_cancel(request_id=request.pk, user=alice)
    with pytest.raises(GenerationRequest.DoesNotExist):
        services.generation_request_delete(request_id=request.pk, user=bob)
    assert GenerationRequest.objects.filter(pk=request.pk).exists()
    assert services.generation_request_delete(request_id=request.pk, user=alice) is None
    assert not GenerationRequest.objects.filter(pk=request.pk).exists()


def test_it_starts_new_requests_at_the_generators_measured_defaults(
    tiny_version, settings
):
    for name in ("STEPS", "SCHEDULER"):
        setattr(settings, f"XRAY_DEFAULT_{name}", None)
    settings.XRAY_DEEP_CACHE_INTERVAL = settings.XRAY_TOKEN_MERGING = None

    initial = services.generation_initial(known=None, version_id=tiny_version.pk)

    defaults = GenerationParams(prompt="x")
    names = ["steps", "scheduler", "deep_cache_interval", "token_merging"]
    assert [initial[n] for n in names] == [getattr(defaults, n) for n in names]


def test_it_starts_new_requests_at_the_sites_defaults(tiny_version, settings):
    settings.XRAY_DEFAULT_STEPS = 7
    settings.XRAY_DEFAULT_SCHEDULER = "unipc"
    settings.XRAY_DEEP_CACHE_INTERVAL = 4
    settings.XRAY_TOKEN_MERGING = 0.25

    initial = services.generation_initial(known=None, version_id=tiny_version.pk)

    names = ["steps", "scheduler", "deep_cache_interval", "token_merging"]
    assert [initial[n] for n in names] == [7, "unipc", 4, 0.25]


def test_it_stores_the_accelerations_asked_for(alice, tiny_version, sent):
    params = GenerationParams(
        prompt="Normal chest.", deep_cache_interval=3, token_merging=0.4
    )

    request = services.generation_request_create(
        user=alice, params=params, model_version=tiny_version
    )

    request.refresh_from_db()
    assert (request.deep_cache_interval, request.token_merging) == (3, 0.4)
    assert services.params_of(request) == params
