"""The periodic and on-start reconcile re-sends every kind of job a broker lost."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from worker.tasks import reconcile_all
from xrayweb.cases.models import ImportRun
from xrayweb.training.models import TrainingRun


@pytest.fixture
def sent(monkeypatch) -> list[tuple[str, int, str]]:
    messages: list[tuple[str, int, str]] = []
    monkeypatch.setattr(
        "worker.app.app.send_task",
        lambda name, args, queue: messages.append((name, args[0], queue)),
    )
    return messages


@pytest.fixture
def training_run(staff, tiny_version) -> TrainingRun:
    return TrainingRun.objects.create(
        name="lora-1", created_by=staff, base=tiny_version
    )


def test_it_resends_a_queued_training_run_and_import(sent, staff, training_run):
    run = ImportRun.objects.create(created_by=staff, options={"reports": "/x.tgz"})
    assert reconcile_all(0) == 2
    assert sorted(sent) == [
        ("imports.run", run.pk, "cpu"),
        ("training.run", training_run.pk, "gpu"),
    ]


def test_it_leaves_recently_sent_training_runs_alone(sent, training_run):
    TrainingRun.objects.filter(pk=training_run.pk).update(enqueued_at=timezone.now())
    assert reconcile_all(300) == 0
    assert sent == []


def test_it_resends_a_running_training_run_whose_heartbeat_stopped(sent, training_run):
    long_ago = timezone.now() - timedelta(hours=1)
    TrainingRun.objects.filter(pk=training_run.pk).update(
        status="running", heartbeat_at=long_ago, enqueued_at=long_ago
    )
    assert reconcile_all(300) == 1
    assert sent == [("training.run", training_run.pk, "gpu")]
