"""A training run's files in Django storage, and the local folder it trains in.

``generator.training.train`` reads and writes a local folder. The worker trains in
its own (XRAY_WORK_DIR), copies each checkpoint and sample grid into storage under
the run's key as soon as it is written, keeps only the checkpoints the folder keeps,
and before training fetches the newest stored checkpoint, so a run resumes on any
host after its worker died.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage

from generator.training import CHECKPOINT_FILE, CHECKPOINT_PREFIX, checkpoint_dirs
from xrayweb.jobs import files

CHECKPOINTS = "checkpoints/"


def work_dir(run_id: int) -> Path:
    """This host's folder for the run (not recorded anywhere: any host has one)."""
    return Path(settings.XRAY_WORK_DIR) / "training" / f"run-{run_id}"


def stored_checkpoints(prefix: str) -> list[str]:
    """Names of the run's stored checkpoints (``checkpoint-<step>``), oldest first."""
    try:
        folders, _ = default_storage.listdir(f"{prefix}{CHECKPOINTS}")
    except FileNotFoundError:
        return []
    names = [
        name
        for name in folders
        if name.startswith(CHECKPOINT_PREFIX)
        and name[len(CHECKPOINT_PREFIX) :].isdigit()
        and default_storage.exists(f"{prefix}{CHECKPOINTS}{name}/{CHECKPOINT_FILE}")
    ]
    return sorted(names, key=lambda name: int(name[len(CHECKPOINT_PREFIX) :]))


def checkpoint_fetch(prefix: str, folder: Path) -> str | None:
    """Copy the newest stored checkpoint into ``folder`` unless it is there already;
    its name, or None when nothing is stored."""
    stored = stored_checkpoints(prefix)
    if not stored:
        return None
    newest = stored[-1]
    target = folder / "checkpoints" / newest / CHECKPOINT_FILE
    if not target.is_file():
        files.fetch(f"{prefix}{CHECKPOINTS}{newest}/{CHECKPOINT_FILE}", target)
    return newest


class StorageMirror:
    """``train``'s on_saved hook: each file it writes goes to storage under the
    run's key, and stored checkpoints the folder no longer keeps are deleted."""

    def __init__(self, prefix: str, folder: Path) -> None:
        self.prefix, self.folder = prefix, folder

    def __call__(self, path: Path) -> None:
        key = f"{self.prefix}{path.relative_to(self.folder).as_posix()}"
        default_storage.delete(key)  # a rewrite (same step again) replaces it
        with path.open("rb") as handle:
            default_storage.save(key, File(handle))
        if path.name == CHECKPOINT_FILE:
            self._prune()

    def _prune(self) -> None:
        kept = {folder.name for folder in checkpoint_dirs(self.folder)}
        for name in stored_checkpoints(self.prefix):
            if name not in kept:
                default_storage.delete(
                    f"{self.prefix}{CHECKPOINTS}{name}/{CHECKPOINT_FILE}"
                )
