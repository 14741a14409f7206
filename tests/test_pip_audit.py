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


def test_it_takes_a_report_listing_no_packages_as_no_answer():
    assert audit.verdict({"dependencies": []}, "osv", []) is None


def test_it_says_not_audited_and_passes_when_no_database_answers(monkeypatch, capsys):
    answers = {
        "pypi": (None, "ConnectionError: Could not connect to PyPI"),
        "osv": ({"dependencies": [SKIPPED]}, ""),
    }
    monkeypatch.setattr(audit, "run", lambda service, ignored: answers[service])

    code = audit.main()

    assert code == 0
    assert (
        capsys.readouterr().out
        == audit.UNREACHABLE.format(
            detail="pypi: ConnectionError: Could not connect to PyPI; "
            "osv: all 1 packages skipped, e.g. 'not found on PyPI'"
        )
        + "\n"
    )


def test_it_asks_osv_when_pypi_does_not_answer_and_fails_on_its_finding(
    monkeypatch, capsys
):
    vulnerable = {
        "name": "pillow",
        "version": "9.0.0",
        "vulns": [{"id": "PYSEC-1", "fix_versions": []}],
    }
    answers = {
        "pypi": (None, "timed out"),
        "osv": ({"dependencies": [vulnerable]}, ""),
    }
    monkeypatch.setattr(audit, "run", lambda service, ignored: answers[service])

    code = audit.main()

    assert code == 1
    out = capsys.readouterr().out
    assert out.startswith("pip-audit (osv): 1 packages audited")
    assert "pillow 9.0.0: PYSEC-1 (fixed in no release yet)" in out


def test_it_fails_when_pip_audit_is_not_installed(monkeypatch, capsys):
    monkeypatch.setattr(audit.importlib.util, "find_spec", lambda name: None)

    code = audit.main()

    assert code == 2
    assert "pip-audit is not installed" in capsys.readouterr().out
