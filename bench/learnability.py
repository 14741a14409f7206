"""Proof that training learns: phantom chests whose text controls measurable findings.

    nice python bench/learnability.py --out var/bench/learnability

1. Draw a phantom data set (generator.phantoms): three binary findings, eight
   combinations; two combinations are held out of training entirely.
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

HELD_OUT = (Findings(False, True, True), Findings(True, False, False))


@dataclass(frozen=True)
class Scale:
    """How much to train and test; the defaults are the full benchmark."""

    per_combo: int = 48
    vae_epochs: int = 12
    epochs: int = 60
    lora_epochs: int = 10
    batch_size: int = 16
    seeds: int = 10
    sample_steps: int = 20
    train_text_encoder: int = 1
    # Classifier-free guidance: captions dropped in training, guided sampling.
    caption_dropout: float = 0.1
    guidance: float = 4.0
    # Caption style (generator.phantoms.CAPTION_STYLES): 0 "present" names only the
    # present findings; 1 "explicit" states every attribute ("normal heart size,
    # left pleural effusion, clear right lung base"); 2 "reported" states the heart
    # and names effusions only when present ("normal heart size, no pleural
    # effusion").
    caption_style: int = 1
    # Chance that one stated attribute is left out of a training caption: a partial
    # caption is still a true description, and it shows each phrase on its own.
    phrase_dropout: float = 0.3
    # Training and sampling size; phantoms are drawn at 64² and resized, and read
    # back at 64².
    resolution: int = 64
    # 1: training captions draw each statement's wording from the phrase and two
    # paraphrases; the scored prompts keep the plain phrases.
    paraphrase: int = 0


def phantom_examples(
    per_combo: int,
    seed: int = 0,
    style: str = "present",
    phrase_dropout: float = 0.0,
    paraphrase: int = 0,
) -> list[TrainingExample]:
    """``per_combo`` phantoms of every combination except the held-out ones.

    The findings are named in a random order, so the model has to read which
    phrases are present rather than where they sit in the caption. ``style`` is one
    of generator.phantoms.CAPTION_STYLES; with "explicit", ``phrase_dropout`` leaves
    each stated attribute out with that chance (one always stays). With
    ``paraphrase``, each statement's wording is drawn from its variants.
    """
    rng = np.random.default_rng(seed)
    examples = []
    for findings in all_findings():
        if findings in HELD_OUT:
            continue
        for _ in range(per_combo):
            order = [int(i) for i in rng.permutation(3)]
            if style == "explicit" and phrase_dropout:
                kept = [i for i in order if rng.random() >= phrase_dropout]
                order = kept or order[:1]
            wording = tuple(
                int(w) for w in rng.integers(0, WORDINGS if paraphrase else 1, size=3)
            )
            caption = findings.caption(tuple(order), style, wording)
            examples.append(TrainingExample(draw(findings, rng), caption))
    return examples


def accuracy(pipe, combos: list[Findings], scale: Scale) -> dict:
    """Share of (image, attribute) pairs that show what the prompt asked for."""
    style = CAPTION_STYLES[scale.caption_style]
    hits, exact = [], []
    for findings in combos:
        for seed in range(scale.seeds):
            params = GenerationParams(
                prompt=findings.caption(style=style),
                seed=1000 + seed,
                steps=scale.sample_steps,
                guidance_scale=scale.guidance,
                width=scale.resolution,
                height=scale.resolution,
            )
            seen = measure(generate(pipe, params).images[0])
            row = attribute_hits(findings, seen)
            hits += row
            exact.append(all(row))
    return {"attribute": float(np.mean(hits)), "all_three": float(np.mean(exact))}


def score(pipe, scale: Scale) -> dict:
    trained = [f for f in all_findings() if f not in HELD_OUT]
    return {
        "held_out": accuracy(pipe, list(HELD_OUT), scale),
        "trained": accuracy(pipe, trained, scale),
    }


def run(out: Path, scale: Scale, log=print) -> dict:
    """The whole benchmark; returns the report (also written to out/report.json)."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    base = out / "base"
    build_tiny_pipeline(seed=0).save_pretrained(str(base))
    examples = phantom_examples(
        scale.per_combo,
        style=CAPTION_STYLES[scale.caption_style],
        phrase_dropout=scale.phrase_dropout,
        paraphrase=scale.paraphrase,
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
        "attribute accuracy   held-out prompts   (all three)   trained prompts",
    ]
    for key, label in (
        ("untrained", "untrained tiny"),
        ("full_finetune", "full fine-tune"),
        ("lora", "full FT + LoRA"),
    ):
        row = report[key]
        lines.append(
            f"{label:<20} {row['held_out']['attribute']:>16.1%} "
            f"{row['held_out']['all_three']:>13.1%} "
            f"{row['trained']['attribute']:>17.1%}"
        )
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
