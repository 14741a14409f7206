"""Import the IU X-ray collection into cases and images; run imports as ImportRuns.

The readers in ``generator.iuxray`` turn each layout into study records, images and
item errors; this module merges them into ``Case`` and ``CaseImage`` rows. An import is
idempotent: a case or image that is already stored and unchanged is left alone (an
image whose bytes hash the same is not even decoded), a changed one is updated, and
nothing is created twice. Every study row and every image row (with its two files) is
written atomically; a bad item becomes one entry of the report and the rest goes on.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import DatabaseError, transaction
from django.utils import timezone

from generator.errors import GeneratorError
from generator.iuxray import kaggle, openi, r2gen
from generator.iuxray.download import OPENI_BASE_URL, fetch_openi
from generator.iuxray.images import (
    MAX_PIXELS,
    CheckedImage,
    ImageRejected,
    image_check,
)
from generator.iuxray.records import ImageItem, ItemError, StudyRecord
from generator.iuxray.safetar import MAX_MEMBER_BYTES, MAX_TOTAL_BYTES, TarLimits
from generator.iuxray.splits import DEFAULT_SEED, split_for
from generator.iuxray.text import mesh_text, prompt_source
from generator.prompts import cut_prompt
from xrayweb.cases.models import Case, CaseImage, ImportRun, View
from xrayweb.jobs import files, lifecycle, permissions
from xrayweb.jobs.lifecycle import TIME_LIMIT
from xrayweb.jobs.models import Status
from xrayweb.jobs.runtime import Attempt

logger = logging.getLogger(__name__)

BATCH = 500
# Rows per INSERT: psycopg parses each distinct statement, and a long one is slow.
INSERT_ROWS = 100
IMAGE_WORKERS = max(1, min(4, os.cpu_count() or 1))
MAX_REPORTED_ITEMS = 1000
SUMMARY_ITEMS = 50
QUOTED = re.compile(r"'[^']*'")
NUMBER = re.compile(r"\d+")
TEXT_FIELDS = ("findings", "impression", "indication", "comparison")
LIST_FIELDS = ("mesh_major", "mesh_automatic", "problems")
ORIGINALS = "cases/original/"
DERIVATIVES = "cases/256/"
UPLOADS = "imports/uploads/"

NO_SOURCE = "Give at least one of reports, images, kaggle_dir, r2gen_dir or download."
MISSING_PATH = "{option} path {path!r} does not exist on the server"
OUTSIDE_IMPORT_ROOTS = (
    "{option} path {path!r} is not under an import folder of the server ({roots}); "
    "copy the files there or upload them"
)
SHOWN_PATH_CHARS = 200  # a path longer than this is shown cut, ending in "…"
NO_REPORT = "image without report: no study {uid} was imported"
MISSING_IMAGES = "report without image: {ids} not found among the images"
NO_IMAGES = "report without image: no image of this study was found"
DUPLICATE_IMAGE = "image {image_id} was already read from another file of this import"
DATABASE_REFUSED = "database refused the row: {error}"


class ImportRefused(GeneratorError, ValueError):
    """An import's options name no source, or a path or upload that is not there
    (or not allowed); the message names the option and its value."""


# Called with (phase, done, total); returning False stops the import between items.
Progress = Callable[[str, int, int], bool | None]


@dataclass
class ImportSources:
    """What one import reads; paths are on this machine."""

    reports: Path | None = None
    images: Path | None = None
    kaggle_dir: Path | None = None
    r2gen_dir: Path | None = None
    dicom_metadata: Path | None = None
    seed: int = DEFAULT_SEED
    tar_limits: TarLimits = field(default_factory=TarLimits)
    max_pixels: int = MAX_PIXELS


@dataclass
class ImportReport:
    """Counts of what an import did, and each skipped item with its reason."""

    cases_created: int = 0
    cases_updated: int = 0
    cases_unchanged: int = 0
    images_created: int = 0
    images_updated: int = 0
    images_unchanged: int = 0
    skipped_total: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    skipped_by_kind: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    # Where a cancelled import stopped ("images 120 of 7470"); empty when it ran out.
    stopped_at: str = ""

    def skip(self, error: ItemError) -> None:
        self.skipped_total += 1
        self.skipped_by_kind[reason_kind(error.reason)] += 1
        if len(self.skipped) < MAX_REPORTED_ITEMS:
            self.skipped.append({"item": error.item, "reason": error.reason})

    def count_image(self, outcome: str) -> None:
        name = f"images_{outcome}"
        setattr(self, name, getattr(self, name) + 1)

    def as_json(self) -> dict:
        return {
            "cases": {
                "created": self.cases_created,
                "updated": self.cases_updated,
                "unchanged": self.cases_unchanged,
            },
            "images": {
                "created": self.images_created,
                "updated": self.images_updated,
                "unchanged": self.images_unchanged,
            },
            "skipped_total": self.skipped_total,
            "skipped_by_kind": dict(self.skipped_by_kind.most_common()),
            "skipped": self.skipped,
            "seconds": round(self.seconds, 2),
            "stopped_at": self.stopped_at,
        }


def import_summary(report: dict, *, items: int = SUMMARY_ITEMS) -> str:
    """The end-of-import summary: counts, skips by kind, the first skipped items."""
    zero = {"created": 0, "updated": 0, "unchanged": 0}
    cases, images = zero | report.get("cases", {}), zero | report.get("images", {})
    skipped = report.get("skipped", [])
    lines = [
        "Cases: {created} created, {updated} updated, {unchanged} unchanged".format(
            **cases
        ),
        "Images: {created} created, {updated} updated, {unchanged} unchanged".format(
            **images
        ),
        f"Skipped: {report.get('skipped_total', 0)} items"
        f" in {report.get('seconds', 0)} s",
    ]
    kinds = report.get("skipped_by_kind", {})
    lines += [f"  {count} x {kind}" for kind, count in kinds.items()]
    lines += [f"  {s['item']}: {s['reason']}" for s in skipped[:items]]
    hidden = report.get("skipped_total", 0) - min(items, len(skipped))
    if items and hidden > 0:  # items=0: counts by kind only
        lines.append(f"  ... and {hidden} more (the run's report lists up to 1000)")
    return "\n".join(lines)


def reason_kind(reason: str) -> str:
    """A reason without the values it names, to count skips by kind."""
    return NUMBER.sub("N", QUOTED.sub("'...'", reason.split(":")[0]))


@functools.cache
def clip_tokenizer():
    """The real CLIP tokenizer, loaded once per process."""
    from generator.tiny import load_clip_tokenizer

    return load_clip_tokenizer()


# 1. Studies: read every layout, merge by uid ------------------------------------


def merge_study(into: StudyRecord, new: StudyRecord) -> None:
    """Fill what ``into`` lacks from ``new``; R2Gen's split always wins."""
    for name in TEXT_FIELDS + LIST_FIELDS:
        if not getattr(into, name) and getattr(new, name):
            setattr(into, name, getattr(new, name))
    into.image_ids = list(dict.fromkeys(into.image_ids + new.image_ids))
    into.split = new.split or into.split


def studies_collect(
    sources: ImportSources, report: ImportReport
) -> tuple[dict[str, StudyRecord], dict[str, kaggle.Projection]]:
    """All studies of the given layouts, merged by uid, plus Kaggle's projections."""
    readers: list[Iterator[StudyRecord | ItemError]] = []
    if sources.reports:
        readers.append(openi.iter_reports(sources.reports, limits=sources.tar_limits))
    projections: dict[str, kaggle.Projection] = {}
    if sources.kaggle_dir:
        projections, errors = kaggle.read_projections(sources.kaggle_dir)
        readers.append(iter(errors))
        readers.append(kaggle.iter_reports(sources.kaggle_dir))
    if sources.r2gen_dir:
        readers.append(r2gen.iter_reports(sources.r2gen_dir))
    studies: dict[str, StudyRecord] = {}
    for reader in readers:
        for item in reader:
            if isinstance(item, ItemError):
                report.skip(item)
            elif item.uid in studies:
                merge_study(studies[item.uid], item)
            else:
                studies[item.uid] = item
    for projection in projections.values():
        if projection.uid in studies:
            merge_study(studies[projection.uid], kaggle_images(projection))
    return studies, projections


def kaggle_images(projection: kaggle.Projection) -> StudyRecord:
    return StudyRecord(
        uid=projection.uid, source=kaggle.SOURCE, image_ids=[projection.image_id]
    )


# 2. Cases: derive the prompt, compare with what is stored, write in batches -------


def case_fields(study: StudyRecord, stored: Case | None = None) -> dict:
    """The stored fields of a study, the prompt included.

    The prompt is cut again only when its source text differs from ``stored``'s:
    tokenising is the costliest step of a re-run.
    """
    fields = {name: getattr(study, name) for name in TEXT_FIELDS + LIST_FIELDS}
    full = prompt_source(study)
    if stored is not None and stored.prompt_full == full:
        return fields | {
            "mesh_text": mesh_text(study),
            "prompt": stored.prompt,
            "prompt_full": full,
            "prompt_truncated": stored.prompt_truncated,
        }
    cut = cut_prompt(clip_tokenizer(), full) if full else None
    fields.update(
        mesh_text=mesh_text(study),
        prompt=cut.text if cut else "",
        prompt_full=full,
        prompt_truncated=bool(cut and cut.truncated),
    )
    return fields


def study_from_case(case: Case) -> StudyRecord:
    study = StudyRecord(uid=case.uid, source=case.source, split=case.split)
    for name in TEXT_FIELDS + LIST_FIELDS:
        setattr(study, name, getattr(case, name))
    return study


def case_changes(case: Case, study: StudyRecord) -> dict:
    """Fields to update on ``case``: non-blank new values and the prompt they give."""
    merged = study_from_case(case)
    for name in TEXT_FIELDS + LIST_FIELDS:
        if getattr(study, name):
            setattr(merged, name, getattr(study, name))
    wanted = case_fields(merged, stored=case)
    if study.split and study.split != case.split:
        wanted.update(split=study.split, split_seed=None)
    return {k: v for k, v in wanted.items() if getattr(case, k) != v}


def new_case(study: StudyRecord, seed: int) -> Case:
    split = study.split or split_for(study.uid, seed=seed)
    return Case(
        uid=study.uid,
        source=study.source,
        split=split,
        split_seed=None if study.split else seed,
        **case_fields(study),
    )


def cases_save(
    studies: dict[str, StudyRecord],
    *,
    seed: int,
    report: ImportReport,
    progress: Progress,
) -> None:
    """Create new cases and update changed ones, a batch per transaction."""
    existing = Case.objects.in_bulk(list(studies), field_name="uid")
    created: list[Case] = []
    updated: list[tuple[Case, list[str]]] = []
    for done, study in enumerate(studies.values(), start=1):
        case = existing.get(study.uid)
        if case is None:
            created.append(new_case(study, seed))
        elif changes := case_changes(case, study):
            for name, value in changes.items():
                setattr(case, name, value)
            case.updated_at = timezone.now()
            updated.append((case, [*changes, "updated_at"]))
        else:
            report.cases_unchanged += 1
        if done % BATCH == 0:
            progress("cases", done, len(studies))
    for start in range(0, len(created), BATCH):
        cases_create(created[start : start + BATCH], report)
    for case, fields in updated:
        if row_save(lambda c=case, f=fields: c.save(update_fields=f), case.uid, report):
            report.cases_updated += 1
    progress("cases", len(studies), len(studies))


def cases_create(batch: list[Case], report: ImportReport) -> None:
    """One INSERT for the batch; on a database error, one row at a time."""
    try:
        with transaction.atomic():
            Case.objects.bulk_create(batch, batch_size=INSERT_ROWS)
        report.cases_created += len(batch)
        return
    except DatabaseError:
        logger.warning(
            "batch insert failed; inserting its %d cases one by one", len(batch)
        )
    for case in batch:
        if row_save(case.save, case.uid, report):
            report.cases_created += 1


def row_save(save: Callable[[], object], item: str, report: ImportReport) -> bool:
    try:
        with transaction.atomic():
            save()
        return True
    except DatabaseError as error:
        # The report shows the database's first line; its detail goes to the log.
        logger.warning("import item %s refused by the database", item, exc_info=error)
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        report.skip(ItemError(item, DATABASE_REFUSED.format(error=reason)))
        return False


# 3. Images: validate, derive, store -----------------------------------------------


def image_sources(
    sources: ImportSources,
    studies: dict[str, StudyRecord],
    projections: dict[str, kaggle.Projection],
) -> Iterator[ImageItem | ItemError]:
    if sources.images:
        yield from openi.iter_images(sources.images, limits=sources.tar_limits)
    if sources.kaggle_dir and (sources.kaggle_dir / kaggle.IMAGES_DIR).is_dir():
        yield from kaggle.iter_images(sources.kaggle_dir, projections)
    if sources.r2gen_dir and (sources.r2gen_dir / r2gen.IMAGES_DIR).is_dir():
        r2gen_studies = [s for s in studies.values() if s.split]
        yield from r2gen.iter_images(sources.r2gen_dir, r2gen_studies)


def image_view(item: ImageItem, positions: dict[str, str]) -> tuple[str, str]:
    """(view, DICOM View Position): the layout's view, else DICOM's, else unknown."""
    position = positions.get(item.image_id, "")
    view = item.view or openi.VIEW_POSITIONS.get(position, View.UNKNOWN)
    return view, position


@dataclass(frozen=True)
class ImagePlan:
    """Where one image goes: its case, its labels, the row it replaces if any."""

    item: ImageItem
    labels: dict
    existing: CaseImage | None


def image_plan(
    item: ImageItem,
    *,
    case_ids: dict[str, int],
    existing: dict[str, CaseImage],
    positions: dict[str, str],
    report: ImportReport,
) -> ImagePlan | None:
    """Settle an image without decoding it where possible; None when settled.

    An image without a report is skipped; one stored with the same bytes is
    unchanged, or only relabelled. Anything else needs decoding: a plan.
    """
    if item.uid not in case_ids:
        report.skip(ItemError(item.filename, NO_REPORT.format(uid=item.uid)))
        return None
    view, position = image_view(item, positions)
    labels = {"case_id": case_ids[item.uid], "view": view, "view_position": position}
    stored = existing.get(item.image_id)
    if stored is None or stored.sha256 != hashlib.sha256(item.data).hexdigest():
        return ImagePlan(item, labels, stored)
    changed = {k: v for k, v in labels.items() if getattr(stored, k) != v}
    if changed:
        CaseImage.objects.filter(pk=stored.pk).update(**changed)
    report.count_image("updated" if changed else "unchanged")
    return None


def image_store(plan: ImagePlan, checked: CheckedImage) -> CaseImage:
    """Write the original and the derivative; the row, not yet saved if new."""
    item = plan.item
    stem = Path(item.filename).name.removesuffix(".png")
    # A new image's keys belong to no row: a file there is what an import killed
    # before its batch was inserted left behind, and is replaced, not kept beside.
    save = default_storage.save if plan.existing else _save_replacing
    original = save(ORIGINALS + item.filename, ContentFile(item.data))
    derivative = save(f"{DERIVATIVES}{stem}.png", ContentFile(checked.derivative_png))
    values = {
        **plan.labels,
        "original": original,
        "derivative": derivative,
        "width": checked.width,
        "height": checked.height,
        "sha256": checked.sha256,
    }
    if plan.existing is None:
        return CaseImage(image_id=item.image_id, **values)
    try:
        CaseImage.objects.filter(pk=plan.existing.pk).update(**values)
    except DatabaseError:
        files_delete([original, derivative])
        raise
    files_delete([plan.existing.original.name, plan.existing.derivative.name])
    return CaseImage(pk=plan.existing.pk, image_id=item.image_id, **values)


def _save_replacing(key: str, content: ContentFile) -> str:
    default_storage.delete(key)  # no error when nothing is there
    return default_storage.save(key, content)


def files_delete(names: list[str]) -> None:
    for name in names:
        if name:
            default_storage.delete(name)


def image_finish(
    plan: ImagePlan, checking: Future, new: list[CaseImage], report: ImportReport
) -> None:
    """Store a decoded image; a new row joins ``new``, inserted with its batch."""
    try:
        image = image_store(plan, checking.result())
    except (ImageRejected, DatabaseError) as error:
        report.skip(ItemError(plan.item.filename, str(error)))
        return
    if plan.existing is not None:
        report.count_image("updated")
        return
    new.append(image)
    if len(new) >= INSERT_ROWS:
        images_insert(new, report)


def images_insert(new: list[CaseImage], report: ImportReport) -> None:
    """One INSERT for the batch; on a database error, one row at a time.

    A row that cannot be inserted takes its two files with it, so no file is left
    without its row.
    """
    batch = new[:]
    new.clear()
    try:
        with transaction.atomic():
            CaseImage.objects.bulk_create(batch)
        report.images_created += len(batch)
        return
    except DatabaseError:
        logger.warning(
            "batch insert failed; inserting %d images one by one", len(batch)
        )
    for image in batch:
        if row_save(image.save, image.image_id, report):
            report.images_created += 1
        else:
            files_delete([image.original.name, image.derivative.name])


def images_save(
    sources: ImportSources,
    studies: dict[str, StudyRecord],
    projections: dict[str, kaggle.Projection],
    *,
    report: ImportReport,
    progress: Progress,
) -> set[str]:
    """Store every image of the given sources; the ids of those seen.

    Decoding runs on a small thread pool (Pillow releases the GIL while it inflates
    and resizes) while this thread reads the archive and writes rows, in order.
    """
    positions = (
        openi.read_view_positions(sources.dicom_metadata)
        if sources.dicom_metadata
        else {}
    )
    lookups = {
        "case_ids": dict(Case.objects.values_list("uid", "id")),
        "existing": CaseImage.objects.in_bulk(field_name="image_id"),
        "positions": positions,
    }
    expected = sum(len(s.image_ids) for s in studies.values())
    seen: set[str] = set()
    pending: deque[tuple[ImagePlan, Future]] = deque()
    new: list[CaseImage] = []
    with ThreadPoolExecutor(max_workers=IMAGE_WORKERS) as pool:
        items = image_sources(sources, studies, projections)
        for done, item in enumerate(items, start=1):
            if progress("images", done, max(expected, done)) is False:
                report.stopped_at = f"images {done - 1} of {max(expected, done)}"
                break
            if isinstance(item, ItemError):
                report.skip(item)
                continue
            if item.image_id in seen:
                reason = DUPLICATE_IMAGE.format(image_id=item.image_id)
                report.skip(ItemError(item.filename, reason))
                continue
            seen.add(item.image_id)
            plan = image_plan(item, **lookups, report=report)
            if plan is not None:
                check = pool.submit(
                    image_check, item.data, max_pixels=sources.max_pixels
                )
                pending.append((plan, check))
            while len(pending) > IMAGE_WORKERS * 2:
                image_finish(*pending.popleft(), new, report)
        while pending:
            image_finish(*pending.popleft(), new, report)
    images_insert(new, report)
    return seen


def reports_without_images(
    studies: dict[str, StudyRecord], seen: set[str], report: ImportReport
) -> None:
    """Skip-list each study whose images were looked for and not found."""
    stored = set(
        CaseImage.objects.filter(case__uid__in=list(studies)).values_list(
            "image_id", flat=True
        )
    )
    found = seen | stored
    uids_with_images = {image_id.split("_")[0] for image_id in found}
    for study in studies.values():
        missing = [i for i in study.image_ids if i not in found]
        if missing:
            reason = MISSING_IMAGES.format(ids=", ".join(missing))
            report.skip(ItemError(study.uid, reason))
        elif not study.image_ids and study.uid not in uids_with_images:
            report.skip(ItemError(study.uid, NO_IMAGES))


# 4. The import ----------------------------------------------------------------------


def case_import(
    *, sources: ImportSources, progress: Progress | None = None
) -> ImportReport:
    """Import every study and image of ``sources``; the report says what happened."""
    started = time.monotonic()
    progress = progress or (lambda phase, done, total: None)
    report = ImportReport()
    studies, projections = studies_collect(sources, report)
    if progress("reports", len(studies), len(studies)) is False:
        report.stopped_at = "before the cases"
        return report
    cases_save(studies, seed=sources.seed, report=report, progress=progress)
    if progress("cases", len(studies), len(studies)) is False:
        report.stopped_at = "before the images"
    elif sources.images or sources.kaggle_dir or sources.r2gen_dir:
        seen = images_save(
            sources, studies, projections, report=report, progress=progress
        )
        looked_for = {
            uid: study
            for uid, study in studies.items()
            if image_source_given(sources, study)
        }
        if not report.stopped_at:
            reports_without_images(looked_for, seen, report)
    report.seconds = time.monotonic() - started
    return report


def image_source_given(sources: ImportSources, study: StudyRecord) -> bool:
    """Whether this study's layout came with images, so a missing one is an error."""
    if study.source == openi.SOURCE:
        return sources.images is not None
    folder = sources.kaggle_dir if study.source == kaggle.SOURCE else sources.r2gen_dir
    images_dir = (
        kaggle.IMAGES_DIR if study.source == kaggle.SOURCE else r2gen.IMAGES_DIR
    )
    return folder is not None and (folder / images_dir).is_dir()


# 5. Import runs: create, enqueue, claim, execute ------------------------------------

PATH_OPTIONS = ("reports", "images", "kaggle_dir", "r2gen_dir", "dicom_metadata")
# Uploaded archives: storage keys, by the path option each one stands in for.
UPLOAD_OPTIONS = {"reports_key": "reports", "images_key": "images"}
MISSING_UPLOAD = "{option} {key!r} is not in storage any more; upload it again"


def import_options_check(
    options: dict, *, uploaded: bool = False, confined: bool = False
) -> None:
    """Refuse options that name no source or a path that is not on this machine;
    ``confined`` (the web and the API): also one outside XRAY_IMPORT_ROOTS, before
    saying whether it exists."""
    sources = [options.get(name) for name in (*PATH_OPTIONS[:4], *UPLOAD_OPTIONS)]
    if not (uploaded or options.get("download") or any(sources)):
        raise ImportRefused(NO_SOURCE)
    for name in PATH_OPTIONS:
        if confined and options.get(name):
            _import_root_check(name, options[name])
        if options.get(name) and not _path_exists(options[name]):
            path = _shown_path(options[name])
            raise ImportRefused(MISSING_PATH.format(option=name, path=path))


def _shown_path(text: str) -> str:
    """A path as an error shows it: cut past SHOWN_PATH_CHARS, ending in "…"."""
    if len(text) > SHOWN_PATH_CHARS:
        return text[:SHOWN_PATH_CHARS] + "…"
    return text


def _import_root_check(option: str, text: str) -> None:
    roots = [Path(root).resolve() for root in settings.XRAY_IMPORT_ROOTS]
    try:
        inside = any(Path(text).resolve().is_relative_to(root) for root in roots)
    except (OSError, ValueError):
        inside = False
    if not inside:
        shown = ", ".join(str(root) for root in roots) or "none configured"
        raise ImportRefused(
            OUTSIDE_IMPORT_ROOTS.format(
                option=option, path=_shown_path(text), roots=shown
            )
        )


def _path_exists(text: str) -> bool:
    """Whether ``text`` names a file or folder here; a name the OS refuses (too
    long, a NUL byte) names none."""
    try:
        return Path(text).exists()
    except (OSError, ValueError):
        return False


def import_run_create(
    *, user: AbstractBaseUser | None, options: dict, enqueue: bool = True
) -> ImportRun:
    """Record an import; with ``enqueue`` the dispatcher sends it to the CPU queue
    once committed, else it is marked sent and left to the calling process."""
    permissions.require(user, permissions.RUN_IMPORT, "run imports")
    import_options_check(options)
    run = ImportRun.objects.create(
        created_by=user,
        options=options,
        enqueued_at=None if enqueue else timezone.now(),
    )
    if enqueue:
        lifecycle.dispatch_on_commit(ImportRun)
    return run


def import_run_cancel(*, run_id: int, user: AbstractBaseUser) -> str | None:
    """Cancel a queued import, or stop a running one between items; what it
    committed stays, listed in its report."""
    return lifecycle.cancel(ImportRun, run_id, user)


def import_upload_store(*, upload: UploadedFile) -> str:
    """Keep an uploaded archive in storage; its key, which a worker on any host can
    read (see UPLOAD_OPTIONS)."""
    return default_storage.save(
        f"{UPLOADS}{uuid.uuid4().hex}/{Path(upload.name).name}", upload
    )


def uploads_fetch(options: dict, folder: Path) -> dict[str, Path]:
    """The uploaded archives an import's options name, copied from storage into
    ``folder`` on this worker; by the source they stand for."""
    paths = {}
    for option, source in UPLOAD_OPTIONS.items():
        key = options.get(option)
        if not key:
            continue
        if not default_storage.exists(key):
            raise ImportRefused(MISSING_UPLOAD.format(option=option, key=key))
        target = folder / source / Path(key).name
        files.fetch(key, target)
        paths[source] = target
    return paths


def progress_recorder(attempt: Attempt, also: Progress | None) -> Progress:
    """Write progress to the run's row at most every XRAY_PROGRESS_INTERVAL_S;
    False once cancel was asked for."""

    def record(phase: str, done: int, total: int) -> bool:
        if also:
            also(phase, done, total)
        return attempt.progress(
            force=done == total, phase=phase, progress_done=done, progress_total=total
        )

    return record


def import_sources(options: dict, work_dir: Path | None = None) -> ImportSources:
    """The sources an ImportRun's options name, downloading the archives if asked
    and copying uploaded ones from storage into ``work_dir``.

    The paths are checked again: the worker may run long after the form was sent.
    """
    import_options_check(options)
    paths = {n: Path(options[n]) for n in PATH_OPTIONS if options.get(n)}
    if work_dir is not None:
        paths.update(uploads_fetch(options, work_dir))
    if options.get("download"):
        folder = Path(options.get("download_dir") or settings.VAR_DIR / "downloads")
        base_url = options.get("base_url") or openi_base_url()
        paths["reports"], paths["images"] = fetch_openi(
            folder, base_url=base_url, images=not options.get("reports_only")
        )
    limits = TarLimits(
        member_bytes=int(options.get("max_member_bytes") or MAX_MEMBER_BYTES),
        total_bytes=int(options.get("max_total_bytes") or MAX_TOTAL_BYTES),
    )
    return ImportSources(
        **{k: v for k, v in paths.items() if v is not None},
        seed=int(options.get("seed", DEFAULT_SEED)),
        tar_limits=limits,
        max_pixels=int(options.get("max_pixels") or MAX_PIXELS),
    )


def openi_base_url() -> str:
    """The XRAY_OPENI_BASE_URL setting, else the official Open-i URL."""
    return settings.XRAY_OPENI_BASE_URL or OPENI_BASE_URL


def import_run_execute(*, run_id: int, progress: Progress | None = None) -> bool:
    """Claim the run and import; False when it was not queued (nothing done)."""
    attempt = Attempt.claim(ImportRun, run_id)
    if attempt is None:
        return False
    with attempt:
        run = ImportRun.objects.get(id=run_id)
        try:
            with tempfile.TemporaryDirectory(prefix="xray-import-") as work_dir:
                sources = import_sources(run.options, Path(work_dir))
                report = case_import(
                    sources=sources, progress=progress_recorder(attempt, progress)
                )
        except SoftTimeLimitExceeded:
            attempt.stop(TIME_LIMIT.format(limit=settings.XRAY_IMPORT_SOFT_LIMIT_S))
            return True
        except Exception as error:
            attempt.fail(error)
            return True
        status = Status.CANCELLED if report.stopped_at else Status.SUCCEEDED
        attempt.finish(status, report=report.as_json())
    return True
