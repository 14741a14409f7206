"""Phantoms whose text controls measurable findings, and the learnability bench."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from bench.learnability import HELD_OUT, Scale, phantom_examples, run
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
    findings = Findings(True, False, True)
    assert findings.caption() == "cardiomegaly, right pleural effusion"
    assert findings.caption((2, 1, 0)) == "right pleural effusion, cardiomegaly"
    assert Findings(False, False, False).caption() == "no acute findings"


def test_it_keeps_the_held_out_combinations_out_of_training():
    held_out = {
        findings.caption(order)
        for findings in HELD_OUT
        for order in itertools.permutations(range(3))
    }
    captions = {example.caption for example in phantom_examples(per_combo=20)}
    assert not captions & held_out
    assert "cardiomegaly" in captions


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
    assert report["examples"] == 24
    assert json.loads((tmp_path / "report.json").read_text())["seconds"] > 0
