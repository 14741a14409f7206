"""Bounded uploads, streamed files kept out of caches, and a lost file answering
404 rather than 500."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from generator.sampling import GenerationParams
from xrayweb.cases.services import UPLOADS
from xrayweb.generations import services
from xrayweb.generations.models import GenerationImage
from xrayweb.middleware import UPLOAD_TOO_LARGE


@pytest.fixture
def stored_image(alice, tiny_version, sent) -> GenerationImage:
    request = services.generation_request_create(
        user=alice,
        params=GenerationParams(prompt="Clear lungs.", seed=1, steps=2),
        model_version=tiny_version,
    )
    image = GenerationImage(request=request, index=0, seed=1)
    image.image.name = default_storage.save(
        f"generations/{request.pk}/1/0.png", ContentFile(b"\x89PNG not really")
    )
    image.save()
    return image


def image_urls(image: GenerationImage) -> list[str]:
    return [
        reverse("result_image", args=[image.pk, "image"]),
        f"/api/v1/generations/{image.request_id}/images/0.png",
    ]


def test_it_serves_generated_images_no_store(client, alice, stored_image):
    client.force_login(alice)

    answers = [client.get(url) for url in image_urls(stored_image)]

    assert [a.status_code for a in answers] == [200, 200]
    assert [a["Cache-Control"] for a in answers] == ["no-store", "no-store"]


def test_it_answers_404_for_an_image_storage_lost(client, alice, stored_image):
    default_storage.delete(stored_image.image.name)
    client.force_login(alice)

    answers = [client.get(url) for url in image_urls(stored_image)]

    assert [a.status_code for a in answers] == [404, 404]
    assert answers[1].json()["errors"][0]["code"] == "not_found"


def test_it_refuses_an_upload_over_the_limit_before_storing_it(client, staff, settings):
    settings.XRAY_UPLOAD_MAX_BYTES = 4096
    client.force_login(staff)
    url = reverse("admin:cases_importrun_start")
    big = SimpleUploadedFile("reports.tgz", b"x" * 8192)

    answer = client.post(url, {"reports_upload": big})

    assert answer.status_code == 413
    assert answer.content.decode().startswith("Uploads are limited to 0 MiB")
    assert not default_storage.exists(UPLOADS)  # nothing was spooled or stored


def test_it_lets_an_upload_under_the_limit_reach_the_form(client, staff, settings):
    settings.XRAY_UPLOAD_MAX_BYTES = 4096
    client.force_login(staff)
    small = SimpleUploadedFile("reports.tgz", b"x" * 100)

    answer = client.post(
        reverse("admin:cases_importrun_start"), {"reports_upload": small}
    )

    assert answer.status_code != 413
    assert UPLOAD_TOO_LARGE[:20] not in answer.content.decode()


def test_it_answers_404_for_a_lost_case_image_and_a_zip_of_lost_images(
    client, alice, stored_image, case_with_image
):
    derivative = case_with_image.frontal_image()
    default_storage.delete(derivative.derivative.name)
    default_storage.delete(stored_image.image.name)
    client.force_login(alice)

    case_page = client.get(reverse("case_image", args=[derivative.pk, "derivative"]))
    archive = client.get(reverse("request_zip", args=[stored_image.request_id]))

    assert (case_page.status_code, archive.status_code) == (404, 404)


def test_it_keeps_every_streamed_file_out_of_shared_caches(
    client, alice, stored_image, case_with_image
):
    derivative = case_with_image.frontal_image()
    client.force_login(alice)

    case_page = client.get(reverse("case_image", args=[derivative.pk, "derivative"]))
    archive = client.get(reverse("request_zip", args=[stored_image.request_id]))

    assert case_page["Cache-Control"] == "no-store"
    assert archive["Cache-Control"] == "private, no-store"
