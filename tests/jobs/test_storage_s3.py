"""Files in S3-compatible object storage (SeaweedFS on loopback): a worker with empty
folders of its own writes to the bucket, the web streams what it finds there to the
owner only, and nothing reaches the worker's or the web's local disk."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest

from generator.sampling import GenerationParams
from tests.jobs.conftest import Platform, login, wait_until
from xrayweb.generations import services
from xrayweb.generations.models import GenerationRequest
from xrayweb.jobs.models import TERMINAL_STATUSES, Status

pytestmark = [pytest.mark.slow]


def files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


def test_a_generation_on_a_worker_of_another_host_is_stored_in_the_bucket(
    platform: Platform, s3_storage, s3_server, alice, bob, tiny_version, tmp_path
):
    bucket = s3_storage["AWS_STORAGE_BUCKET_NAME"]
    worker_media, web_media = tmp_path / "worker-media", tmp_path / "web-media"
    platform.start_worker(
        "gpu",
        **s3_storage,
        XRAY_MEDIA_ROOT=str(worker_media),
        XRAY_MODEL_CACHE=str(tmp_path / "worker-cache"),
    )
    web = platform.start_web(**s3_storage, XRAY_MEDIA_ROOT=str(web_media))
    params = GenerationParams(prompt="Clear lungs.", seed=3, steps=2, num_images=2)
    job = services.generation_request_create(
        user=alice, params=params, model_version=tiny_version
    )
    wait_until(
        lambda: GenerationRequest.objects.get(pk=job.pk).status in TERMINAL_STATUSES,
        180,
        "the generation",
    )

    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED, job.error
    images = list(job.images.order_by("index"))
    assert s3_server.keys(bucket, "generations/") == {i.image.name for i in images}
    assert files_under(worker_media) == []
    assert files_under(web_media) == []
    stored = s3_server.client().get_object(Bucket=bucket, Key=images[0].image.name)
    owner = login(web, "alice", "alice-pass-123")
    served = owner.get(f"{web}/media/results/{images[0].pk}/image.png", timeout=30)
    assert served.status_code == 200
    assert served.content == stored["Body"].read()
    assert served.headers["Content-Type"] == "image/png"
    stranger = login(web, "bob", "bob-pass-123")
    refused = stranger.get(f"{web}/media/results/{images[0].pk}/image.png", timeout=30)
    assert refused.status_code == 404


def test_the_bucket_is_private(s3_storage, s3_server, alice, tiny_version):
    """An object of the platform cannot be read without credentials."""
    import requests
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    key = default_storage.save("generations/0/1/0.png", ContentFile(b"\x89PNG"))
    bucket = s3_storage["AWS_STORAGE_BUCKET_NAME"]

    anonymous = requests.get(f"{s3_server.endpoint}/{bucket}/{key}", timeout=10)

    assert anonymous.status_code == 403
    presigned = default_storage.url(key)  # signed, short-lived
    assert "X-Amz-Expires=300" in presigned
    assert requests.get(presigned, timeout=10).content == b"\x89PNG"


def test_a_lora_trained_on_one_worker_serves_another_and_a_changed_file_is_refused(
    platform: Platform, s3_storage, s3_server, staff, alice, tiny_version, tmp_path
):
    from tests.training.conftest import RUN_CONFIG, make_case
    from tests.training.data import SHADES
    from xrayweb.training import services as training_services
    from xrayweb.training.models import TrainingRun

    bucket = s3_storage["AWS_STORAGE_BUCKET_NAME"]
    for i, caption in enumerate(list(SHADES) * 2):  # case images go to the bucket
        make_case(f"T{i}", caption, SHADES[caption])

    def host(name: str) -> dict[str, str]:
        """A worker's own empty folders, as on a host of its own."""
        return {
            **s3_storage,
            "XRAY_MEDIA_ROOT": str(tmp_path / name / "media"),
            "XRAY_MODEL_CACHE": str(tmp_path / name / "cache"),
        }

    platform.start_worker("train", **host("trainer"))
    run = training_services.training_run_create(
        user=staff, name="gray-lora", base=tiny_version, config=RUN_CONFIG
    )
    wait_until(
        lambda: TrainingRun.objects.get(pk=run.pk).status in TERMINAL_STATUSES,
        300,
        "the training run",
    )
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED, run.error
    version = run.model_version
    assert version.lora_key in s3_server.keys(bucket, "models/")

    platform.start_worker("gpu", **host("gpu-a"))
    params = GenerationParams(prompt="dark chest", seed=1, steps=2)
    job = services.generation_request_create(
        user=alice, params=params, model_version=version
    )
    wait_until(
        lambda: GenerationRequest.objects.get(pk=job.pk).status in TERMINAL_STATUSES,
        180,
        "the LoRA generation",
    )
    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED, job.error
    cached = tmp_path / "gpu-a" / "cache" / version.lora_sha256
    assert [path.name for path in cached.iterdir()] == [version.lora_key.split("/")[-1]]

    # The file is changed in the bucket: a worker with an empty cache refuses it.
    s3_server.client().put_object(Bucket=bucket, Key=version.lora_key, Body=b"evil")
    platform.kill("worker-gpu")
    platform.start_worker("gpu", **host("gpu-b"))
    refused = services.generation_request_create(
        user=alice, params=params, model_version=version
    )
    wait_until(
        lambda: (
            GenerationRequest.objects.get(pk=refused.pk).status in TERMINAL_STATUSES
        ),
        180,
        "the refused generation",
    )
    refused.refresh_from_db()
    assert refused.status == Status.FAILED
    assert version.lora_key in refused.error
    assert version.lora_sha256 in refused.error
    assert "was not loaded" in refused.error
    assert not refused.images.exists()


def test_an_evaluation_split_over_two_workers_with_separate_folders(
    platform: Platform, s3_storage, s3_server, staff, tiny_version, tmp_path
):
    from tests.training.conftest import make_case
    from xrayweb.cases.models import Split
    from xrayweb.training import services as training_services
    from xrayweb.training.models import EvaluationRun

    bucket = s3_storage["AWS_STORAGE_BUCKET_NAME"]
    for i in range(4):
        make_case(f"X{i}", "dark chest", 40 + 40 * i, split=Split.TEST)
    for index in (1, 2):
        platform.start_worker(
            "train",
            index=index,
            **s3_storage,
            XRAY_MEDIA_ROOT=str(tmp_path / f"host{index}" / "media"),
            XRAY_MODEL_CACHE=str(tmp_path / f"host{index}" / "cache"),
        )
    evaluation = training_services.evaluation_create(
        user=staff,
        model_version=tiny_version,
        cases=4,
        chunk_size=1,
        params={"steps": 20, "width": 64, "height": 64},
        with_fid=False,
    )
    wait_until(
        lambda: EvaluationRun.objects.get(pk=evaluation.pk).status in TERMINAL_STATUSES,
        300,
        "the evaluation",
    )

    evaluation.refresh_from_db()
    assert evaluation.status == Status.SUCCEEDED, evaluation.error
    chunks = list(evaluation.chunks.all())
    assert len({chunk.worker for chunk in chunks}) == 2, "one worker took every chunk"
    images = {score["image"] for chunk in chunks for score in chunk.scores}
    assert len(images) == 4
    assert images <= s3_server.keys(bucket, "evaluation-chunks/")
    assert evaluation.results["cases"] == 4
    assert evaluation.histogram.name in s3_server.keys(bucket, "evaluations/")
    for index in (1, 2):
        assert files_under(tmp_path / f"host{index}" / "media") == []


def test_uploaded_archives_are_imported_by_a_worker_on_another_host(
    platform: Platform, s3_storage, s3_server, client, staff, tmp_path
):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.urls import reverse

    from tests.cases.test_admin import images_archive, reports_archive
    from xrayweb.cases.models import Case, CaseImage, ImportRun

    bucket = s3_storage["AWS_STORAGE_BUCKET_NAME"]
    worker_media = tmp_path / "worker-media"
    platform.start_worker("cpu", **s3_storage, XRAY_MEDIA_ROOT=str(worker_media))
    client.force_login(staff)
    uploads = {
        "reports_upload": SimpleUploadedFile(
            "NLMCXR_reports.tgz", reports_archive(tmp_path).read_bytes()
        ),
        "images_upload": SimpleUploadedFile(
            "NLMCXR_png.tgz", images_archive(tmp_path).read_bytes()
        ),
    }
    client.post(reverse("admin:cases_importrun_start"), {**uploads, "seed": 1})
    run = ImportRun.objects.get()
    wait_until(
        lambda: ImportRun.objects.get(pk=run.pk).status in TERMINAL_STATUSES,
        120,
        "the import",
    )

    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED, run.error
    assert {run.options["reports_key"], run.options["images_key"]} <= s3_server.keys(
        bucket, "imports/uploads/"
    )
    assert Case.objects.count() == 2
    derivatives = set(CaseImage.objects.values_list("derivative", flat=True))
    assert derivatives
    assert derivatives <= s3_server.keys(bucket, "cases/")
    assert files_under(worker_media) == []


def test_media_to_storage_moves_old_media_and_host_paths_once(
    s3_storage, s3_server, alice, tiny_version, tmp_path
):
    from django.core.management import call_command

    from xrayweb.generations.models import GenerationImage, ModelKind, ModelVersion

    bucket = s3_storage["AWS_STORAGE_BUCKET_NAME"]
    old = tmp_path / "old-media"
    png = old / "generations" / "7" / "1" / "0.png"
    png.parent.mkdir(parents=True)
    png.write_bytes(b"\x89PNG old image")
    run_folder = old / "training" / "run-3"  # a run's folder before storage
    checkpoint = run_folder / "checkpoints" / "checkpoint-2" / "state.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"old checkpoint")
    lora = run_folder / "pytorch_lora_weights.safetensors"
    lora.write_bytes(b"old lora bytes")
    job = services.generation_request_create(
        user=alice,
        params=GenerationParams(prompt="Clear lungs.", seed=1, steps=2),
        model_version=tiny_version,
    )
    GenerationImage.objects.create(
        request=job, index=0, seed=1, image="generations/7/1/0.png"
    )
    version = ModelVersion.objects.create(
        name="old-lora", kind=ModelKind.LORA, source="tiny", lora_key=str(lora)
    )

    call_command("media_to_storage", "--from", str(old), stdout=(first := StringIO()))
    call_command("media_to_storage", "--from", str(old), stdout=(second := StringIO()))

    keys = s3_server.keys(bucket)
    assert "generations/7/1/0.png" in keys
    assert "training/3/checkpoints/checkpoint-2/state.pt" in keys  # the new prefix
    version.refresh_from_db()
    assert version.lora_key.startswith(f"models/old-lora/{version.lora_sha256}/")
    assert version.lora_key in keys
    assert "3 file(s) copied" in first.getvalue()
    assert "1 row(s) rewritten" in first.getvalue()
    assert "0 file(s) copied, 3 already in storage, 0 row(s) rewritten" in (
        second.getvalue()
    )
