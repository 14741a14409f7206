"""Prompt sources read into one shape: a list of prompts, each with a case and labels.

Each reader refuses bad input with a message that names the problem; nothing is
ever clamped or guessed (a file that is not UTF-8 is refused, not decoded anyhow).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from django.db.models import QuerySet

from xrayweb.cases.models import Case
from xrayweb.cases.selectors import cases_filtered

EMPTY_FILE = "The file {name!r} is empty."
NOT_UTF8 = (
    "The file {name!r} is not UTF-8 text (byte {position} cannot be read); "
    "save it as UTF-8 and upload it again."
)
NO_PROMPT_COLUMN = (
    "The CSV file {name!r} has no 'prompt' column; its columns are {columns}."
)
EMPTY_PROMPT = "Row {row} of {name!r} has an empty prompt."
NO_PROMPTS = "There are no prompts: {where} holds no non-empty line."
NO_CASES = "No imported case with a prompt matches the filter ({filter})."
PROMPT_COLUMN = "prompt"


@dataclass(frozen=True)
class Prompt:
    text: str
    case: Case | None = None
    labels: dict[str, str] = field(default_factory=dict)


def _decode(data: bytes, name: str) -> str:
    if not data.strip():
        raise ValueError(EMPTY_FILE.format(name=name))
    try:
        return data.decode("utf-8-sig")  # a BOM from spreadsheet programs is fine
    except UnicodeDecodeError as exc:
        raise ValueError(NOT_UTF8.format(name=name, position=exc.start)) from exc


def prompts_from_csv(data: bytes, name: str) -> list[Prompt]:
    """Rows of a CSV with a ``prompt`` column; every other column is kept as labels."""
    reader = csv.DictReader(io.StringIO(_decode(data, name), newline=""))
    columns = [column.strip() for column in reader.fieldnames or []]
    if PROMPT_COLUMN not in columns:
        listed = ", ".join(repr(c) for c in columns) or "none"
        raise ValueError(NO_PROMPT_COLUMN.format(name=name, columns=listed))
    reader.fieldnames = columns
    prompts = []
    for number, row in enumerate(reader, start=2):  # row 1 is the header
        text = (row.get(PROMPT_COLUMN) or "").strip()
        if not text:
            raise ValueError(EMPTY_PROMPT.format(row=number, name=name))
        labels = {
            key: (value or "").strip()
            for key, value in row.items()
            if key not in (PROMPT_COLUMN, None)
        }
        prompts.append(Prompt(text, labels=labels))
    if not prompts:
        raise ValueError(NO_PROMPTS.format(where=f"the file {name!r}"))
    return prompts


def prompts_from_text(data: bytes, name: str) -> list[Prompt]:
    """One prompt per non-empty line of an uploaded text file."""
    return prompts_from_lines(_decode(data, name), where=f"the file {name!r}")


def prompts_from_lines(text: str, where: str = "the box") -> list[Prompt]:
    prompts = [Prompt(line.strip()) for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(NO_PROMPTS.format(where=where))
    return prompts


def matching_cases(*, q: str = "", mesh: str = "", split: str = "", view: str = ""):
    """Cases with a prompt matching the case list's filter, by uid."""
    cases: QuerySet[Case] = cases_filtered(q=q, mesh=mesh, split=split, view=view)
    return cases.exclude(prompt="").order_by("uid")


def prompts_from_cases(
    *, q: str = "", mesh: str = "", split: str = "", view: str = "", limit: int
) -> list[Prompt]:
    """Each matching case's prompt (at most ``limit`` + 1, so the caller can tell
    that the filter matched too many)."""
    cases = matching_cases(q=q, mesh=mesh, split=split, view=view)[: limit + 1]
    prompts = [Prompt(case.prompt, case=case) for case in cases]
    if not prompts:
        raise ValueError(
            NO_CASES.format(filter=cases_filter_text(q, mesh, split, view))
        )
    return prompts


def cases_filter_text(q: str, mesh: str, split: str, view: str) -> str:
    parts = {"report text": q, "MeSH": mesh, "split": split, "view": view}
    shown = [f"{key} {value!r}" for key, value in parts.items() if value.strip()]
    return ", ".join(shown) or "all cases"
