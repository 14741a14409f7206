"""Batches on the generation worker, in-process: compatible queued requests claimed
in fair-share order through the lifecycle's claim, run as one pipeline call, each
image bit-identical to its request alone; a cancelled member leaves the batch; live
previews while running, gone at the end."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from django.utils import timezone
from PIL import Image

from generator.batching import batch_invariant
from generator.sampling import generate
from tests.generations.test_runner import make_request
from xrayweb.generations import previews, services
from xrayweb.generations.models import GenerationRequest
from xrayweb.generations.runner import generation_run, pipeline_for
from xrayweb.jobs.models import Status
from xrayweb.jobs.runtime import Attempt


@pytest.fixture
def batching(settings, monkeypatch):
    """Batches of up to four images, CPU fp32, a progress write every step, no
    heartbeat thread beats, and no broker (the dispatcher's sends are dropped)."""
    settings.XRAY_BATCH_IMAGES = 4
    settings.XRAY_DTYPE = "float32"
    settings.XRAY_DEVICE = "cpu"
    settings.XRAY_PROGRESS_INTERVAL_S = 0
    # The heartbeat thread has its own connection, which cannot see this test's
    # uncommitted rows: on a slow machine its first beat would find the job lost.
    settings.XRAY_JOB_HEARTBEAT_S = 3600
    monkeypatch.setattr("worker.app.app.send_task", lambda *a, **k: None)


@pytest.fixture
def frequent_previews(batching, settings):
    """One request at a time, a preview after every other step, no interval."""
    settings.XRAY_BATCH_IMAGES = 1
    settings.XRAY_PREVIEW_EVERY_STEPS = 2
    settings.XRAY_PREVIEW_INTERVAL_S = 0


class UnetCalls:
    """Counts the UNet's calls and their batch sizes; ``on_call`` runs before each."""

    def __init__(self, unet, on_call=None) -> None:
        self.sizes: list[int] = []
        self.on_call = on_call
        self.handle = unet.register_forward_pre_hook(self)

    def __call__(self, module, args) -> None:
        self.sizes.append(args[0].shape[0])
        if self.on_call is not None:
            self.on_call(len(self.sizes))


@pytest.fixture
def unet_calls(tiny_version, batching):
    made = []

    def watch(on_call=None) -> UnetCalls:
        pipe = pipeline_for(tiny_version, 1.0)
        made.append(UnetCalls(pipe.unet, on_call))
        return made[-1]

    yield watch
    for calls in made:
        calls.handle.remove()


def stored_pixels(request: GenerationRequest) -> list[np.ndarray]:
    found = []
    for image in request.images.order_by("index"):
        with image.image.open("rb") as handle:
            found.append(np.asarray(Image.open(handle).convert("L")))
    return found


def alone_pixels(version, request: GenerationRequest) -> list[np.ndarray]:
    pipe = pipeline_for(version, request.lora_scale)
    with batch_invariant(pipe.unet):
        result = generate(pipe, services.params_of(request))
    return [np.asarray(image) for image in result.images]


def test_it_runs_compatible_requests_as_one_call_bit_identical_to_each_alone(
    alice, bob, tiny_version, unet_calls
):
    first = make_request(alice, tiny_version, prompt="Cardiomegaly.", seed=1)
    second = make_request(bob, tiny_version, prompt="Effusion.", seed=2, num_images=2)
    third = make_request(alice, tiny_version, prompt="Normal.", seed=3)
    other_size = make_request(alice, tiny_version, seed=4, width=128, height=128)
    calls = unet_calls()

    generation_run(request_id=first.pk)

    assert calls.sizes == [2 * 4] * 3  # one call per step, 4 images guided
    for request in (first, second, third):
        request.refresh_from_db()
        assert request.status == Status.SUCCEEDED, request.error
        assert request.attempt == 1
        expected = alone_pixels(tiny_version, request)
        got = stored_pixels(request)
        assert len(got) == request.num_images
        assert all(np.array_equal(e, g) for e, g in zip(expected, got, strict=True))
    other_size.refresh_from_db()
    assert other_size.status == Status.QUEUED  # not compatible: left for its turn


def test_it_claims_companions_in_fair_share_order(
    alice, bob, tiny_version, unet_calls, settings
):
    settings.XRAY_BATCH_IMAGES = 2
    first = make_request(alice, tiny_version, seed=1)
    alices_next = make_request(alice, tiny_version, seed=2)
    bobs = make_request(bob, tiny_version, seed=3)
    GenerationRequest.objects.filter(pk=first.pk).update(enqueued_at=timezone.now())
    unet_calls()

    generation_run(request_id=first.pk)

    statuses = dict(
        GenerationRequest.objects.filter(
            pk__in=[first.pk, alices_next.pk, bobs.pk]
        ).values_list("pk", "status")
    )
    # Alice was just served; Bob, never served, goes before her second request.
    assert statuses == {
        first.pk: Status.SUCCEEDED,
        bobs.pk: Status.SUCCEEDED,
        alices_next.pk: Status.QUEUED,
    }


def test_it_drops_a_cancelled_member_without_failing_the_others(
    alice, bob, tiny_version, unet_calls
):
    first = make_request(alice, tiny_version, prompt="Cardiomegaly.", seed=1)
    cancelled = make_request(bob, tiny_version, prompt="Effusion.", seed=2)
    third = make_request(alice, tiny_version, prompt="Normal.", seed=3)

    def cancel_at_step_two(call: int) -> None:
        if call == 2:
            services.generation_request_cancel(request_id=cancelled.pk, user=bob)

    calls = unet_calls(cancel_at_step_two)

    generation_run(request_id=first.pk)

    assert calls.sizes == [2 * 3] * 3  # the batch ran to its end
    cancelled.refresh_from_db()
    assert cancelled.status == Status.CANCELLED
    assert not cancelled.images.exists()
    for request in (first, third):
        request.refresh_from_db()
        assert request.status == Status.SUCCEEDED, request.error
        expected = alone_pixels(tiny_version, request)
        assert np.array_equal(expected[0], stored_pixels(request)[0])


def test_it_skips_requests_already_cancelled_or_claimed(
    alice, bob, tiny_version, unet_calls
):
    first = make_request(alice, tiny_version, seed=1)
    gone = make_request(bob, tiny_version, seed=2)
    services.generation_request_cancel(request_id=gone.pk, user=bob)
    calls = unet_calls()

    generation_run(request_id=first.pk)

    assert calls.sizes == [2] * 3
    gone.refresh_from_db()
    assert gone.status == Status.CANCELLED
    assert gone.attempt == 0


def test_it_shows_a_preview_while_running_and_deletes_it_at_the_end(
    alice, tiny_version, frequent_previews
):
    request = make_request(alice, tiny_version, seed=1, steps=6)
    seen = []

    def look(call: int) -> None:
        row = GenerationRequest.objects.get(pk=request.pk)
        seen.append((call, previews.preview_data_uri(row)))

    pipe = pipeline_for(tiny_version, 1.0)
    handle = pipe.unet.register_forward_pre_hook(lambda m, a: look(len(seen) + 1))
    try:
        generation_run(request_id=request.pk)
    finally:
        handle.remove()

    request.refresh_from_db()
    assert request.status == Status.SUCCEEDED
    # Made after steps 2 and 4: seen from the calls of steps 3 and 5 on.
    shown = [call for call, uri in seen if uri]
    assert shown == [3, 4, 5, 6]
    assert seen[2][1].startswith("data:image/png;base64,")
    assert previews.preview_data_uri(request) is None  # it ended
    key = previews.preview_key(request.pk, request.attempt)
    from django.core.cache import cache

    assert cache.get(key) is None  # deleted, not left to expire
    assert request.images.count() == 1  # the preview is not a result


def test_it_keeps_the_unbatched_path_when_batching_is_off(
    alice, tiny_version, unet_calls, settings
):
    settings.XRAY_BATCH_IMAGES = 1
    first = make_request(alice, tiny_version, seed=1)
    second = make_request(alice, tiny_version, seed=2)
    calls = unet_calls()

    generation_run(request_id=first.pk)

    assert calls.sizes == [2] * 3
    second.refresh_from_db()
    assert second.status == Status.QUEUED


def test_it_makes_at_most_one_preview_per_interval(
    alice, tiny_version, batching, settings
):
    from types import SimpleNamespace

    from xrayweb.generations.runner import PreviewWriter

    pipe = pipeline_for(tiny_version, 1.0)
    member = SimpleNamespace(
        attempt=SimpleNamespace(pk=10**9, number=1),
        request=SimpleNamespace(num_images=1),
        dropped=False,
    )
    latents = torch.zeros(1, pipe.unet.config.in_channels, 8, 8)
    made = {}
    for interval in (0, 3600):
        settings.XRAY_PREVIEW_INTERVAL_S = interval
        writer = PreviewWriter(pipe, [member], total=10)
        for step in range(1, 11):
            writer(step, latents)
        made[interval] = writer.made
    previews.preview_delete(request_id=10**9, attempt=1)

    # Steps 2, 4, 6 and 8; none within the first hour of a job.
    assert made == {0: 4, 3600: 0}


def test_it_shows_the_preview_on_the_status_fragment_and_the_api_to_its_owner(
    client, alice, bob, tiny_version, batching
):
    from rest_framework.test import APIClient

    request = make_request(alice, tiny_version, seed=1)
    attempt = Attempt.claim(GenerationRequest, request.pk)
    png = b"\x89PNG\r\n\x1a\nnot-really"
    previews.preview_store(request_id=request.pk, attempt=attempt.number, png=png)
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    api = APIClient()
    try:
        client.force_login(alice)
        fragment = client.get(f"/requests/{request.pk}/status/")
        api.force_authenticate(alice)
        shown = api.get(f"/api/v1/generations/{request.pk}/").json()["preview_png"]
        api.force_authenticate(bob)
        strangers = api.get(f"/api/v1/generations/{request.pk}/").status_code
        attempt.succeed()
        request.refresh_from_db()
        after = previews.preview_data_uri(request)
    finally:
        previews.preview_delete(request_id=request.pk, attempt=attempt.number)

    assert uri in fragment.content.decode()
    assert shown == uri
    assert strangers == 404
    assert after is None  # shown only while the job runs


def test_a_time_limit_that_lands_while_a_preview_is_stored_still_stops_the_job(
    alice, tiny_version, frequent_previews, settings, monkeypatch
):
    from celery.exceptions import SoftTimeLimitExceeded

    settings.XRAY_JOB_SOFT_LIMIT_S = 7
    request = make_request(alice, tiny_version, seed=1, steps=6)

    def signalled(*args, **kwargs):  # the pool's signal, raised inside cache.set
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(previews.cache, "set", signalled)
    generation_run(request_id=request.pk)

    request.refresh_from_db()
    assert request.status == Status.FAILED
    assert request.error == "The job ran past its 7 s time limit and was stopped."
    assert request.progress_step < request.steps
    assert not request.images.exists()


def test_a_cache_outage_while_a_preview_is_stored_does_not_fail_the_job(
    alice, tiny_version, frequent_previews, monkeypatch
):
    request = make_request(alice, tiny_version, seed=1, steps=6)

    def outage(*args, **kwargs):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379.")

    monkeypatch.setattr(previews.cache, "set", outage)
    generation_run(request_id=request.pk)

    request.refresh_from_db()
    assert request.status == Status.SUCCEEDED
    assert request.images.count() == 1


def test_it_stops_a_job_at_the_first_step_past_its_time_limit_when_no_signal_came(
    alice, tiny_version, batching, settings, unet_calls
):
    import time

    settings.XRAY_BATCH_IMAGES = 1
    settings.XRAY_JOB_SOFT_LIMIT_S = 1
    request = make_request(alice, tiny_version, seed=1, steps=6)
    # The first UNet call outlasts the limit; no pool signal arrives in-process.
    unet_calls(on_call=lambda call: time.sleep(1.1) if call == 1 else None)

    generation_run(request_id=request.pk)

    request.refresh_from_db()
    assert request.status == Status.FAILED
    assert request.error == "The job ran past its 1 s time limit and was stopped."
    assert request.progress_step < request.steps
    assert not request.images.exists()
