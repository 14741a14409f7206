"""Reads of cases and imports."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from xrayweb.cases.models import Case, CaseImage, ImportRun
from xrayweb.jobs.progress import Progress, job_progress


def import_run_progress(*, run: ImportRun) -> dict:
    """What the report page polls: status, phase and counts, the report when done."""
    return {
        "id": run.pk,
        "status": run.status,
        "phase": run.phase,
        "done": run.progress_done,
        "total": run.progress_total,
        "finished": run.is_terminal,
        "error": run.error,
        "report": run.report if run.is_terminal else None,
    }


def import_progress(run: ImportRun) -> Progress:
    """Items of the current phase done, ETA, queue place or duration."""
    return job_progress(
        run, done=run.progress_done, total=run.progress_total, unit="items"
    )


def cases_filtered(
    *, q: str = "", mesh: str = "", split: str = "", view: str = ""
) -> QuerySet[Case]:
    """Cases whose uid, report or MeSH terms hold ``q``, whose MeSH terms hold
    ``mesh``, in ``split``, with an image of ``view``; with their images."""
    cases = Case.objects.all()
    if q.strip():
        q = q.strip()
        cases = cases.filter(
            Q(uid__iexact=q)
            | Q(impression__icontains=q)
            | Q(findings__icontains=q)
            | Q(mesh_text__icontains=q)
        )
    if mesh.strip():
        cases = cases.filter(mesh_text__icontains=mesh.strip())
    if split:
        cases = cases.filter(split=split)
    if view:
        cases = cases.filter(pk__in=CaseImage.objects.filter(view=view).values("case"))
    return cases.prefetch_related("images")
