"""Pages: who may see what, form errors that name the value, history and compare."""

from __future__ import annotations

import pytest
from django.urls import reverse

from generator.sampling import GenerationParams
from tests.generations.conftest import form_data
from xrayweb.generations import services
from xrayweb.generations.models import GenerationRequest
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
