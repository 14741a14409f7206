from __future__ import annotations

import tarfile
from collections.abc import Iterator

import pytest
from defusedxml import ElementTree

from generator.prompts import cut_prompt, text_token_budget
from tests.conftest import SHARED_DATA, require_shared

REPORTS = SHARED_DATA / "openi" / "NLMCXR_reports.tgz"


def iu_findings(archive) -> Iterator[tuple[str, str]]:
    """(member name, FINDINGS text) for each report in the IU X-ray archive."""
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if not member.name.endswith(".xml"):
                continue
            root = ElementTree.fromstring(tar.extractfile(member).read())
            for node in root.iter("AbstractText"):
                if node.get("Label") == "FINDINGS" and node.text:
                    yield member.name, node.text.strip()


@pytest.fixture(scope="module")
def long_report(clip_tokenizer) -> tuple[str, str]:
    """The first real IU report whose findings run past CLIP's 75 text tokens."""
    archive = require_shared(REPORTS)
    for name, text in iu_findings(archive):
        if len(clip_tokenizer(text, add_special_tokens=False)["input_ids"]) > 75:
            return name, text
    pytest.fail(f"no report in {archive} has findings longer than 75 tokens")


@pytest.mark.needs_shared
def test_it_cuts_a_long_iu_report_to_77_tokens(clip_tokenizer, long_report):
    _, text = long_report

    cut = cut_prompt(clip_tokenizer, text)
    ids = clip_tokenizer(cut.text)["input_ids"]

    assert cut.truncated
    assert cut.kept_tokens == 75
    assert len(ids) == 77
    assert ids[0] == clip_tokenizer.bos_token_id
    assert ids[-1] == clip_tokenizer.eos_token_id


@pytest.mark.needs_shared
def test_it_keeps_and_drops_text_that_rebuild_the_report(clip_tokenizer, long_report):
    _, text = long_report

    cut = cut_prompt(clip_tokenizer, text)

    assert cut.dropped
    assert text.startswith(cut.text)
    assert text[len(cut.text) :].strip() == cut.dropped
    assert cut.text_tokens == len(
        clip_tokenizer(text, add_special_tokens=False)["input_ids"]
    )


@pytest.mark.needs_shared
def test_it_keeps_the_start_of_what_the_pipeline_would_see(clip_tokenizer, long_report):
    """All but the last kept token match the pipeline's own 77-token truncation."""
    _, text = long_report
    window = clip_tokenizer(
        text, truncation=True, max_length=clip_tokenizer.model_max_length
    )["input_ids"]

    ids = clip_tokenizer(cut_prompt(clip_tokenizer, text).text)["input_ids"]

    assert ids[:75] == window[:75]


def test_it_leaves_a_short_prompt_whole(clip_tokenizer):
    cut = cut_prompt(clip_tokenizer, "  Heart size normal. Lungs are clear.  ")

    assert cut.text == "Heart size normal. Lungs are clear."
    assert cut.dropped == ""
    assert not cut.truncated


def test_it_fits_75_text_tokens_in_clips_window(clip_tokenizer):
    assert clip_tokenizer.model_max_length == 77
    assert text_token_budget(clip_tokenizer) == 75


def test_it_cuts_a_prompt_of_exactly_76_tokens_by_one(clip_tokenizer):
    text = " ".join(["lung"] * 76)

    cut = cut_prompt(clip_tokenizer, text)

    assert cut.text == " ".join(["lung"] * 75)
    assert cut.dropped == "lung"
