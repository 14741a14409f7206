"""Reads of cases and imports."""

from __future__ import annotations

from xrayweb.cases.models import ImportRun


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
