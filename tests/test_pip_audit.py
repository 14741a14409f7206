"""The CI audit's verdicts: vulnerabilities fail, a database that answered nothing
is reported as not audited (never as clean), ignored ids need a reason."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.conftest import PROJECT_ROOT

spec = importlib.util.spec_from_file_location(
    "pip_audit_ci", PROJECT_ROOT / ".ci" / "pip_audit.py"
)
audit = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = audit  # dataclasses look their module up there
spec.loader.exec_module(audit)

SKIPPED = {"name": "django", "version": "5.2.19", "skip_reason": "not found on PyPI"}


def test_it_fails_on_a_known_vulnerability():
    vulnerable = {
        "name": "django",
        "version": "5.2.19",
        "vulns": [{"id": "GHSA-1234", "fix_versions": ["5.2.20"]}],
    }
    report = {"dependencies": [vulnerable, SKIPPED]}

    found = audit.verdict(report, "pypi", [])

    assert found.code == 1
    assert "django 5.2.19: GHSA-1234 (fixed in 5.2.20)" in found.message
    assert "1 packages audited, 1 not found" in found.message


def test_it_passes_a_clean_report_saying_what_was_audited():
    clean = {"name": "django", "version": "5.2.19", "vulns": []}

    found = audit.verdict({"dependencies": [clean]}, "osv", ["GHSA-9"])

    assert found == audit.Verdict(
        "pip-audit (osv): 1 packages audited, 0 not found in the database, "
        "1 ids ignored by review; no known vulnerabilities.",
        0,
    )


def test_it_takes_a_report_where_nothing_was_looked_up_as_no_answer():
    assert audit.verdict({"dependencies": [SKIPPED, SKIPPED]}, "pypi", []) is None


def test_it_needs_a_reason_for_each_ignored_id():
    assert audit.ignored_ids("# header\nGHSA-1  # not used here\n\n") == ["GHSA-1"]
    with pytest.raises(SystemExit, match="GHSA-2 needs a reason"):
        audit.ignored_ids("GHSA-2\n")


def test_the_reviewed_ignore_file_reads():
    assert audit.ignored_ids(audit.IGNORE_FILE.read_text()) == []
