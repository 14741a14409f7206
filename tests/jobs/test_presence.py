"""Workers report themselves: their queues and the model versions this host can
load, and sign off when they stop."""

from __future__ import annotations

import signal

import pytest

from tests.jobs.conftest import Platform, wait_until
from xrayweb.generations.models import ModelKind, ModelVersion
from xrayweb.jobs.models import WorkerPresence

pytestmark = [pytest.mark.slow]


def test_a_worker_reports_what_it_can_load_and_signs_off(
    platform: Platform, tiny_version
):
    missing = ModelVersion.objects.create(
        name="lost-lora",
        kind=ModelKind.LORA,
        source=tiny_version.source,
        lora_key="models/lost-lora/0/pytorch_lora_weights.safetensors",
        lora_sha256="0",
    )
    platform.start_worker("gpu", XRAY_WORKER_REPORT_S="1")

    row = wait_until(
        lambda: WorkerPresence.objects.filter(queues=[platform.queue("gpu")]).first(),
        30,
        "the worker's report",
    )
    assert tiny_version.pk in row.model_versions
    assert missing.pk not in row.model_versions  # its file is not in storage
    platform.kill("worker-gpu", signal.SIGTERM)  # a clean stop

    assert not WorkerPresence.objects.filter(pk=row.pk).exists()
