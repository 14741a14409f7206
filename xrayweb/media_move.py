"""Move media from a local folder into the configured storage, rewriting host paths
that older rows hold into storage keys. Safe to run again: what is already in
storage is left alone, and a second run copies and rewrites nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction

from xrayweb.generations import model_files
from xrayweb.generations.models import ModelKind, ModelVersion
from xrayweb.training.models import EvaluationChunk

OLD_TRAINING = "training/run-{id}/"  # where runs kept their folders before storage


@dataclass
class MoveReport:
    copied: int = 0
    already: int = 0
    rewritten: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.copied} file(s) copied, {self.already} already in storage, "
            f"{len(self.rewritten)} row(s) rewritten, {len(self.missing)} missing"
        )


def media_move(source: Path) -> MoveReport:
    """Copy every file under ``source`` (the old MEDIA_ROOT) to the same key in
    storage, then rewrite rows that name host paths."""
    report = MoveReport()
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        key = _key_for(path.relative_to(source).as_posix())
        if default_storage.exists(key):
            report.already += 1
            continue
        with path.open("rb") as handle:
            default_storage.save(key, File(handle))
        report.copied += 1
    _rewrite_model_versions(source, report)
    _rewrite_evaluation_chunks(source, report)
    return report


def _key_for(relative: str) -> str:
    """The key a file gets: its path under the media folder, except that an old
    training folder ``training/run-<id>/`` becomes the run's ``training/<id>/``."""
    parts = relative.split("/")
    if len(parts) > 2 and parts[0] == "training" and parts[1].startswith("run-"):
        run_id = parts[1].removeprefix("run-")
        if run_id.isdigit():
            return "/".join(["training", run_id, *parts[2:]])
    return relative


def _rewrite_model_versions(source: Path, report: MoveReport) -> None:
    """LoRA files and trained model folders named by host path go to storage."""
    for version in ModelVersion.objects.all():
        if version.lora_key.startswith("/") and not Path(version.lora_key).is_file():
            report.missing.append(f"model version {version.name}: {version.lora_key}")
        elif version.lora_key.startswith("/"):
            key, sha256 = model_files.lora_store(Path(version.lora_key), version.name)
            with transaction.atomic():
                ModelVersion.objects.filter(pk=version.pk).update(
                    lora_key=key, lora_sha256=sha256
                )
            report.rewritten.append(f"model version {version.name}: {key}")
        elif (
            version.kind == ModelKind.MINI
            and not version.files_key
            and Path(version.source).is_relative_to(source)
        ):
            prefix, sha256 = model_files.folder_store(
                Path(version.source), version.name
            )
            ModelVersion.objects.filter(pk=version.pk).update(
                source=prefix, files_key=prefix, files_sha256=sha256
            )
            report.rewritten.append(f"model version {version.name}: {prefix}")


def _rewrite_evaluation_chunks(source: Path, report: MoveReport) -> None:
    """Scores that name their generated image by host path name its key instead."""
    for chunk in EvaluationChunk.objects.exclude(scores=[]):
        scores, changed = [], False
        for score in chunk.scores:
            image = Path(score.get("image", ""))
            if image.is_absolute() and image.is_relative_to(source):
                score = {
                    **score,
                    "image": _key_for(image.relative_to(source).as_posix()),
                }
                changed = True
            scores.append(score)
        if changed:
            EvaluationChunk.objects.filter(pk=chunk.pk).update(scores=scores)
            report.rewritten.append(f"evaluation chunk {chunk.pk}")
