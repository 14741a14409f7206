"""Proof that training learns: phantom chests whose text controls measurable findings.

    nice python bench/learnability.py --out var/bench/learnability

1. Draw a phantom data set (generator.phantoms): four binary findings, sixteen
   combinations; two combinations are held out of training entirely. Captions are
   written as a short report would: the heart is always stated, a finding is named
   when present, "no pleural effusion" when neither base has one.
2. Score the untrained tiny model: generate each held-out prompt with several seeds and
   read the findings back from the pixels with fixed rules.
3. Full fine-tuning of the tiny base through generator.training: the VAE first
   (reconstruction), then every UNet and text-encoder weight. Score again.
4. LoRA on top of the fine-tuned model, through the same code. Score again.

Prints attribute accuracy on the held-out combinations (and on the trained ones) for
the three models side by side, and writes report.json beside the models.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from generator.loading import load_pipeline
from generator.lora import activate_adapter, ensure_adapter
from generator.phantoms import (
    ALWAYS_STATED,
    ATTRIBUTES,
    CAPTION_STYLES,
    WORDINGS,
    Findings,
    all_findings,
    attribute_hits,
    draw,
    measure,
)
from generator.sampling import GenerationParams, generate
from generator.tiny import build_tiny_pipeline
from generator.training import TrainingConfig, TrainingExample, train

HELD_OUT = (Findings(False, True, True, False), Findings(True, False, False, True))


def parse_combos(text: str) -> tuple[Findings, ...]:
    """ "FTTF,TFFT" -> the findings those letters give, T or F for each of
    generator.phantoms.ATTRIBUTES in order (heart, left, right, nodule)."""
    combos = []
    for letters in text.split(","):
        letters = letters.strip().upper()
        if len(letters) != len(ATTRIBUTES) or set(letters) - {"T", "F"}:
            raise ValueError(
                f"held-out combination must be {len(ATTRIBUTES)} letters T/F "
                f"({', '.join(ATTRIBUTES)}), got {letters!r}"
            )
        combos.append(Findings(*(letter == "T" for letter in letters)))
    return tuple(combos)


def code(findings: Findings) -> str:
    return "".join("T" if flag else "F" for flag in findings.as_tuple())


@dataclass(frozen=True)
class Scale:
    """How much to train and test; the defaults are the full benchmark."""

    per_combo: int = 24
    vae_epochs: int = 12
    epochs: int = 60
    lora_epochs: int = 10
    batch_size: int = 16
    seeds: int = 20
    # Seeds per trained combination: there are 14, and they are a check of fit only.
    trained_seeds: int = 3
    sample_steps: int = 20
    train_text_encoder: int = 1
    # Classifier-free guidance: captions dropped in training, guided sampling.
    caption_dropout: float = 0.1
    guidance: float = 4.0
    # Caption style (generator.phantoms.CAPTION_STYLES): 0 "present" names only the
    # present findings; 1 "explicit" states every attribute ("normal heart size,
    # left pleural effusion, clear right lung base"); 2 "reported" states the heart
    # and names the other findings only when present ("normal heart size, no pleural
    # effusion").
    caption_style: int = 2
    # Chance that a statement the style always makes (the heart in "reported", any
    # in "explicit") is left out of a training caption: the partial caption is still
    # true, and it shows the other phrases without it.
    phrase_dropout: float = 0.0
    # Training and sampling size; phantoms are drawn at 64² and resized, and read
    # back at 64².
    resolution: int = 64
    # 1: training captions draw each statement's wording from the phrase and two
    # paraphrases; the scored prompts keep the plain phrases.
    paraphrase: int = 0
    # The combinations kept out of training, one T/F letter per attribute. The
    # default pair is the benchmark's; others serve to tune settings without
    # looking at it (see bench/README.md).
    held_out: str = ",".join(code(findings) for findings in HELD_OUT)
    # Seeds the phantoms and the training run.
    seed: int = 0


def phantom_examples(
    per_combo: int,
    seed: int = 0,
    style: str = "present",
    phrase_dropout: float = 0.0,
    paraphrase: int = 0,
    held_out: tuple[Findings, ...] = HELD_OUT,
) -> list[TrainingExample]:
    """``per_combo`` phantoms of every combination except the held-out ones.

    The findings are named in a random order, so the model has to read which
    phrases are present rather than where they sit in the caption. ``style`` is one
    of generator.phantoms.CAPTION_STYLES. ``phrase_dropout`` leaves out, with that
    chance, each statement the style always makes (ALWAYS_STATED): without it the
    caption claims nothing about that attribute, so it stays true. A statement made
    only when a finding is present is never left out, as its absence says the
    finding is absent. One statement always stays. With ``paraphrase``, each
    statement's wording is drawn from its variants.
    """
    rng = np.random.default_rng(seed)
    examples = []
    for findings in all_findings():
        if findings in held_out:
            continue
        for _ in range(per_combo):
            order = [int(i) for i in rng.permutation(len(ATTRIBUTES))]
            if phrase_dropout:
                kept = [
                    i
                    for i in order
                    if i not in ALWAYS_STATED[style] or rng.random() >= phrase_dropout
                ]
                order = kept or order[:1]
            wording = tuple(
                int(w)
                for w in rng.integers(
                    0, WORDINGS if paraphrase else 1, size=len(ATTRIBUTES)
                )
            )
            caption = findings.caption(tuple(order), style, wording)
            examples.append(TrainingExample(draw(findings, rng), caption))
    return examples


def accuracy(pipe, combos: list[Findings], scale: Scale, seeds: int) -> dict:
    """Share of (image, attribute) pairs that show what the prompt asked for, overall
    and per attribute, and what was seen for each combination asked for."""
    style = CAPTION_STYLES[scale.caption_style]
    hits, exact, seen_by_combo = [], [], {}
    for findings in combos:
        seen_codes = seen_by_combo.setdefault(code(findings), {})
        for seed in range(seeds):
            params = GenerationParams(
                prompt=findings.caption(style=style),
                seed=1000 + seed,
                steps=scale.sample_steps,
                guidance_scale=scale.guidance,
                width=scale.resolution,
                height=scale.resolution,
            )
            seen = measure(generate(pipe, params).images[0])
            seen_code = code(seen)
            seen_codes[seen_code] = seen_codes.get(seen_code, 0) + 1
            row = attribute_hits(findings, seen)
            hits.append(row)
            exact.append(all(row))
    per_attribute = np.mean(hits, axis=0)
    return {
        "attribute": float(np.mean(hits)),
        "all_attributes": float(np.mean(exact)),
        "per_attribute": dict(zip(ATTRIBUTES, map(float, per_attribute), strict=True)),
        "seen": seen_by_combo,
    }


def score(pipe, scale: Scale) -> dict:
    held_out = parse_combos(scale.held_out)
    trained = [f for f in all_findings() if f not in held_out]
    return {
        "held_out": accuracy(pipe, list(held_out), scale, scale.seeds),
        "trained": accuracy(pipe, trained, scale, scale.trained_seeds),
    }


def run(out: Path, scale: Scale, log=print) -> dict:
    """The whole benchmark; returns the report (also written to out/report.json)."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    base = out / "base"
    build_tiny_pipeline(seed=scale.seed).save_pretrained(str(base))
    examples = phantom_examples(
        scale.per_combo,
        seed=scale.seed,
        style=CAPTION_STYLES[scale.caption_style],
        phrase_dropout=scale.phrase_dropout,
        paraphrase=scale.paraphrase,
        held_out=parse_combos(scale.held_out),
    )
    report: dict = {"scale": scale.__dict__, "examples": len(examples)}

    report["untrained"] = score(load_pipeline(str(base)), scale)
    log(f"untrained: {report['untrained']}")

    full = TrainingConfig(
        base=str(base),
        output_dir=str(out / "full"),
        mode="full",
        train_text_encoder=bool(scale.train_text_encoder),
        vae_epochs=scale.vae_epochs,
        epochs=scale.epochs,
        resolution=scale.resolution,
        batch_size=scale.batch_size,
        learning_rate=1e-3,
        lr_warmup_steps=20,
        checkpoint_every=100,
        validation_size=16,
        caption_dropout=scale.caption_dropout,
        seed=scale.seed,
    )
    full_result = train(full, examples, progress=_progress(log, "full"))
    report["full_seconds"] = round(full_result.seconds, 1)
    report["full_validation"] = full_result.validation_history
    finetuned = load_pipeline(str(full_result.pipeline_dir))
    report["full_finetune"] = score(finetuned, scale)
    log(f"full fine-tune: {report['full_finetune']}")

    lora = TrainingConfig(
        base=str(full_result.pipeline_dir),
        output_dir=str(out / "lora"),
        target_modules=("to_q", "to_k", "to_v", "to_out.0"),
        epochs=scale.lora_epochs,
        resolution=scale.resolution,
        batch_size=scale.batch_size,
        learning_rate=1e-3,
        checkpoint_every=100,
        validation_size=16,
        caption_dropout=scale.caption_dropout,
        seed=scale.seed,
    )
    lora_result = train(lora, examples, progress=_progress(log, "lora"))
    report["lora_seconds"] = round(lora_result.seconds, 1)
    report["lora_validation"] = lora_result.validation_history
    activate_adapter(finetuned, ensure_adapter(finetuned, lora_result.lora_path))
    report["lora"] = score(finetuned, scale)
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    log(table(report))
    return report


def _progress(log, label: str):
    def report(progress) -> None:
        if progress.step % 50 == 0 or progress.step == progress.total:
            log(
                f"[{label}] step {progress.step}/{progress.total} "
                f"loss {progress.loss:.4f} eta {progress.eta_s:.0f}s"
            )

    return report


def table(report: dict) -> str:
    lines = [
        "attribute accuracy   held-out prompts    (all four)   trained prompts",
    ]
    for key, label in (
        ("untrained", "untrained tiny"),
        ("full_finetune", "full fine-tune"),
        ("lora", "full FT + LoRA"),
    ):
        row = report[key]
        lines.append(
            f"{label:<20} {row['held_out']['attribute']:>16.1%} "
            f"{row['held_out']['all_attributes']:>13.1%} "
            f"{row['trained']['attribute']:>17.1%}"
        )
    lines.append("held-out, per attribute (heart, left, right, nodule), what was seen:")
    for key in ("untrained", "full_finetune", "lora"):
        held_out = report[key]["held_out"]
        per_attribute = " ".join(f"{v:.0%}" for v in held_out["per_attribute"].values())
        lines.append(f"  {key:<14} {per_attribute:<13} {held_out['seen']}")
    lines.append(f"total wall time {report['seconds']:.0f} s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("var/bench/learnability"))
    parser.add_argument("--threads", type=int, default=1)
    for name, value in Scale().__dict__.items():
        flag = f"--{name.replace('_', '-')}"
        parser.add_argument(flag, type=type(value), default=value)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scale = Scale(**{name: getattr(args, name) for name in Scale().__dict__})
    run(args.out, scale)


if __name__ == "__main__":
    main()
