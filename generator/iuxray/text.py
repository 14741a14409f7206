"""Report text → prompt text: the prototype's rule and the XXXX placeholder rule."""

from __future__ import annotations

import re

from generator.iuxray.records import StudyRecord

PLACEHOLDER_WORD = re.compile(r"[^\s]*XXXX[^\s]*")
TRAILING_PUNCT = re.compile(r"[.,;:!?)]+$")
SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?)])")
SPACES = re.compile(r"\s+")
MESH_SEPARATOR = "; "


def strip_placeholders(text: str) -> str:
    """Drop each word holding ``XXXX``, keeping the punctuation that ended it."""

    def keep_punctuation(match: re.Match[str]) -> str:
        tail = TRAILING_PUNCT.search(match.group(0))
        return tail.group(0) if tail else ""

    text = PLACEHOLDER_WORD.sub(keep_punctuation, text)
    text = SPACE_BEFORE_PUNCT.sub(r"\1", SPACES.sub(" ", text))
    return re.sub(r"([.,;:])\1+", r"\1", text).strip(" ,;:")


def prompt_source(study: StudyRecord) -> str:
    """The prototype's rule: the impression, else the findings; placeholders dropped."""
    text = study.impression.strip() or study.findings.strip()
    return strip_placeholders(text)


def mesh_text(study: StudyRecord) -> str:
    """MeSH major and automatic terms in one searchable string."""
    return MESH_SEPARATOR.join(dict.fromkeys(study.mesh_major + study.mesh_automatic))
