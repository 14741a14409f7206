"""The job runner in-process: images, scores, progress and readable failures."""

from __future__ import annotations

import pytest
from PIL import Image

from generator.sampling import GenerationParams
from xrayweb.generations import services
from xrayweb.generations.models import GenerationRequest, ModelVersion
from xrayweb.generations.runner import generation_run
from xrayweb.jobs.models import Status


@pytest.fixture
def no_broker(monkeypatch):
    monkeypatch.setattr("worker.app.app.send_task", lambda *a, **k: None)


def make_request(user, version, case=None, **params) -> GenerationRequest:
    params = {"prompt": "No acute disease.", "seed": 3, "steps": 3, **params}
    return services.generation_request_create(
        user=user, params=GenerationParams(**params), model_version=version, case=case
    )


def test_it_stores_pngs_with_ssim_against_the_case(
    alice, tiny_version, case_with_image, no_broker
):
    request = make_request(alice, tiny_version, case_with_image, num_images=2)
    generation_run(request_id=request.pk, worker="test")
    request.refresh_from_db()
    assert request.status == Status.SUCCEEDED, request.error
    assert request.progress_step == request.steps
    assert set(request.timings) == {"text_encoding_s", "denoising_s", "decoding_s"}
    images = list(request.images.order_by("index"))
    assert [image.seed for image in images] == [3, 4]
    for image in images:
        with image.image.open("rb") as handle:
            png = Image.open(handle)
            png.load()
        assert png.mode == "L"
        assert png.size == (256, 256)
        assert png.text["Synthetic"] == "true"
        assert -1.0 <= image.ssim < 1.0
        assert image.psnr > 0
        assert image.reference == case_with_image.frontal_image()
        assert image.diff_map


def test_it_skips_scores_for_free_text(alice, tiny_version, no_broker):
    request = make_request(alice, tiny_version)
    generation_run(request_id=request.pk, worker="test")
    image = request.images.get()
    assert (image.ssim, image.psnr, image.diff_map.name) == (None, None, "")


def test_it_fails_with_a_readable_message_when_the_model_is_missing(
    alice, no_broker, tmp_path
):
    missing = ModelVersion.objects.create(
        name="gone", kind="base", source=str(tmp_path / "nowhere")
    )
    request = make_request(alice, missing)
    generation_run(request_id=request.pk, worker="test")
    request.refresh_from_db()
    assert request.status == Status.FAILED
    assert request.error.startswith(f"No model folder at {tmp_path / 'nowhere'}")


def test_it_records_what_was_cut_from_a_long_prompt(alice, tiny_version, no_broker):
    long_prompt = "The cardiomediastinal silhouette is within normal limits. " * 12
    request = make_request(alice, tiny_version, prompt=long_prompt.strip())
    generation_run(request_id=request.pk, worker="test")
    request.refresh_from_db()
    assert request.prompt_dropped
    assert long_prompt.startswith(request.prompt_used)


def test_it_loads_the_pipeline_once_per_process(alice, tiny_version, no_broker):
    from generator import cache

    cache.clear_cache()
    first = make_request(alice, tiny_version)
    second = make_request(alice, tiny_version, seed=9)
    generation_run(request_id=first.pk, worker="test")
    generation_run(request_id=second.pk, worker="test")
    assert cache.cached_count() == 1
    statuses = GenerationRequest.objects.values_list("status", flat=True)
    assert set(statuses) == {Status.SUCCEEDED}


def test_it_throttles_progress_writes(alice, tiny_version, no_broker, settings):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from xrayweb.generations.runner import ProgressWriter

    settings.XRAY_PROGRESS_INTERVAL_S = 3600
    request = make_request(alice, tiny_version, steps=20)
    services.generation_request_claim(request_id=request.pk, worker="test")
    writer = ProgressWriter(request.pk)
    with CaptureQueriesContext(connection) as queries:
        for step in range(1, 21):
            writer(step, 20)
    request.refresh_from_db()
    assert len(queries) == 2  # the first step, then the last one
    assert request.progress_step == 20
