"""The genuine Open-i reports archive: every report imports, counts checked twice."""

from __future__ import annotations

import re
import tarfile
import time

import pytest

from tests.conftest import SHARED_DATA, require_shared
from xrayweb.cases.models import Case

pytestmark = [pytest.mark.needs_shared, pytest.mark.slow]

SECTION = r'<AbstractText Label="{label}">([^<]*)</AbstractText>'
MESH_TERM = re.compile(r"<(major|automatic)>\s*[^<\s][^<]*</\1>")


def independent_counts(path) -> dict[str, int]:
    """Counts from a plain regex pass over the archive, not the importer's parser."""
    counts = {"reports": 0, "impression": 0, "findings": 0, "mesh": 0}
    with tarfile.open(path, "r:gz") as archive:
        for member in archive:
            if not member.name.endswith(".xml"):
                continue
            text = archive.extractfile(member).read().decode()
            counts["reports"] += 1
            for label in ("impression", "findings"):
                match = re.search(SECTION.format(label=label.upper()), text)
                counts[label] += bool(match and match.group(1).strip())
            counts["mesh"] += bool(MESH_TERM.search(text))
    return counts


def test_it_imports_every_genuine_report_once(importer, django_assert_max_num_queries):
    archive = require_shared(SHARED_DATA / "openi" / "NLMCXR_reports.tgz")
    expected = independent_counts(archive)

    started = time.monotonic()
    report = importer(reports=archive, seed=7)
    elapsed = time.monotonic() - started

    assert expected["reports"] == 3955
    assert report.cases_created == 3955
    assert report.skipped_total == 0
    assert Case.objects.count() == 3955
    assert Case.objects.exclude(impression="").count() == expected["impression"]
    assert Case.objects.exclude(findings="").count() == expected["findings"]
    assert Case.objects.exclude(mesh_text="").count() == expected["mesh"]
    assert elapsed < 30, f"import took {elapsed:.1f} s"

    with django_assert_max_num_queries(20):
        again = importer(reports=archive, seed=7)
    assert (again.cases_created, again.cases_updated) == (0, 0)
    assert again.cases_unchanged == 3955
    assert Case.objects.count() == 3955

    prompt_split_and_placeholders_are_right()


def prompt_split_and_placeholders_are_right() -> None:
    case = Case.objects.get(uid="CXR1")
    assert case.impression == "Normal chest x-XXXX."
    assert case.prompt == "Normal chest."
    assert case.mesh_major == ["normal"]
    assert case.problems == ["normal"]
    assert case.split_seed == 7
    assert not Case.objects.filter(prompt__contains="XXXX").exists()
    assert Case.objects.filter(prompt_truncated=True).exists()
    splits = dict(
        (s, Case.objects.filter(split=s).count()) for s in ("train", "val", "test")
    )
    assert sum(splits.values()) == 3955
    assert 0.75 < splits["train"] / 3955 < 0.85
    assert splits["val"] > 300
    assert splits["test"] > 300
