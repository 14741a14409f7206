"""Workers report themselves: their queues and the model versions this host can
load, and sign off when they stop."""

from __future__ import annotations

import signal
from pathlib import Path

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


def test_jobs_compute_at_a_lower_priority_than_the_worker_that_fetches_them(
    platform: Platform,
):
    """The pool child runs at XRAY_WORKER_NICE, so pages on a shared host answer
    first; the main process (broker, presence) keeps the priority it started at."""
    main = platform.start_worker("control", XRAY_WORKER_NICE="7")

    child = wait_until(lambda: _children(main.pid), 30, "the worker's pool child")[0]

    assert (_niceness(main.pid), _niceness(child)) == (0, 7)


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    found = []
    for task in tasks.iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _niceness(pid: int) -> int:
    """Field 19 of /proc/<pid>/stat (after the parenthesised command name)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])
