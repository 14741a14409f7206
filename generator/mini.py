"""The mini model: a small SD-shaped text-to-CXR model trained on public-cxr on a CPU.

Same classes and wiring as SD v1.x (AutoencoderKL, UNet2DConditionModel with
cross-attention, CLIPTextModel with the real 49,408-token CLIP tokenizer, PNDM with
SD's betas), so it loads through ``generator.loading.load_pipeline`` exactly like
SD v1.4. It is sized for a 2-core CPU: 64² images, a VAE with 4x downsampling
(16² latents) and a three-level UNet.

Training runs in two stages through ``generator.training``:

1. the VAE alone, with the reconstruction loss of ``train_vae`` under a cosine
   schedule (checkpointed in ``<work>/vae-run``; saved as ``<work>/vae-stage``,
   skipped when already there);
2. full fine-tuning of the UNet and the text encoder with the diffusion loss of
   ``train``, in rounds of cosine schedules, each starting from the previous
   round's weights (checkpointed; a rerun resumes from the newest checkpoint).

The result is copied to ``--out`` in diffusers layout with half-precision weights.

    python -m generator.mini --data ../shared/data/public-cxr --out models/mini-cxr
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import (
    AutoencoderKL,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTokenizer

from generator.errors import InvalidParameterError
from generator.loading import Placement, load_pipeline
from generator.tiny import (
    PROJECT_ROOT,
    assemble_pipeline,
    clip_text_encoder,
    load_clip_tokenizer,
)
from generator.training import (
    TrainingConfig,
    TrainingExample,
    TrainingProgress,
    TrainingResult,
    example_tensors,
    train,
    train_vae,
)

RESOLUTION = 64
LATENT_SIZE = 16
HOLDOUT_FRACTION = 0.1
SPLIT_SEED = 0
# Training copies of some images with an empty caption teach the unconditional
# prediction that classifier-free guidance subtracts.
UNCONDITIONAL_FRACTION = 0.15
LABELS_FILE = "labels.csv"
IMAGES_DIR = "images"
DEFAULT_WORK_ROOT = PROJECT_ROOT / "var" / "train_mini"
FP32_CPU = Placement("cpu", torch.float32, False)
MISSING_LABELS = "No {name} in {path}: expected the public-cxr folder"
VALIDATION_PROMPTS = (
    "AP chest radiograph of a 60-year-old male: no finding",
    "PA chest radiograph of a 60-year-old female: no finding",
    "AP chest radiograph of a 60-year-old male: pneumonia",
    "AP chest radiograph of a male COVID-19-positive patient",
)


@dataclass(frozen=True)
class Record:
    """One row of public-cxr's labels.csv."""

    path: Path
    text: str
    labels: tuple[str, ...]
    view: str
    patient_id: str
    source: str


def read_records(data: Path) -> list[Record]:
    """Every image of the public-cxr folder ``data`` with its caption and labels."""
    labels_path = data / LABELS_FILE
    if not labels_path.is_file():
        raise FileNotFoundError(MISSING_LABELS.format(name=LABELS_FILE, path=data))
    with labels_path.open(newline="") as handle:
        return [
            Record(
                path=data / IMAGES_DIR / row["filename"],
                text=row["text"],
                labels=tuple(row["labels"].split("|")),
                view=row["view"],
                patient_id=f"{row['source']}:{row['patient_id']}",
                source=row["source"],
            )
            for row in csv.DictReader(handle)
        ]


@dataclass(frozen=True)
class Split:
    train: list[Record]
    heldout: list[Record]


def split_by_patient(
    records: Sequence[Record],
    fraction: float = HOLDOUT_FRACTION,
    seed: int = SPLIT_SEED,
) -> Split:
    """Hold out ``fraction`` of the patients (all of their images), seeded."""
    patients = sorted({record.patient_id for record in records})
    random.Random(seed).shuffle(patients)
    held = set(patients[: round(len(patients) * fraction)])
    return Split(
        train=[r for r in records if r.patient_id not in held],
        heldout=[r for r in records if r.patient_id in held],
    )


def training_examples(
    records: Sequence[Record],
    unconditional_fraction: float = UNCONDITIONAL_FRACTION,
    seed: int = SPLIT_SEED,
) -> list[TrainingExample]:
    """One example per image, plus empty-caption copies of a seeded subset."""
    examples = [TrainingExample(image=r.path, caption=r.text) for r in records]
    chosen = random.Random(seed).sample(
        list(records), round(len(records) * unconditional_fraction)
    )
    return examples + [TrainingExample(image=r.path, caption="") for r in chosen]


def build_mini_pipeline(
    seed: int = 0, tokenizer: CLIPTokenizer | None = None
) -> StableDiffusionPipeline:
    """The untrained mini model: SD v1.x's classes at 64², random weights from seed."""
    tokenizer = tokenizer or load_clip_tokenizer()
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),  # three levels: 4x downsampling
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=RESOLUTION,
    )
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=(
            "DownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
        ),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    text_encoder = clip_text_encoder(tokenizer, width=64)
    return assemble_pipeline(vae, text_encoder, tokenizer, unet)


@dataclass(frozen=True)
class MiniTrainingPlan:
    """The two stages' settings; the defaults are the committed model's."""

    seed: int = 0
    vae_epochs: int = 40
    vae_batch_size: int = 16
    vae_learning_rate: float = 2e-3
    vae_warmup_steps: int = 50
    batch_size: int = 32
    epochs: int = 100
    max_steps: int | None = 1600
    learning_rate: float = 8e-4
    lr_warmup_steps: int = 50
    # Later rounds restart the cosine schedule lower (a warm restart): each round
    # is a separate, resumable run that starts from the previous round's weights.
    rounds: int = 2
    restart_learning_rate: float = 4e-4
    restart_warmup_steps: int = 20
    snr_gamma: float | None = 5.0
    checkpoint_every: int = 50
    sample_steps: int = 10
    threads: int = 1

    def vae_config(self, base: Path, work: Path) -> TrainingConfig:
        return TrainingConfig(
            base=str(base),
            output_dir=str(work / "vae-run"),
            mode="full",
            resolution=RESOLUTION,
            batch_size=self.vae_batch_size,
            vae_epochs=self.vae_epochs,
            vae_learning_rate=self.vae_learning_rate,
            lr_schedule="cosine",
            lr_warmup_steps=self.vae_warmup_steps,
            checkpoint_every=self.checkpoint_every,
            seed=self.seed,
        )

    def unet_config(self, base: Path, work: Path, round_index: int) -> TrainingConfig:
        first = round_index == 0
        return TrainingConfig(
            base=str(base),
            output_dir=str(work / f"unet-run-{round_index + 1}"),
            mode="full",
            train_text_encoder=True,
            resolution=RESOLUTION,
            batch_size=self.batch_size,
            epochs=self.epochs,
            max_steps=self.max_steps,
            learning_rate=self.learning_rate if first else self.restart_learning_rate,
            lr_warmup_steps=(
                self.lr_warmup_steps if first else self.restart_warmup_steps
            ),
            snr_gamma=self.snr_gamma,
            seed=self.seed + round_index,
            checkpoint_every=self.checkpoint_every,
            validation_prompts=VALIDATION_PROMPTS,
            validation_size=16,
            sample_steps=self.sample_steps,
        )


def train_vae_stage(
    records: Sequence[Record],
    plan: MiniTrainingPlan,
    work: Path,
    progress: Callable[[TrainingProgress], None] | None = None,
) -> tuple[Path, dict]:
    """The untrained mini model with a VAE fitted to ``records``, saved under work.

    Returns the folder and a record of the stage (steps, seconds, final loss), kept
    in ``vae-stage.json`` so that a resumed run still reports it. An interrupted
    stage resumes from its checkpoint in ``<work>/vae-run``.
    """
    folder, record_path = work / "vae-stage", work / "vae-stage.json"
    if (folder / "model_index.json").is_file():
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        return folder, record
    started = time.perf_counter()
    untrained = work / "untrained"
    build_mini_pipeline(plan.seed).save_pretrained(str(untrained))
    config = plan.vae_config(untrained, work)
    pipe = load_pipeline(str(untrained), placement=FP32_CPU)
    pixels = example_tensors(
        [TrainingExample(image=r.path, caption=r.text) for r in records], RESOLUTION
    )
    history = train_vae(pipe, pixels, config, Accelerator(cpu=True), progress)
    partial = work / "vae-stage.partial"
    pipe.save_pretrained(str(partial))
    partial.replace(folder)
    record = {
        "steps": len(history),
        "seconds": round(time.perf_counter() - started, 1),
        "final_loss": history[-1][1] if history else None,
    }
    record_path.write_text(json.dumps(record) + "\n")
    return folder, record


def save_half_precision(pipeline_dir: Path, out: Path) -> Path:
    """Copy a trained pipeline to ``out`` with float16 safetensors (half the bytes).

    load_pipeline casts them to the placement's dtype (bfloat16 or float32 on a CPU).
    """
    pipe = StableDiffusionPipeline.from_pretrained(
        str(pipeline_dir), dtype=torch.float16
    )
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(str(staging), safe_serialization=True)
    for child in staging.iterdir():
        target = out / child.name
        if target.is_dir():
            shutil.rmtree(target)
        out.mkdir(parents=True, exist_ok=True)
        child.replace(target)
    staging.rmdir()
    return out


@dataclass
class MiniTrainingResult:
    out: Path
    split: Split
    vae: dict
    rounds: list[TrainingResult]

    def summary(self) -> dict:
        return {
            "resolution": RESOLUTION,
            "train_images": len(self.split.train),
            "heldout_images": len(self.split.heldout),
            "heldout_patients": len({r.patient_id for r in self.split.heldout}),
            "vae": self.vae,
            "unet_rounds": [
                {**result.metrics(), "resumed_from": result.resumed_from}
                for result in self.rounds
            ],
        }


def train_mini(
    data: Path,
    out: Path,
    work: Path | None = None,
    plan: MiniTrainingPlan | None = None,
    progress: Callable[[TrainingProgress], None] | None = None,
) -> MiniTrainingResult:
    """Train the mini model on public-cxr ``data``; write it to ``out``.

    Rerunning after an interruption skips a finished VAE stage and resumes the UNet
    stage from its newest checkpoint in ``work`` (default var/train_mini/<out name>).
    """
    plan = plan or MiniTrainingPlan()
    if plan.rounds < 1:
        raise InvalidParameterError(f"rounds must be at least 1, got {plan.rounds}")
    if plan.threads < 1:
        raise InvalidParameterError(f"threads must be at least 1, got {plan.threads}")
    work = work or DEFAULT_WORK_ROOT / out.name
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(plan.threads)

    # 1. Hold out whole patients; train on the rest.
    split = split_by_patient(read_records(data), seed=plan.seed)

    # 2. The VAE alone, with the reconstruction loss.
    vae_dir, vae_record = train_vae_stage(split.train, plan, work, progress)

    # 3. UNet and text encoder with the diffusion loss, checkpointed, in rounds.
    examples = training_examples(split.train, seed=plan.seed)
    rounds, base = [], vae_dir
    for round_index in range(plan.rounds):
        config = plan.unet_config(base, work, round_index)
        rounds.append(train(config, examples, progress))
        base = rounds[-1].pipeline_dir

    # 4. The artefact: diffusers layout, float16 safetensors, and a summary.
    save_half_precision(base, out)
    trained = MiniTrainingResult(out, split, vae_record, rounds)
    (out / "training_summary.json").write_text(
        json.dumps(trained.summary(), indent=2) + "\n"
    )
    return trained


def print_progress(update: TrainingProgress) -> None:
    if update.step % 10 == 0 or update.step == update.total:
        print(
            f"step {update.step}/{update.total} epoch {update.epoch} "
            f"loss {update.loss:.4f} lr {update.learning_rate:.2e} "
            f"eta {update.eta_s / 60:.1f} min",
            flush=True,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options, shared by ``python -m`` and ``manage.py``."""
    defaults = MiniTrainingPlan()
    parser.add_argument("--data", type=Path, required=True, help="public-cxr folder")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--work", type=Path, help="checkpoint folder")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--vae-epochs", type=int, default=defaults.vae_epochs)
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--threads", type=int, default=defaults.threads)


def run_from_arguments(args: argparse.Namespace) -> MiniTrainingResult:
    plan = MiniTrainingPlan(
        seed=args.seed,
        vae_epochs=args.vae_epochs,
        max_steps=args.max_steps,
        rounds=args.rounds,
        threads=args.threads,
    )
    result = train_mini(args.data, args.out, args.work, plan, print_progress)
    print(json.dumps(result.summary(), indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    run_from_arguments(parser.parse_args())


if __name__ == "__main__":
    main()
