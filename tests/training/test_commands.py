"""python manage.py train_lora: the same code as the task, in-process, with progress."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command

from tests.training.conftest import RUN_CONFIG
from xrayweb.generations.models import ModelKind, ModelVersion
from xrayweb.training.models import TrainingRun


def test_it_trains_and_registers_from_the_command_line(tiny_version, train_cases):
    out = io.StringIO()
    call_command(
        "train_lora",
        "--name=cli-lora",
        "--base=tiny-untrained",
        f"--config={json.dumps(RUN_CONFIG)}",
        stdout=out,
    )

    assert "step 4/4 epoch 1" in out.getvalue()
    version = ModelVersion.objects.get(name="cli-lora")
    assert version.kind == ModelKind.LORA
    assert TrainingRun.objects.get().model_version == version


def test_it_rejects_bad_config_naming_the_value(tiny_version, db):
    with pytest.raises(CommandError, match="epochs must be greater than 0, got 0"):
        call_command("train_lora", "--name=x", '--config={"epochs": 0}')
    with pytest.raises(CommandError, match="unknown"):
        call_command("train_lora", "--name=x", '--config={"unknown": 1}')
    assert not TrainingRun.objects.exists()
