"""A request (form or API) or the site default can leave the prompt out of the PNG's
metadata; the synthetic mark and the parameters to remake it from its row stay, and
no host path is written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from xrayweb.generations import services
from xrayweb.generations.models import GenerationRequest
from xrayweb.generations.runner import generation_run
from xrayweb.jobs.models import Status

PROMPT = "Right lower lobe opacity in a 54 year old."


@pytest.fixture
def no_broker(monkeypatch):
    monkeypatch.setattr("worker.app.app.send_task", lambda *a, **k: None)


def submitted(client, user, version, **fields) -> GenerationRequest:
    client.force_login(user)
    body = {"prompt": PROMPT, "model_version": version.pk, "steps": 2, **fields}
    answer = client.post("/api/v1/generations/", body, content_type="application/json")
    assert answer.status_code == 201, answer.content
    return GenerationRequest.objects.get(pk=answer.json()["id"])


def png_text(request: GenerationRequest) -> dict[str, str]:
    generation_run(request_id=request.pk)
    request.refresh_from_db()
    assert request.status == Status.SUCCEEDED, request.error
    with request.images.get().image.open("rb") as handle:
        png = Image.open(handle)
        png.load()
    return dict(png.text)


def test_it_leaves_the_prompt_out_when_the_request_asks(
    client, alice, tiny_version, no_broker
):
    request = submitted(client, alice, tiny_version, prompt_in_png=False)

    text = png_text(request)

    parameters = json.loads(text["Parameters"])
    assert PROMPT not in json.dumps(text)
    assert "prompt" not in parameters
    assert text["Synthetic"] == "true"
    assert "Not for diagnosis" in text["Notice"]
    assert parameters["prompt_withheld"] is True
    assert parameters["request"] == request.pk
    assert (parameters["seed"], parameters["steps"]) == (request.seed, 2)
    assert request.prompt == PROMPT  # the row keeps what remakes the image


def test_it_follows_the_site_default_and_a_rerun_keeps_the_choice(
    client, alice, tiny_version, no_broker, settings
):
    settings.XRAY_PROMPT_IN_PNG = False
    request = submitted(client, alice, tiny_version)

    rerun = services.generation_request_rerun(request=request, user=alice)

    assert (request.prompt_in_png, rerun.prompt_in_png) == (False, False)
    assert "prompt" not in json.loads(png_text(rerun)["Parameters"])


def test_it_keeps_the_prompt_by_default_and_names_no_host_path(
    client, alice, tiny_version, no_broker
):
    request = submitted(client, alice, tiny_version)

    parameters = json.loads(png_text(request)["Parameters"])

    assert parameters["prompt"] == PROMPT
    assert parameters["base"] == Path(tiny_version.source).name
    assert tiny_version.source not in json.dumps(parameters)


@pytest.mark.parametrize("default", [True, False])
def test_the_form_offers_the_choice_starting_at_the_site_default(
    client, alice, tiny_version, settings, default: bool
):
    settings.XRAY_PROMPT_IN_PNG = default
    client.force_login(alice)

    page = client.get("/").content.decode()

    box = re.search(r'<input[^>]*name="prompt_in_png"[^>]*>', page).group(0)
    assert ("checked" in box) is default


def test_pages_name_a_local_model_by_its_version_not_its_host_path(
    client, alice, tiny_version, no_broker
):
    request = submitted(client, alice, tiny_version)
    generation_run(request_id=request.pk)

    pages = [
        client.get(url).content.decode()
        for url in ("/", f"/requests/{request.pk}/", "/history/")
    ]

    folder = str(Path(tiny_version.source).parent)
    assert tiny_version.label in pages[1]  # the request's page names its model
    assert [page for page in pages if folder in page] == []
