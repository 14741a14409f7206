"""The whole stack: web view → Redis → a real Celery worker process → PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from django.urls import reverse
from django.utils import timezone
from PIL import Image

from generator.sampling import GenerationParams
from tests.generations.conftest import form_data, wait_for_status
from xrayweb.generations import services
from xrayweb.generations.models import GenerationRequest
from xrayweb.jobs.maintenance import reconcile
from xrayweb.jobs.models import Status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_it_runs_a_submitted_request_through_redis_and_the_worker(
    worker, client, alice, tiny_version, case_with_image
):
    client.force_login(alice)
    data = form_data(tiny_version, prompt="", case=case_with_image.pk, seed="42")
    response = client.post(reverse("generate"), data)
    request = GenerationRequest.objects.get(user=alice)
    assert response["Location"] == reverse("request_detail", args=[request.pk])

    assert wait_for_status(request.pk, {Status.SUCCEEDED, Status.FAILED}) == "succeeded"
    request.refresh_from_db()
    assert request.error == ""
    assert request.progress_step == request.progress_total == 4
    assert request.started_at <= request.finished_at
    image = request.images.get()
    assert image.seed == 42
    assert image.reference == case_with_image.frontal_image()
    assert image.ssim is not None
    with image.image.open("rb") as handle:
        assert Image.open(handle).size == (256, 256)

    history = client.get(reverse("history"))
    assert [r.pk for r in history.context["page"]] == [request.pk]
    compare = client.get(reverse("request_compare", args=[request.pk, 0]))
    assert f"{image.ssim:.4f}" in compare.content.decode()
    png = client.get(reverse("result_image", args=[image.pk, "image"]))
    assert b"".join(png.streaming_content).startswith(b"\x89PNG")


def test_it_completes_a_job_whose_broker_message_was_lost(
    worker, alice, tiny_version, settings
):
    request = services.generation_request_create(
        user=alice,
        params=GenerationParams(prompt="Clear lungs.", seed=1, steps=2),
        model_version=tiny_version,
    )
    wait_for_status(request.pk, {Status.SUCCEEDED, Status.FAILED})
    # A sent job whose message is gone (the broker was flushed before a claim).
    lost = GenerationRequest.objects.create(
        user=alice,
        model_version=tiny_version,
        prompt="Lost.",
        seed=2,
        steps=2,
        guidance_scale=7.5,
        scheduler="dpmpp",
        width=256,
        height=256,
        enqueued_at=timezone.now() - timedelta(seconds=60),
    )
    settings.XRAY_RECONCILE_AFTER_S = 1
    assert redis.Redis.from_url(settings.CELERY_BROKER_URL).llen("gpu") == 0

    reconcile()
    assert wait_for_status(lost.pk, {Status.SUCCEEDED, Status.FAILED}) == "succeeded"


def test_it_survives_a_duplicate_message(worker, alice, tiny_version):
    from worker.app import app

    request = services.generation_request_create(
        user=alice,
        params=GenerationParams(prompt="Clear lungs.", seed=2, steps=2),
        model_version=tiny_version,
    )
    app.send_task("generation.run", args=[request.pk], queue="gpu")
    assert wait_for_status(request.pk, {Status.SUCCEEDED, Status.FAILED}) == "succeeded"
    finished = GenerationRequest.objects.get(pk=request.pk)
    # A third, late delivery of a finished job changes nothing.
    app.send_task("generation.run", args=[request.pk], queue="gpu")
    marker = services.generation_request_create(
        user=alice,
        params=GenerationParams(prompt="Marker.", seed=3, steps=1),
        model_version=tiny_version,
    )
    wait_for_status(marker.pk, {Status.SUCCEEDED, Status.FAILED})  # queue drained
    again = GenerationRequest.objects.get(pk=request.pk)
    assert (again.finished_at, again.attempt) == (finished.finished_at, 1)
    assert again.images.count() == 1
