"""Files in S3-compatible object storage (SeaweedFS on loopback): a worker with empty
folders of its own writes to the bucket, the web streams what it finds there to the
owner only, and nothing reaches the worker's or the web's local disk."""

from __future__ import annotations

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
