"""The job runner in-process: images, scores, progress and readable failures."""

from __future__ import annotations

import pytest
from PIL import Image

from generator.metrics import compare
from generator.sampling import GenerationParams
from xrayweb.generations import availability, model_files, services
from xrayweb.generations.models import GenerationRequest, ModelVersion
from xrayweb.generations.runner import generation_run
from xrayweb.jobs.models import Status
from xrayweb.jobs.runtime import Attempt


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
    generation_run(request_id=request.pk)
    request.refresh_from_db()
    assert request.status == Status.SUCCEEDED, request.error
    assert request.progress_step == request.steps
    assert set(request.timings) == {
        "text_encoding_s",
        "denoising_s",
        "decoding_s",
        "storage_s",  # reading the case's image and writing the PNGs
    }
    images = list(request.images.order_by("index"))
    assert [image.seed for image in images] == [3, 4]
    for image in images:
        with image.image.open("rb") as handle:
            png = Image.open(handle)
            png.load()
        assert png.mode == "L"
        assert png.size == (256, 256)
        assert png.text["Synthetic"] == "true"
        # The stored scores are those of the stored PNG against the case's image.
        with image.reference.derivative.open("rb") as handle:
            reference = Image.open(handle).convert("L")
        expected = compare(png, reference)
        assert image.ssim == pytest.approx(expected.ssim)
        assert image.psnr == pytest.approx(expected.psnr)
        assert image.reference == case_with_image.frontal_image()
        assert image.diff_map


def test_it_skips_scores_for_free_text(alice, tiny_version, no_broker):
    request = make_request(alice, tiny_version)
    generation_run(request_id=request.pk)
    image = request.images.get()
    assert (image.ssim, image.psnr, image.diff_map.name) == (None, None, "")


def test_it_fails_with_a_readable_message_when_the_model_is_missing(
    alice, no_broker, tmp_path
):
    missing = ModelVersion.objects.create(
        name="gone", kind="base", source=str(tmp_path / "nowhere")
    )
    request = make_request(alice, missing)
    generation_run(request_id=request.pk)
    request.refresh_from_db()
    assert request.status == Status.FAILED
    assert request.error == model_files.UNAVAILABLE.format(name="gone")
    assert str(tmp_path) not in request.error  # the host's path is in the log only


def test_it_refuses_a_local_model_outside_the_workers_model_roots(
    alice, no_broker, settings, tmp_path, tiny_model_dir, caplog
):
    settings.XRAY_MODEL_ROOTS = [tmp_path / "models"]
    outside = ModelVersion.objects.create(
        name="outside", kind="base", source=str(tiny_model_dir)
    )
    request = make_request(alice, outside)

    generation_run(request_id=request.pk)

    request.refresh_from_db()
    assert request.status == Status.FAILED
    assert request.error == model_files.SOURCE_REFUSED.format(name="outside")
    assert str(tiny_model_dir) in caplog.text  # which folder, for the operator


def test_it_refuses_a_link_under_a_model_root_that_leads_outside(
    alice, no_broker, settings, tmp_path, tiny_model_dir
):
    root = tmp_path / "models"
    root.mkdir()
    (root / "sd").symlink_to(tiny_model_dir, target_is_directory=True)
    settings.XRAY_MODEL_ROOTS = [root]
    linked = ModelVersion.objects.create(
        name="linked", kind="base", source=str(root / "sd")
    )
    request = make_request(alice, linked)

    generation_run(request_id=request.pk)

    request.refresh_from_db()
    assert request.status == Status.FAILED
    assert request.error == model_files.SOURCE_REFUSED.format(name="linked")


def test_a_worker_does_not_offer_a_model_outside_its_roots(
    db, settings, tmp_path, tiny_model_dir
):
    version = ModelVersion.objects.create(
        name="elsewhere", kind="base", source=str(tiny_model_dir)
    )
    offered = availability.loadable_here(version)
    settings.XRAY_MODEL_ROOTS = [tmp_path / "models"]

    assert offered
    assert not availability.loadable_here(version)


def test_it_records_what_was_cut_from_a_long_prompt(alice, tiny_version, no_broker):
    long_prompt = "The cardiomediastinal silhouette is within normal limits. " * 12
    request = make_request(alice, tiny_version, prompt=long_prompt.strip())
    generation_run(request_id=request.pk)
    request.refresh_from_db()
    assert request.prompt_dropped
    assert request.prompt_used
    assert long_prompt.startswith(request.prompt_used)
    assert len(request.prompt_used) < len(long_prompt.strip())


def test_it_loads_the_pipeline_once_per_process(alice, tiny_version, no_broker):
    from generator import cache

    cache.clear_cache()
    first = make_request(alice, tiny_version)
    second = make_request(alice, tiny_version, seed=9)
    generation_run(request_id=first.pk)
    generation_run(request_id=second.pk)
    assert cache.cached_count() == 1
    statuses = GenerationRequest.objects.values_list("status", flat=True)
    assert set(statuses) == {Status.SUCCEEDED}


def test_it_throttles_progress_writes(alice, tiny_version, no_broker, settings):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from xrayweb.generations.runner import ProgressWriter

    settings.XRAY_PROGRESS_INTERVAL_S = 3600
    request = make_request(alice, tiny_version, steps=20)
    attempt = Attempt.claim(GenerationRequest, request.pk)
    writer = ProgressWriter(attempt)
    with CaptureQueriesContext(connection) as queries:
        for step in range(1, 21):
            assert writer(step, 20) is True
    request.refresh_from_db()
    # Only the last step is written (the interval counts from the claim): one
    # UPDATE that renews the lease and reads the cancel flag in its WHERE clause.
    assert len(queries) == 1
    assert all(q["sql"].startswith("UPDATE") for q in queries.captured_queries)
    assert request.progress_step == 20
