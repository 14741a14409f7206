"""Through the API and the session's real Celery worker: submit, poll, download,
rerun; the same rows and files the web pages show."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from xrayweb.generations.models import GenerationRequest

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def poll(client, generation_id: int, timeout: float = 120) -> dict:
    """The generation's detail once it has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/generations/{generation_id}/").json()
        if body["status"] not in ("queued", "running"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"generation {generation_id} still {body['status']}")


def png_of(response) -> bytes:
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    return b"".join(response.streaming_content)


def test_it_submits_polls_and_downloads_a_generation_from_a_case(
    worker, alice_api, tiny_version, case_with_image
):
    body = {"case": case_with_image.pk, "model_version": tiny_version.pk, "seed": 7}
    body |= {"steps": 3, "width": 64, "height": 64, "num_images": 2}
    created = alice_api.post("/api/v1/generations/", body, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["status"] == "queued"
    assert created.json()["prompt"] == case_with_image.prompt

    done = poll(alice_api, created.json()["id"])

    assert done["status"] == "succeeded", done["error"]
    assert done["progress"] == {"step": 3, "total": 3, "percent": 100}
    assert done["parameters"]["seed"] == 7
    assert [image["index"] for image in done["images"]] == [0, 1]
    row = GenerationRequest.objects.get(pk=done["id"])
    for image, stored in zip(done["images"], row.images.all(), strict=True):
        assert image["seed"] == stored.seed
        assert image["ssim"] == pytest.approx(stored.ssim)
        downloaded = png_of(alice_api.get(image["png"]))
        with stored.image.open("rb") as handle:
            assert downloaded == handle.read()
        assert Image.open(io.BytesIO(downloaded)).size == (64, 64)
        diff = png_of(alice_api.get(image["diff_map_png"]))
        assert Image.open(io.BytesIO(diff)).format == "PNG"
    ssims = [image["ssim"] for image in done["images"]]
    assert done["metrics"]["mean_ssim"] == pytest.approx(sum(ssims) / 2)

    listed = alice_api.get("/api/v1/generations/?status=succeeded").json()
    assert [item["id"] for item in listed["results"]] == [done["id"]]


def test_it_reruns_a_generation_to_the_same_pixels(worker, alice_api, tiny_version):
    body = {"prompt": "Clear lungs.", "model_version": tiny_version.pk, "seed": 11}
    body |= {"steps": 2, "width": 64, "height": 64}
    first = poll(
        alice_api,
        alice_api.post("/api/v1/generations/", body, format="json").json()["id"],
    )
    rerun = alice_api.post(f"/api/v1/generations/{first['id']}/rerun/")
    assert rerun.status_code == 201
    second = poll(alice_api, rerun.json()["id"])

    assert second["id"] != first["id"]
    assert second["parameters"] == first["parameters"]
    pixels = [
        np.asarray(
            Image.open(io.BytesIO(png_of(alice_api.get(job["images"][0]["png"]))))
        )
        for job in (first, second)
    ]
    assert np.array_equal(*pixels)
