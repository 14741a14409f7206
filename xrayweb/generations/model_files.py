"""Model files in Django storage, and the local copies workers load them from.

A trained LoRA file or model folder is stored once under a key that names its
content, ``models/<version>/<sha256>/...``, so workers on any host can fetch it. Each
worker keeps what it fetched in XRAY_MODEL_CACHE, one folder per sha256, and checks
the hash before anything is loaded: a file changed in the bucket or in the cache is
refused with the two hashes named, never loaded.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from generator.errors import GeneratorError
from xrayweb.jobs import files

CHUNK = 1 << 20
MANIFEST = "MANIFEST.sha256"  # "<sha256>  <relative path>" per file, sorted
TAMPERED = (
    "{what} {key!r} has sha256 {got}, not the {want} recorded for it; "
    "it was not loaded. Train or upload it again."
)
MISSING = "{what} {key!r} is not in storage; it was not loaded."


class ModelFileRejected(GeneratorError):
    """A model file whose content is not the one its model version recorded."""


def models_prefix(version_name: str, sha256: str) -> str:
    return f"models/{version_name}/{sha256}/"


# Storing ------------------------------------------------------------------------


def lora_store(path: Path, version_name: str) -> tuple[str, str]:
    """Put a LoRA file into storage; its key and sha256."""
    sha256 = file_sha256(path)
    key = f"{models_prefix(version_name, sha256)}{path.name}"
    _store(path, key)
    return key, sha256


def folder_store(folder: Path, version_name: str) -> tuple[str, str]:
    """Put a model folder into storage under one prefix; the prefix and the sha256
    of its manifest (which lists every file's sha256)."""
    manifest = folder_manifest(folder)
    sha256 = hashlib.sha256(manifest.encode()).hexdigest()
    prefix = models_prefix(version_name, sha256)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name != MANIFEST:
            _store(path, f"{prefix}{path.relative_to(folder).as_posix()}")
    if not default_storage.exists(f"{prefix}{MANIFEST}"):  # written last: complete
        default_storage.save(f"{prefix}{MANIFEST}", ContentFile(manifest.encode()))
    return prefix, sha256


def _store(path: Path, key: str) -> None:
    """Save ``path`` at exactly ``key``. Keys name their content (the sha256 is in
    the prefix), so a key that exists already holds these bytes."""
    if default_storage.exists(key):
        return
    with path.open("rb") as handle:
        saved = default_storage.save(key, File(handle))
    if saved != key:  # a storage that renamed it would break the folder's layout
        raise RuntimeError(f"storage saved {key!r} as {saved!r}")


def folder_manifest(folder: Path) -> str:
    lines = [
        f"{file_sha256(path)}  {path.relative_to(folder).as_posix()}"
        for path in sorted(p for p in folder.rglob("*") if p.is_file())
        if path.name != MANIFEST
    ]
    return "\n".join(lines) + "\n"


# Fetching -----------------------------------------------------------------------


def lora_local(key: str, sha256: str) -> Path:
    """A verified local copy of the LoRA file at ``key``, fetched once per host."""
    target = cache_dir(sha256) / Path(key).name
    if not target.is_file():
        _fetch(key, target)
    got = file_sha256(target)
    if got != sha256:
        target.unlink(missing_ok=True)  # fetched again next time, and checked again
        raise ModelFileRejected(
            TAMPERED.format(what="LoRA file", key=key, got=got, want=sha256)
        )
    return target


def folder_local(prefix: str, sha256: str) -> Path:
    """A verified local copy of the model folder stored under ``prefix``."""
    target = cache_dir(sha256) / "model"
    if not (target / MANIFEST).is_file():
        staging = Path(tempfile.mkdtemp(dir=cache_dir(sha256)))
        for key in files.walk(prefix):
            _fetch(key, staging / key.removeprefix(prefix))
        if not (staging / MANIFEST).is_file():
            shutil.rmtree(staging)
            raise ModelFileRejected(MISSING.format(what="Model folder", key=prefix))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    manifest = folder_manifest(target)
    got = hashlib.sha256(manifest.encode()).hexdigest()
    recorded = (target / MANIFEST).read_text()
    if got != sha256 or manifest != recorded:
        shutil.rmtree(target)
        raise ModelFileRejected(
            TAMPERED.format(what="Model folder", key=prefix, got=got, want=sha256)
        )
    return target


def cache_dir(sha256: str) -> Path:
    folder = Path(settings.XRAY_MODEL_CACHE) / sha256
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _fetch(key: str, target: Path) -> None:
    """Copy ``key`` to ``target`` through a temporary file, so a copy cut short by a
    kill is never taken for a whole one."""
    if not default_storage.exists(key):
        raise ModelFileRejected(MISSING.format(what="Model file", key=key))
    files.fetch(key, target)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
