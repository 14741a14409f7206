"""Where a generation ran (device, dtype, torch, diffusers): on its row, in its PNG,
through the API; and a rerun in the same placement gives the same pixels."""

from __future__ import annotations

import json

import diffusers
import numpy as np
import pytest
import torch
from django.urls import reverse
from PIL import Image
from rest_framework.test import APIClient

from generator import loading
from generator.sampling import GenerationParams
from tests.api.conftest import token_client
from xrayweb.generations import runner, services
from xrayweb.generations.models import GenerationRequest
from xrayweb.generations.runner import generation_run
from xrayweb.jobs.models import Status


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    monkeypatch.setattr("worker.app.app.send_task", lambda *a, **k: None)


@pytest.fixture(autouse=True)
def no_heartbeat_during_a_run(settings):
    """The heartbeat thread's own connection cannot see this test's uncommitted
    rows, so a beat would find the job gone and stop it: on a loaded machine a run
    here outlasts the default 15 s between beats."""
    settings.XRAY_JOB_HEARTBEAT_S = 3600


@pytest.fixture
def native_bf16(monkeypatch):
    """bf16 counts as native on any CPU: the tiny model runs it quickly even on
    PyTorch's fallback kernels, which the check exists to spare SD-sized jobs."""
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: True)


def run(user, version, **params) -> GenerationRequest:
    values = {"prompt": "No acute disease.", "seed": 3, "steps": 3, **params}
    request = services.generation_request_create(
        user=user, params=GenerationParams(**values), model_version=version
    )
    generation_run(request_id=request.pk)
    request.refresh_from_db()
    assert request.status == Status.SUCCEEDED, request.error
    return request


def rerun(request: GenerationRequest) -> GenerationRequest:
    again = services.generation_request_rerun(request=request, user=request.user)
    generation_run(request_id=again.pk)
    again.refresh_from_db()
    assert again.status == Status.SUCCEEDED, again.error
    return again


def png_of(request: GenerationRequest) -> Image.Image:
    with request.images.get(index=0).image.open("rb") as handle:
        image = Image.open(handle)
        image.load()
    return image


def pixels(request: GenerationRequest) -> np.ndarray:
    return np.asarray(png_of(request))


def test_it_records_where_it_ran_on_the_row_in_the_png_and_in_the_api(
    alice, tiny_version, settings
):
    settings.XRAY_DTYPE = "float32"

    request = run(alice, tiny_version)

    expected = ("cpu", "float32", torch.__version__, diffusers.__version__)
    row = (
        request.device,
        request.dtype,
        request.torch_version,
        request.diffusers_version,
    )
    assert row == expected
    parameters = json.loads(png_of(request).text["Parameters"])
    png = tuple(parameters[key] for key in ("device", "dtype", "torch", "diffusers"))
    assert png == expected
    body = token_client(alice).get(f"/api/v1/generations/{request.pk}/").json()
    placement = body["placement"]
    api = tuple(placement[key] for key in ("device", "dtype", "torch", "diffusers"))
    assert api == expected
    assert placement["note"] == ""


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_it_reruns_in_the_recorded_placement_with_the_same_pixels(
    alice, tiny_version, settings, native_bf16, dtype
):
    settings.XRAY_DTYPE = dtype
    first = run(alice, tiny_version)
    # The worker's own choice changes; the rerun still asks for the recorded one.
    other = "bfloat16" if dtype == "float32" else "float32"
    settings.XRAY_DTYPE = other
    elsewhere = run(alice, tiny_version)

    again = rerun(first)

    assert again.placement_requested["dtype"] == dtype
    assert (again.device, again.dtype) == ("cpu", dtype)
    assert again.placement_note == ""
    assert np.array_equal(pixels(again), pixels(first))
    # The other dtype moves pixels, so the equality above is the placement's doing.
    assert elsewhere.dtype == other
    assert not np.array_equal(pixels(elsewhere), pixels(first))


def test_it_says_so_when_it_cannot_run_where_the_original_ran(
    alice, tiny_version, settings, client
):
    settings.XRAY_DTYPE = "float32"
    original = run(alice, tiny_version)
    # Made on a GPU worker in fp16; this worker has no CUDA device.
    original.device, original.dtype = "cuda", "float16"
    original.save(update_fields=["device", "dtype"])
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the original's placement is possible")

    again = rerun(original)

    assert (again.device, again.dtype) == ("cpu", "float32")
    assert again.placement_note == runner.PLACEMENT_NOT_FOLLOWED.format(
        device="cuda",
        dtype="float16",
        reason=loading.NO_CUDA,
        own_device="cpu",
        own_dtype="float32",
    )
    client.force_login(alice)
    page = client.get(reverse("request_status", args=[again.pk])).content.decode()
    assert again.placement_note in page.replace("&#x27;", "'")


def test_it_says_so_when_the_versions_differ_from_the_original(
    alice, tiny_version, settings
):
    settings.XRAY_DTYPE = "float32"
    original = run(alice, tiny_version)
    original.torch_version = "1.13.1"
    original.save(update_fields=["torch_version"])

    again = rerun(original)

    assert again.placement_note == runner.VERSIONS_DIFFER.format(
        torch="1.13.1",
        diffusers=diffusers.__version__,
        own_torch=torch.__version__,
        own_diffusers=diffusers.__version__,
    )
    assert np.array_equal(pixels(again), pixels(original))  # same machine after all


def test_it_asks_for_nothing_when_the_original_recorded_nothing(alice, tiny_version):
    """A request from before placements were recorded: the worker's own choice."""
    original = services.generation_request_create(
        user=alice,
        params=GenerationParams(prompt="No acute disease.", steps=2),
        model_version=tiny_version,
    )

    again = services.generation_request_rerun(request=original, user=alice)

    assert again.placement_requested == {}


def test_it_shows_the_placement_to_the_owner_only(alice, bob, tiny_version, settings):
    settings.XRAY_DTYPE = "float32"
    request = run(alice, tiny_version)

    mine = token_client(alice).get(f"/api/v1/generations/{request.pk}/")
    theirs = token_client(bob).get(f"/api/v1/generations/{request.pk}/")
    anonymous = APIClient().get(f"/api/v1/generations/{request.pk}/")

    assert mine.status_code == 200
    assert mine.json()["placement"]["dtype"] == "float32"
    assert theirs.status_code == 404
    assert anonymous.status_code in (401, 403)
