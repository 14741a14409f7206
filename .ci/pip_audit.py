"""Audit the installed .venv with pip-audit and say plainly what was checked.

pip-audit audits the environment it runs in (``--local``): no second environment is
built, so no other torch is pulled. Ids in .ci/pip-audit-ignore.txt are ignored, each
with the reason it was reviewed. Exit 1 for a known, unignored vulnerability; when no
vulnerability database answers (PyPI's, then OSV's), say that nothing was audited and
exit 0, rather than fail the build or report "no known vulnerabilities" for packages
never looked up. Exit 2 when pip-audit itself is not installed: that is a broken
environment, not an unreachable database.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORE_FILE = ROOT / ".ci" / "pip-audit-ignore.txt"
SERVICES = ("pypi", "osv")
TIMEOUT_S = 600
NOT_INSTALLED = (
    "pip-audit: NOT AUDITED: pip-audit is not installed in {python}; "
    "install requirements.txt (it pins pip-audit)."
)
UNREACHABLE = (
    "pip-audit: NOT AUDITED: no vulnerability database could be reached "
    "({detail}). The dependencies were not checked for known vulnerabilities."
)


@dataclass(frozen=True)
class Verdict:
    message: str
    code: int


def ignored_ids(text: str) -> list[str]:
    """Vulnerability ids from the ignore file: ``ID  # reason`` per line."""
    ids = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        vuln, _, reason = line.partition("#")
        if not reason.strip():
            raise SystemExit(
                f"{IGNORE_FILE.name}:{number}: {vuln.strip()} needs a reason"
            )
        ids.append(vuln.strip())
    return ids


def verdict(report: dict, service: str, ignored: list[str]) -> Verdict | None:
    """What pip-audit's JSON report says; None when no package was looked up (the
    database did not answer, or the report lists none), so that another one is
    tried: an audit of nothing never reads as clean."""
    dependencies = report.get("dependencies", [])
    audited = [dep for dep in dependencies if "skip_reason" not in dep]
    if not audited:
        return None
    found = [
        f"{dep['name']} {dep['version']}: {vuln['id']} (fixed in "
        f"{', '.join(vuln.get('fix_versions', [])) or 'no release yet'})"
        for dep in audited
        for vuln in dep.get("vulns", [])
    ]
    skipped = len(dependencies) - len(audited)
    summary = (
        f"pip-audit ({service}): {len(audited)} packages audited, {skipped} not "
        f"found in the database, {len(ignored)} ids ignored by review"
    )
    if found:
        lines = "\n  ".join(found)
        return Verdict(f"{summary}; KNOWN VULNERABILITIES:\n  {lines}", 1)
    return Verdict(f"{summary}; no known vulnerabilities.", 0)


def run(service: str, ignored: list[str]) -> tuple[dict | None, str]:
    command = [sys.executable, "-m", "pip_audit", "--local", "--format", "json"]
    command += ["--progress-spinner", "off", "--vulnerability-service", service]
    for vuln in ignored:
        command += ["--ignore-vuln", vuln]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return None, f"no answer within {TIMEOUT_S} s"
    try:
        return json.loads(done.stdout), ""
    except json.JSONDecodeError:
        lines = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
        return None, lines[-1]


def main() -> int:
    if importlib.util.find_spec("pip_audit") is None:
        print(NOT_INSTALLED.format(python=sys.executable))
        return 2
    ignored = ignored_ids(IGNORE_FILE.read_text())
    reasons = []
    for service in SERVICES:
        report, error = run(service, ignored)
        found = verdict(report, service, ignored) if report is not None else None
        if found is not None:
            print(found.message)
            return found.code
        if report is not None:
            skips = [dep["skip_reason"] for dep in report.get("dependencies", [])]
            error = (
                f"all {len(skips)} packages skipped, e.g. {skips[0]!r}"
                if skips
                else "the report listed no packages"
            )
        reasons.append(f"{service}: {error}")
    print(UNREACHABLE.format(detail="; ".join(reasons)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
