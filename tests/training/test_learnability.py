"""Phantoms whose text controls measurable findings, and the learnability bench."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from bench.learnability import (
    HELD_OUT,
    Scale,
    code,
    parse_combos,
    phantom_examples,
    run,
)
from generator.phantoms import Findings, all_findings, attribute_hits, draw, measure


def test_it_reads_back_every_finding_it_draws():
    rng = np.random.default_rng(3)
    hits = [
        hit
        for findings in all_findings()
        for _ in range(10)
        for hit in attribute_hits(findings, measure(draw(findings, rng)))
    ]
    assert all(hits)


def test_it_names_the_present_findings_in_the_order_asked():
    findings = Findings(True, False, True, nodule=True)
    assert findings.caption() == (
        "cardiomegaly, right pleural effusion, right upper lobe nodule"
    )
    assert findings.caption((3, 2, 1, 0)) == (
        "right upper lobe nodule, right pleural effusion, cardiomegaly"
    )
    assert Findings(False, False, False).caption() == "no acute findings"


def test_an_explicit_caption_states_every_attribute_normal_or_not():
    findings = Findings(True, False, True)
    assert findings.caption(style="explicit") == (
        "cardiomegaly, clear left lung base, right pleural effusion, "
        "no pulmonary nodule"
    )
    assert findings.caption((1,), style="explicit") == "clear left lung base"
    with pytest.raises(ValueError, match="got 'terse'"):
        findings.caption(style="terse")


def test_a_reported_caption_states_the_heart_and_names_effusions_when_present():
    assert Findings(False, False, False).caption(style="reported") == (
        "normal heart size, no pleural effusion"
    )
    assert Findings(True, False, True).caption((2, 1, 0), style="reported") == (
        "right pleural effusion, cardiomegaly"
    )


def test_paraphrases_vary_the_wording_and_keep_the_meaning():
    findings = Findings(True, True, False)
    assert findings.caption(style="explicit", wording=(1, 2, 1, 1)) == (
        "enlarged cardiac silhouette, left basal effusion, "
        "right costophrenic angle is sharp, no nodule"
    )
    examples = phantom_examples(per_combo=20, style="explicit", paraphrase=1)
    assert len({example.caption for example in examples}) > 60


def test_phrase_dropout_leaves_out_some_stated_attributes_but_never_all():
    examples = phantom_examples(per_combo=30, style="explicit", phrase_dropout=0.5)
    phrases = [example.caption.split(", ") for example in examples]

    assert min(len(stated) for stated in phrases) == 1
    assert max(len(stated) for stated in phrases) == 4
    assert all(stated for stated in phrases)


def test_reported_captions_may_leave_out_the_heart_but_never_a_present_effusion():
    examples = phantom_examples(per_combo=40, style="reported", phrase_dropout=0.5)
    heart_phrases = {"cardiomegaly", "normal heart size"}
    effusions = {"left pleural effusion", "right pleural effusion"}
    by_combo: dict[frozenset, set] = {}
    for example, findings in zip(examples, _combos_in_training(40), strict=True):
        phrases = frozenset(example.caption.split(", "))
        stated = {
            "left pleural effusion" if findings.left_effusion else None,
            "right pleural effusion" if findings.right_effusion else None,
        } - {None}
        assert phrases & effusions == stated
        by_combo.setdefault(findings, set()).add(bool(phrases & heart_phrases))

    assert all(stated == {True, False} for stated in by_combo.values())


def _combos_in_training(per_combo: int) -> list[Findings]:
    return [f for f in all_findings() if f not in HELD_OUT for _ in range(per_combo)]


def test_it_keeps_the_held_out_combinations_out_of_training():
    held_out = {
        findings.caption(order)
        for findings in HELD_OUT
        for order in itertools.permutations(range(4))
    }
    captions = {example.caption for example in phantom_examples(per_combo=20)}
    assert not captions & held_out
    assert "left pleural effusion" in captions


def test_held_out_combinations_are_named_by_one_letter_per_attribute():
    assert parse_combos("fttf, TFFT") == HELD_OUT
    assert [code(findings) for findings in HELD_OUT] == ["FTTF", "TFFT"]
    with pytest.raises(ValueError, match="got 'TXFF'"):
        parse_combos("FFFF,TXFF")
    with pytest.raises(ValueError, match="got 'TTF'"):
        parse_combos("TTF")


def test_another_held_out_pair_leaves_its_own_combinations_out():
    held_out = parse_combos("FFFF,TTTF")
    examples = phantom_examples(per_combo=5, style="reported", held_out=held_out)
    phrase_sets = {frozenset(example.caption.split(", ")) for example in examples}

    assert len(examples) == 70
    assert {"normal heart size", "no pleural effusion"} not in phrase_sets
    assert {"normal heart size", "left pleural effusion", "right pleural effusion"} in (
        phrase_sets
    )


@pytest.mark.slow
def test_it_runs_the_benchmark_end_to_end_at_a_tiny_scale(tmp_path, clip_tokenizer):
    scale = Scale(
        per_combo=4,
        vae_epochs=1,
        epochs=1,
        lora_epochs=1,
        batch_size=8,
        seeds=1,
        sample_steps=2,
    )
    report = run(tmp_path, scale, log=lambda _: None)

    for model in ("untrained", "full_finetune", "lora"):
        for prompts in ("held_out", "trained"):
            assert 0 <= report[model][prompts]["attribute"] <= 1
    assert report["examples"] == 4 * 14
    assert json.loads((tmp_path / "report.json").read_text())["seconds"] > 0
