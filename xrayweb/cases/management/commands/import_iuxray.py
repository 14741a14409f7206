"""python manage.py import_iuxray: import the IU X-ray collection from any layout."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from generator.iuxray.splits import DEFAULT_SEED
from xrayweb.cases.services import (
    SUMMARY_ITEMS,
    import_run_create,
    import_run_execute,
    import_summary,
)
from xrayweb.jobs.models import Status


class Command(BaseCommand):
    help = (
        "Import IU X-ray studies and images from the Open-i archives (or folders), "
        "the Kaggle layout and/or the R2Gen layout. Safe to re-run: nothing is added "
        "twice and changed fields are updated."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--reports", type=Path, help="NLMCXR_reports.tgz or folder")
        parser.add_argument("--images", type=Path, help="NLMCXR_png.tgz or folder")
        parser.add_argument("--kaggle-dir", type=Path, help="Kaggle layout folder")
        parser.add_argument("--r2gen-dir", type=Path, help="R2Gen layout folder")
        parser.add_argument(
            "--dicom-metadata", type=Path, help="nlmcxr_dicom_metadata.csv.gz (views)"
        )
        parser.add_argument(
            "--download",
            action="store_true",
            help="fetch the official Open-i archives (resumes, checks sha256)",
        )
        parser.add_argument("--download-dir", type=Path, help="default: var/downloads")
        parser.add_argument(
            "--base-url",
            help="archive base URL (default XRAY_OPENI_BASE_URL or Open-i)",
        )
        parser.add_argument(
            "--reports-only",
            action="store_true",
            help="with --download, fetch only the reports archive",
        )
        parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="split seed")
        parser.add_argument(
            "--brief",
            action="store_true",
            help="no progress bar, and skipped items counted by reason only (each "
            "one is in the run's report: admin, Import runs)",
        )

    def handle(self, *args: object, **opts: object) -> None:
        options = {
            name: str(opts[name]) if isinstance(opts[name], Path) else opts[name]
            for name in (
                "reports",
                "images",
                "kaggle_dir",
                "r2gen_dir",
                "dicom_metadata",
                "download",
                "download_dir",
                "base_url",
                "reports_only",
                "seed",
            )
            if opts[name] not in (None, False)
        }
        try:
            run = import_run_create(user=None, options=options, enqueue=False)
        except ValueError as error:
            raise CommandError(str(error)) from None
        brief = bool(opts["brief"])
        with tqdm(unit="item", dynamic_ncols=True, disable=brief) as bar:
            import_run_execute(run_id=run.pk, progress=tqdm_progress(bar))
        run.refresh_from_db()
        if run.status == Status.FAILED:
            raise CommandError(f"Import {run.pk} failed: {run.error}")
        self.stdout.write(
            import_summary(run.report, items=0 if brief else SUMMARY_ITEMS)
        )
        where = "the admin's Import runs page" if brief else "the summary above"
        self.stdout.write(
            f"Import {run.pk}: {run.status}; each skipped item is in {where}"
        )


def tqdm_progress(bar: tqdm):
    """A progress callback drawing phase, count, rate and ETA on ``bar``."""

    current = [""]

    def update(phase: str, done: int, total: int) -> None:
        if current[0] != phase:
            current[0] = phase
            bar.set_description(phase)
            bar.reset(total=total)
        bar.total = total
        bar.update(done - bar.n)  # tqdm redraws at most every mininterval

    return update
