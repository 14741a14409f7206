"""Model files in Django storage, and the local copies workers load them from.

A trained LoRA file or model folder is stored once under a key that names its
content, ``models/<version>/<sha256>/...``, so workers on any host can fetch it. Each
worker keeps what it fetched in XRAY_MODEL_CACHE, one folder per sha256, and checks
the hash before anything is loaded: a file changed in the bucket or in the cache is
refused with the two hashes named, never loaded.

A base model named by a local path is resolved by each worker on its own host and
checked against that host's model roots (model_source_check) before it is loaded.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from generator.errors import GeneratorError
from xrayweb.generations.models import ModelVersion
from xrayweb.jobs import files

CHUNK = 1 << 20
MANIFEST = "MANIFEST.sha256"  # "<sha256>  <relative path>" per file, sorted
TAMPERED = (
    "{what} {key!r} has sha256 {got}, not the {want} recorded for it; "
    "it was not loaded. Train or upload it again."
)
MISSING = "{what} {key!r} is not in storage; it was not loaded."
SOURCE_OUTSIDE_ROOTS = (
    "{source!r} is neither a Hub id (owner/name) nor a folder under a model root "
    "({roots}); set XRAY_MODEL_ROOTS to add one."
)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")
SOURCE_REFUSED = (
    "Model version {name!r} was not loaded: its folder is not under a model root "
    "of this worker (XRAY_MODEL_ROOTS)."
)
UNAVAILABLE = (
    "Model version {name!r} cannot be loaded on this worker: its files are missing "
    "or unreadable here. The details are in the worker's log."
)


class ModelFileRejected(GeneratorError):
    """A model file whose content is not the one its model version recorded."""


class ModelUnavailable(GeneratorError):
    """A model version this worker will not or cannot load; the message names the
    version, the log holds the host's paths and the cause."""


# Local sources ------------------------------------------------------------------


def worker_source(version: ModelVersion) -> str:
    """The base model ``version`` names, as this worker loads it: a Hub id, or a
    local folder resolved on this host and checked against its own model roots
    (model_source_check) before anything is read from it."""
    try:
        return model_source_check(version.source)
    except ValueError as exc:
        raise ModelUnavailable(SOURCE_REFUSED.format(name=version.label)) from exc


def model_source_check(source: str) -> str:
    """``source`` as this host loads it: a Hub id as it is, a local folder or file
    resolved (symbolic links followed). ValueError unless it is a Hub id or lies
    under a model root of this host (model_roots): the admin checks it when a
    version is saved, and each worker again before it loads anything."""
    if _hub_id(source):
        return source
    folder = Path(source).expanduser().resolve()
    roots = model_roots()
    if not any(folder.is_relative_to(root) for root in roots):
        shown = ", ".join(str(root) for root in roots)
        raise ValueError(SOURCE_OUTSIDE_ROOTS.format(source=source, roots=shown))
    return str(folder)


def model_roots() -> list[Path]:
    """XRAY_MODEL_ROOTS, and the models this host's own settings name (the shipped
    tiny and mini models, a local XRAY_BASE_MODEL): what an operator configured is
    loadable without also listing it as a root."""
    configured = [
        settings.XRAY_TINY_MODEL_DIR,
        settings.XRAY_MINI_MODEL_DIR,
        *([settings.XRAY_BASE_MODEL] if settings.XRAY_BASE_MODEL else []),
    ]
    local = [Path(path) for path in configured if not _hub_id(str(path))]
    paths = [*settings.XRAY_MODEL_ROOTS, *local]
    return [Path(path).expanduser().resolve() for path in paths]


def _hub_id(source: str) -> bool:
    return bool(HUB_ID.fullmatch(source)) and not Path(source).exists()


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
