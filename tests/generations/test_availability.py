"""Model availability comes from what live workers reported, not the web's disk."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from tests.generations.conftest import form_data
from xrayweb.generations import availability, services
from xrayweb.generations.models import ModelKind, ModelVersion
from xrayweb.jobs import presence
from xrayweb.jobs.models import WorkerPresence


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def lora_version(db, tiny_version) -> ModelVersion:
    return ModelVersion.objects.create(
        name="gray-lora",
        kind=ModelKind.LORA,
        source=tiny_version.source,
        lora_key="models/gray-lora/abc/pytorch_lora_weights.safetensors",
        lora_sha256="abc",
    )


def report_gpu_worker(*versions: ModelVersion, name: str = "gpu@host-a") -> None:
    presence.report(name, [settings.QUEUE_GPU], [v.pk for v in versions])


def test_nothing_is_refused_while_no_generation_worker_is_live(
    alice_client, tiny_version, lora_version
):
    presence.report("cpu@host-a", [settings.QUEUE_CPU], [])

    assert availability.availability() is None
    response = alice_client.post("/", form_data(lora_version))
    assert response.status_code == 302  # queued: it waits for a worker


def test_a_version_no_live_worker_can_load_is_refused_naming_it(
    alice_client, alice, tiny_version, lora_version
):
    report_gpu_worker(tiny_version)

    page = alice_client.get("/")
    response = alice_client.post("/", form_data(lora_version))

    assert "gray-lora (unavailable: no live worker can load it)" in page.text
    assert response.status_code == 200
    error = response.context["form"].errors["model_version"][0]
    assert error == (
        "Model version 'gray-lora' cannot run now: no live worker can load it. "
        "Pick another one."
    )
    assert not alice.generationrequest_set.exists()
    assert alice_client.post("/", form_data(tiny_version)).status_code == 302


def test_a_worker_that_stopped_reporting_does_not_count(tiny_version, lora_version):
    report_gpu_worker(tiny_version, lora_version)
    stale = timezone.now() - timedelta(seconds=4 * settings.XRAY_WORKER_REPORT_S)
    WorkerPresence.objects.update(seen_at=stale)

    assert availability.availability() is None


def test_the_default_is_the_best_model_a_live_worker_can_load(db, settings, tmp_path):
    mini = ModelVersion.objects.create(
        name="mini-cxr", kind=ModelKind.MINI, source=str(tmp_path / "not-here")
    )
    tiny = ModelVersion.objects.create(
        name="tiny-untrained", kind=ModelKind.TINY, source=str(tmp_path / "tiny")
    )
    settings.XRAY_MINI_MODEL_DIR = tmp_path / "not-on-the-web-host"

    report_gpu_worker(tiny)
    assert services.model_version_default() == tiny
    # The web host lacks the mini model's folder; a worker that has it decides.
    report_gpu_worker(mini, tiny, name="gpu@host-b")
    assert services.model_version_default() == mini
