"""A model file is checked against its recorded sha256 before every load: a file
changed in storage or in a worker's cache fails the job, naming the file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from django.core.files.storage import default_storage
from safetensors.torch import save_file

from tests.generations.test_runner import make_request
from xrayweb.generations import model_files
from xrayweb.generations.models import ModelKind, ModelVersion
from xrayweb.generations.runner import generation_run
from xrayweb.jobs.models import Status

PLANTED = b"not the adapter that was trained"


@pytest.fixture
def no_broker(monkeypatch):
    monkeypatch.setattr("worker.app.app.send_task", lambda *a, **k: None)


@pytest.fixture
def adapters_loaded(monkeypatch) -> list[Path]:
    """Adapter files handed to the loader (the real one runs too)."""
    from xrayweb.generations import runner

    loaded: list[Path] = []
    real = runner.ensure_adapter

    def recording(pipe, path, sha256):
        loaded.append(path)
        return real(pipe, path, sha256)

    monkeypatch.setattr(runner, "ensure_adapter", recording)
    return loaded


@pytest.fixture
def lora_version(tmp_path: Path, tiny_version: ModelVersion) -> ModelVersion:
    adapter = tmp_path / "pytorch_lora_weights.safetensors"
    save_file({"unused": torch.zeros(2)}, str(adapter))
    key, sha256 = model_files.lora_store(adapter, "gray-lora")
    return ModelVersion.objects.create(
        name="gray-lora",
        kind=ModelKind.LORA,
        source=tiny_version.source,
        lora_key=key,
        lora_sha256=sha256,
    )


def failed_job(user, version: ModelVersion):
    request = make_request(user, version, steps=2)
    generation_run(request_id=request.pk)
    request.refresh_from_db()
    assert request.status == Status.FAILED
    return request


def test_it_refuses_an_adapter_changed_in_storage(
    alice, lora_version, no_broker, adapters_loaded
):
    Path(default_storage.path(lora_version.lora_key)).write_bytes(PLANTED)

    request = failed_job(alice, lora_version)

    assert request.error == model_files.TAMPERED.format(
        what="LoRA file",
        key=lora_version.lora_key,
        got=hashlib.sha256(PLANTED).hexdigest(),
        want=lora_version.lora_sha256,
    )
    assert adapters_loaded == []


def test_it_refuses_an_adapter_changed_in_the_workers_cache(
    alice, lora_version, no_broker, adapters_loaded
):
    cached = model_files.lora_local(lora_version.lora_key, lora_version.lora_sha256)
    cached.write_bytes(PLANTED)

    request = failed_job(alice, lora_version)

    assert lora_version.lora_key in request.error
    assert "it was not loaded" in request.error
    assert adapters_loaded == []
    assert not cached.exists()  # fetched again, and checked again, next time


@pytest.fixture
def folder_version(tiny_model_dir: Path) -> ModelVersion:
    """A full fine-tune as training registers it: a model folder in storage."""
    prefix, sha256 = model_files.folder_store(tiny_model_dir, "gray-full")
    return ModelVersion.objects.create(
        name="gray-full",
        kind=ModelKind.MINI,
        source=prefix,
        files_key=prefix,
        files_sha256=sha256,
    )


def stored_weights(version: ModelVersion) -> Path:
    """The UNet weights of a stored model folder, as a path in media storage."""
    key = f"{version.files_key}unet/diffusion_pytorch_model.safetensors"
    return Path(default_storage.path(key))


def test_it_loads_a_stored_model_folder_that_matches_its_hash(
    alice, folder_version, no_broker
):
    request = make_request(alice, folder_version, steps=2)

    generation_run(request_id=request.pk)

    request.refresh_from_db()
    assert request.status == Status.SUCCEEDED, request.error


def test_it_refuses_a_model_folder_changed_in_storage(alice, folder_version, no_broker):
    stored_weights(folder_version).write_bytes(PLANTED)

    request = failed_job(alice, folder_version)

    assert request.error.startswith(f"Model folder {folder_version.files_key!r}")
    assert f"not the {folder_version.files_sha256} recorded" in request.error
    assert "it was not loaded" in request.error


def test_it_refuses_a_model_folder_changed_in_the_workers_cache(
    alice, folder_version, no_broker
):
    cached = model_files.folder_local(
        folder_version.files_key, folder_version.files_sha256
    )
    (cached / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(PLANTED)

    request = failed_job(alice, folder_version)

    assert request.error.startswith(f"Model folder {folder_version.files_key!r}")
    assert "it was not loaded" in request.error
    assert not cached.exists()  # fetched again, and checked again, next time
