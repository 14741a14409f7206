"""Pages: who may see what, form errors that name the value, history and compare."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.urls import reverse
from django.utils import timezone

from generator.sampling import GenerationParams
from tests.generations.conftest import form_data
from xrayweb.generations import services
from xrayweb.generations.models import GenerationImage, GenerationRequest
from xrayweb.generations.runner import generation_run
from xrayweb.jobs.models import Status


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    monkeypatch.setattr("worker.app.app.send_task", lambda *a, **k: None)


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def finished(alice, tiny_version, case_with_image) -> GenerationRequest:
    request = services.generation_request_create(
        user=alice,
        params=GenerationParams(prompt="Normal chest.", seed=11, steps=2),
        model_version=tiny_version,
        case=case_with_image,
    )
    generation_run(request_id=request.pk)
    request.refresh_from_db()
    assert request.status == Status.SUCCEEDED, request.error
    return request


@pytest.mark.parametrize("name", ["generate", "history"])
def test_it_sends_anonymous_users_to_login(client, db, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_it_sends_anonymous_users_away_from_images(client, finished):
    image = finished.images.get()
    response = client.get(reverse("result_image", args=[image.pk, "image"]))
    assert response.status_code == 302


def test_it_queues_a_request_and_redirects_to_it(alice_client, alice, tiny_version):
    response = alice_client.post(reverse("generate"), form_data(tiny_version))
    created = GenerationRequest.objects.get(user=alice)
    assert response.status_code == 302
    assert response["Location"] == reverse("request_detail", args=[created.pk])
    assert (created.seed, created.steps, created.status) == (5, 4, Status.QUEUED)


def test_it_picks_a_random_seed_when_blank(alice_client, alice, tiny_version):
    alice_client.post(reverse("generate"), form_data(tiny_version, seed=""))
    assert 0 <= GenerationRequest.objects.get(user=alice).seed < 2**32


def test_it_uses_the_case_report_when_the_prompt_is_blank(
    alice_client, alice, tiny_version, case_with_image
):
    data = form_data(tiny_version, prompt="", case=case_with_image.pk)
    alice_client.post(reverse("generate"), data)
    created = GenerationRequest.objects.get(user=alice)
    assert created.prompt == case_with_image.prompt
    assert created.case == case_with_image


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps", "0", "steps must be between 1 and 150, got 0"),
        ("width", "300", "width has to be a multiple of 8, got 300"),
        ("height", "2048", "height must be between 64 and 1024, got 2048"),
        ("prompt", "", "prompt must not be empty"),
        ("prompt", "x" * 2001, "prompt has 2001 characters; the limit is 2000"),
        ("steps", "ten", "steps must be a whole number, got 'ten'"),
        ("guidance_scale", "-1", "guidance_scale must be between 0 and 30.0, got -1.0"),
        ("num_images", "9", "num_images must be between 1 and 8, got 9"),
        ("seed", "-4", "seed must be between 0 and 4294967295, got -4"),
    ],
)
def test_it_rejects_bad_parameters_naming_the_value(
    alice_client, tiny_version, field, value, message
):
    response = alice_client.post(
        reverse("generate"), form_data(tiny_version, **{field: value})
    )
    assert response.status_code == 200
    errors = response.context["form"].errors[field]
    assert any(error.startswith(message) for error in errors), errors
    assert not GenerationRequest.objects.exists()


def test_it_shows_the_generate_page_with_case_search(alice_client, case_with_image):
    response = alice_client.get(reverse("generate"), {"q": "cardiopulmonary"})
    assert response.status_code == 200
    assert list(response.context["cases"]) == [case_with_image]
    assert b"not for diagnosis" in response.content


def test_it_prefills_a_picked_case_and_shows_its_real_image(
    alice_client, case_with_image
):
    response = alice_client.get(reverse("generate"), {"case": case_with_image.pk})
    image = case_with_image.frontal_image()
    assert response.context["case"] == case_with_image
    assert (
        reverse("case_image", args=[image.pk, "derivative"]).encode()
        in response.content
    )


def test_it_hides_other_users_requests(client, bob, finished):
    client.force_login(bob)
    image = finished.images.get()
    urls = [
        reverse("request_detail", args=[finished.pk]),
        reverse("request_status", args=[finished.pk]),
        reverse("request_compare", args=[finished.pk, 0]),
        reverse("result_image", args=[image.pk, "image"]),
        reverse("result_image", args=[image.pk, "diff_map"]),
    ]
    assert [client.get(url).status_code for url in urls] == [404] * len(urls)
    response = client.post(reverse("request_rerun", args=[finished.pk]))
    assert response.status_code == 404
    assert list(client.get(reverse("history")).context["page"]) == []


def test_it_lets_staff_see_any_image(client, staff, finished):
    client.force_login(staff)
    image = finished.images.get()
    response = client.get(reverse("result_image", args=[image.pk, "image"]))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"


def test_it_serves_the_owner_her_png(alice_client, finished):
    image = finished.images.get()
    response = alice_client.get(reverse("result_image", args=[image.pk, "image"]))
    assert response.status_code == 200
    assert b"".join(response.streaming_content).startswith(b"\x89PNG")


def test_it_shows_real_generated_and_difference_with_scores(alice_client, finished):
    image = finished.images.get()
    response = alice_client.get(reverse("request_compare", args=[finished.pk, 0]))
    content = response.content.decode()
    assert reverse("result_image", args=[image.pk, "image"]) in content
    assert reverse("result_image", args=[image.pk, "diff_map"]) in content
    assert reverse("case_image", args=[image.reference.pk, "derivative"]) in content
    assert f"{image.ssim:.4f}" in content
    assert f"{image.psnr:.2f} dB" in content
    assert "SYNTHETIC" in content
    assert reverse("request_rerun", args=[finished.pk]) in content


def test_it_lists_history_newest_first_paginated_and_filtered(
    alice_client, alice, bob, tiny_version, settings
):
    settings.XRAY_HISTORY_PAGE_SIZE = 2
    params = GenerationParams(prompt="p", steps=2)
    made = [
        services.generation_request_create(
            user=alice, params=params, model_version=tiny_version
        )
        for _ in range(3)
    ]
    services.generation_request_create(
        user=bob, params=params, model_version=tiny_version
    )
    services.generation_request_cancel(request_id=made[0].pk, user=alice)
    first = alice_client.get(reverse("history")).context["page"]
    assert [r.pk for r in first] == [made[2].pk, made[1].pk]
    assert first.newer is None
    second = alice_client.get(reverse("history"), {"before": str(first.older)})
    assert [r.pk for r in second.context["page"]] == [made[0].pk]
    assert second.context["page"].older is None
    newer = {"after": str(second.context["page"].newer)}
    back = alice_client.get(reverse("history"), newer).context["page"]
    assert [r.pk for r in back] == [made[2].pk, made[1].pk]
    bad = alice_client.get(reverse("history"), {"before": "²-1"})
    assert bad.status_code == 400
    assert "before" in bad.content.decode()
    cancelled = alice_client.get(reverse("history"), {"status": "cancelled"})
    assert [r.pk for r in cancelled.context["page"]] == [made[0].pk]


def test_it_cancels_from_the_page_and_refuses_twice(alice_client, alice, tiny_version):
    request = services.generation_request_create(
        user=alice, params=GenerationParams(prompt="p"), model_version=tiny_version
    )
    alice_client.post(reverse("request_cancel", args=[request.pk]))
    request.refresh_from_db()
    assert request.status == Status.CANCELLED
    response = alice_client.post(
        reverse("request_cancel", args=[request.pk]), follow=True
    )
    assert "it can no longer be cancelled" in response.content.decode()


def test_it_reruns_with_the_same_seed(alice_client, alice, finished):
    response = alice_client.post(reverse("request_rerun", args=[finished.pk]))
    rerun = GenerationRequest.objects.exclude(pk=finished.pk).get(user=alice)
    assert response["Location"] == reverse("request_detail", args=[rerun.pk])
    assert (rerun.seed, rerun.prompt, rerun.case) == (
        finished.seed,
        finished.prompt,
        finished.case,
    )


def test_it_labels_every_generate_field_in_words_with_help(alice_client, tiny_version):
    form = alice_client.get(reverse("generate")).context["form"]
    visible = [field for field in form if not field.is_hidden]
    assert visible
    for field in visible:
        assert field.label != field.name, field.name
        assert " " in field.label or field.label[0].isupper(), field.label
        assert field.help_text, field.name
    help_of = {field.name: field.help_text for field in visible}
    assert "2–5 suits the offline model" in help_of["guidance_scale"]
    assert "(0 to 30)" in help_of["guidance_scale"]
    assert "(1 to 150)" in help_of["steps"]


def test_it_keeps_the_parameter_name_in_a_parse_error(alice_client, tiny_version):
    response = alice_client.post(
        reverse("generate"), form_data(tiny_version, guidance_scale="lots")
    )
    errors = response.context["form"].errors["guidance_scale"]
    assert errors == ["guidance_scale must be a number, got 'lots'"]
    assert "Guidance scale" in response.content.decode()


def test_it_names_the_model_by_version_never_by_host_path(alice_client, finished):
    version = finished.model_version
    assert version.source.startswith("/")
    for name in ("request_detail", "request_compare"):
        args = [finished.pk] if name == "request_detail" else [finished.pk, 0]
        content = alice_client.get(reverse(name, args=args)).content.decode()
        assert version.source not in content
        assert "tiny-untrained" in content


def test_it_numbers_images_from_one_on_the_pages(alice_client, finished):
    content = alice_client.get(
        reverse("request_compare", args=[finished.pk, 0])
    ).content.decode()
    assert f"Image 1 of request {finished.pk}" in content
    assert "image 0" not in content.lower()


def test_it_shows_history_as_lazy_thumbnails_opening_the_comparison(
    alice_client, finished
):
    image = finished.images.get()
    response = alice_client.get(reverse("history"))
    content = response.content.decode()
    thumb = reverse("result_image", args=[image.pk, "image"])
    assert f'<img src="{thumb}"' in content
    assert 'loading="lazy"' in content
    assert reverse("request_compare", args=[finished.pk, 0]) in content
    assert reverse("history_table") in content
    table = alice_client.get(reverse("history_table"), {"status": "succeeded"})
    assert [r.pk for r in table.context["page"]] == [finished.pk]
    assert reverse("history") + "?status=succeeded" in table.content.decode()


def test_it_shows_bob_none_of_alices_thumbnails(client, bob, finished):
    client.force_login(bob)
    image = finished.images.get()
    for name in ("history", "history_table"):
        response = client.get(reverse(name))
        assert list(response.context["page"]) == []
        assert reverse("result_image", args=[image.pk, "image"]) not in (
            response.content.decode()
        )


def test_it_searches_the_history_by_prompt_text(alice_client, alice, tiny_version):
    made = {
        text: services.generation_request_create(
            user=alice,
            params=GenerationParams(prompt=text, steps=2),
            model_version=tiny_version,
        )
        for text in ("Mild Cardiomegaly.", "Clear lungs.", "Cardiomegaly, effusion.")
    }
    for name in ("history", "history_table"):
        page = alice_client.get(reverse(name), {"prompt": "cardiomegaly"}).context[
            "page"
        ]
        assert [r.pk for r in page] == [
            made["Cardiomegaly, effusion."].pk,
            made["Mild Cardiomegaly."].pk,
        ]
    too_long = alice_client.get(reverse("history"), {"prompt": "x" * 201})
    assert too_long.status_code == 400
    assert "prompt" in too_long.content.decode()


def test_it_downloads_the_png_and_difference_map_as_files(alice_client, finished):
    image = finished.images.get()
    for kind, name in (
        ("image", f"request_{finished.pk}_image_1.png"),
        ("diff_map", f"request_{finished.pk}_image_1_difference.png"),
    ):
        url = reverse("result_image", args=[image.pk, kind])
        response = alice_client.get(url, {"download": "1"})
        assert response["Content-Disposition"] == f'attachment; filename="{name}"'
        with getattr(image, kind).open("rb") as stored:
            assert b"".join(response.streaming_content) == stored.read()


def test_it_zips_a_requests_images_with_their_parameters(alice_client, finished):
    image = finished.images.get()
    response = alice_client.get(reverse("request_zip", args=[finished.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    names = sorted(archive.namelist())
    stem = f"request_{finished.pk}_image_1"
    assert names == ["parameters.json", f"{stem}.png", f"{stem}_difference.png"]
    with image.image.open("rb") as stored:
        assert archive.read(f"{stem}.png") == stored.read()
    parameters = json.loads(archive.read("parameters.json"))
    assert (parameters["seed"], parameters["steps"]) == (finished.seed, finished.steps)
    assert parameters["prompt"] == finished.prompt
    assert parameters["model"]["name"] == "tiny-untrained"
    assert parameters["images"][0]["ssim"] == image.ssim
    assert finished.model_version.source not in archive.read("parameters.json").decode()


def test_it_offers_downloads_on_the_detail_and_comparison_pages(alice_client, finished):
    image = finished.images.get()
    zip_url = reverse("request_zip", args=[finished.pk])
    png_url = reverse("result_image", args=[image.pk, "image"]) + "?download=1"
    diff_url = reverse("result_image", args=[image.pk, "diff_map"]) + "?download=1"
    for url in (
        reverse("request_detail", args=[finished.pk]),
        reverse("request_compare", args=[finished.pk, 0]),
    ):
        content = alice_client.get(url).content.decode()
        for link in (zip_url, png_url, diff_url):
            assert link in content, (url, link)


def test_it_hides_downloads_and_delete_from_other_users(client, bob, staff, finished):
    image = finished.images.get()
    client.force_login(bob)
    urls = [
        reverse("request_zip", args=[finished.pk]),
        reverse("result_image", args=[image.pk, "image"]) + "?download=1",
        reverse("request_delete", args=[finished.pk]),
    ]
    assert [client.get(url).status_code for url in urls] == [404] * len(urls)
    deleting = client.post(reverse("request_delete", args=[finished.pk]))
    assert deleting.status_code == 404
    client.force_login(staff)  # staff may look, but delete only their own
    assert client.get(urls[0]).status_code == 200
    staff_delete = client.post(reverse("request_delete", args=[finished.pk]))
    assert staff_delete.status_code == 404
    assert GenerationRequest.objects.filter(pk=finished.pk).exists()


def test_it_deletes_a_request_with_its_files(
    alice_client, finished, django_capture_on_commit_callbacks
):
    image = finished.images.get()
    keys = [image.image.name, image.diff_map.name]
    assert all(default_storage.exists(key) for key in keys)
    confirm = alice_client.get(reverse("request_delete", args=[finished.pk]))
    assert f"Delete request {finished.pk}?" in confirm.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post(
            reverse("request_delete", args=[finished.pk]), follow=True
        )
    assert f"Request {finished.pk} and its images are deleted." in (
        response.content.decode()
    )
    assert not GenerationRequest.objects.filter(pk=finished.pk).exists()
    assert not GenerationImage.objects.filter(pk=image.pk).exists()
    assert [default_storage.exists(key) for key in keys] == [False, False]


def test_it_refuses_to_delete_a_queued_request(alice_client, alice, tiny_version):
    queued = services.generation_request_create(
        user=alice, params=GenerationParams(prompt="p"), model_version=tiny_version
    )
    response = alice_client.post(
        reverse("request_delete", args=[queued.pk]), follow=True
    )
    message = services.NOT_DELETABLE.format(id=queued.pk, status="queued")
    assert message in response.content.decode()
    assert GenerationRequest.objects.filter(pk=queued.pk).exists()


def test_it_shows_steps_eta_and_a_labelled_progress_bar_while_running(
    alice_client, alice, tiny_version
):
    request = services.generation_request_create(
        user=alice,
        params=GenerationParams(prompt="p", steps=3),
        model_version=tiny_version,
    )
    queued = alice_client.get(reverse("request_status", args=[request.pk]))
    assert "Queued: number 1 in the queue" in queued.content.decode()
    GenerationRequest.objects.filter(pk=request.pk).update(
        status=Status.RUNNING,
        started_at=timezone.now() - timedelta(seconds=100),
        progress_step=1,
    )
    content = alice_client.get(reverse("request_status", args=[request.pk])).content
    text = content.decode()
    # 100 s for 1 step, 2 steps left: about 200 s.
    assert "1 of 3 denoising steps done, about 3 min 20 s left." in text
    assert (
        '<progress max="3" value="1" aria-labelledby="generation-progress-label">'
        in text
    )
    assert 'id="generation-progress-label"' in text


def test_it_shows_how_long_a_finished_request_took(alice_client, finished):
    took = (finished.finished_at - finished.started_at).total_seconds()
    content = alice_client.get(reverse("request_detail", args=[finished.pk]))
    assert f"Succeeded after {took:.1f} s" in content.content.decode()
