"""The mini model: a small SD-shaped text-to-CXR model trained on public-cxr on a CPU.

Same classes and wiring as SD v1.x (AutoencoderKL, UNet2DConditionModel with
cross-attention, CLIPTextModel with the real 49,408-token CLIP tokenizer, PNDM with
SD's betas), so it loads through ``generator.loading.load_pipeline`` exactly like
SD v1.4. Two versions (ARCHITECTURES, PLANS), both sized for a 2-core CPU:

- v1: 64² images, a VAE with 4x downsampling (16² latents), a 1.7 M UNet;
- v2: 128² images, a VAE with 4x downsampling (32² latents) trained on random 64²
  crops, a 10.7 M UNet without attention at its 32² level, trained on latents
  encoded once.

Training runs in stages through ``generator.training``:

1. the VAE alone, with the reconstruction loss of ``train_vae`` under a cosine
   schedule (checkpointed in ``<work>/vae-run/vae-checkpoints``; saved as
   ``<work>/vae-stage``, skipped when already there);
2. where the plan has ``decoder_epochs``, the VAE's decoder alone, encoder frozen
   so the latents do not move, optionally against a patch discriminator (v2; saved
   as ``<work>/decoder-stage``);
3. full fine-tuning of the UNet and the text encoder with the diffusion loss of
   ``train``, in rounds of cosine schedules, each starting from the previous
   round's weights (checkpointed in ``<work>/unet-run-<n>/checkpoints``).

Every stage checkpoints as its plan says (v2: every 3 minutes), and a rerun of the
same command continues the current stage from its newest checkpoint, ending
bit-identical to an uninterrupted run; ``<work>/stages.jsonl`` records when each
invocation of each stage started and ended. The result is copied to ``--out`` in
diffusers layout with half-precision weights. In the background, at low priority:

    nohup nice -n 19 .venv/bin/python -m generator.mini --version v2 \
        --data ../shared/data/public-cxr --out models/mini-cxr-v2 \
        > var/train_mini/mini-cxr-v2.log 2>&1 &
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
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


@dataclass(frozen=True)
class MiniArchitecture:
    """The shape of one mini model version: SD v1.x's classes at a small size."""

    name: str
    resolution: int
    vae_blocks: tuple[int, ...]  # one level per entry: 2^(levels-1)x downsampling
    unet_blocks: tuple[int, ...]
    text_width: int = 64
    latent_channels: int = 4

    @property
    def latent_size(self) -> int:
        return self.resolution // 2 ** (len(self.vae_blocks) - 1)


ARCHITECTURES = {
    # v1: 64², 4x VAE (16² latents), 1.7 M-parameter UNet.
    "v1": MiniArchitecture("v1", RESOLUTION, (16, 32, 64), (32, 64, 64)),
    # v2: 128², 4x VAE with 4 latent channels (32² latents), sized by measurement
    # (docs/mini_v2.md). Its round trip kept the texture that an 8x VAE with 8 or
    # 16 channels blurred: ceiling FID 175 after 20 epochs against 197 for the
    # 16-channel 8x VAE after 40, at the same 0.25 numbers per pixel. The UNet's
    # top level (32²) has no attention, so generation stays near 1.4 s.
    "v2": MiniArchitecture("v2", 128, (32, 64, 128), (64, 128, 192), latent_channels=4),
}


def cpu_precision(wanted: str) -> str:
    """``wanted``, with "auto" made "bf16" where oneDNN has native bf16 kernels on
    this CPU (AVX512-BF16 or AMX) and "no" elsewhere: emulated bf16 convolutions
    fall back to a slow path (a VAE decoder step took 58 s instead of 2 s on Zen 3,
    measured)."""
    if wanted != "auto":
        return wanted
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"


def build_mini_pipeline(
    seed: int = 0,
    tokenizer: CLIPTokenizer | None = None,
    architecture: MiniArchitecture = ARCHITECTURES["v1"],
) -> StableDiffusionPipeline:
    """The untrained mini model: SD v1.x's classes, random weights from ``seed``."""
    tokenizer = tokenizer or load_clip_tokenizer()
    torch.manual_seed(seed)
    levels = len(architecture.vae_blocks)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=architecture.vae_blocks,
        layers_per_block=1,
        latent_channels=architecture.latent_channels,
        norm_num_groups=16,
        sample_size=architecture.resolution,
    )
    attention_levels = len(architecture.unet_blocks) - 1
    unet = UNet2DConditionModel(
        sample_size=architecture.latent_size,
        in_channels=architecture.latent_channels,
        out_channels=architecture.latent_channels,
        layers_per_block=1,
        block_out_channels=architecture.unet_blocks,
        down_block_types=("DownBlock2D",)
        + ("CrossAttnDownBlock2D",) * attention_levels,
        up_block_types=("CrossAttnUpBlock2D",) * attention_levels + ("UpBlock2D",),
        cross_attention_dim=architecture.text_width,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    text_encoder = clip_text_encoder(tokenizer, width=architecture.text_width)
    return assemble_pipeline(vae, text_encoder, tokenizer, unet)


@dataclass(frozen=True)
class MiniTrainingPlan:
    """The two stages' settings; the defaults are the committed model's."""

    seed: int = 0
    vae_epochs: int = 40
    vae_batch_size: int = 16
    vae_learning_rate: float = 2e-3
    vae_warmup_steps: int = 50
    # The KL term's weight against the per-pixel mean reconstruction loss (SD's
    # 1e-6 is against a loss summed over pixels, so here it weighs thousands of
    # times more; docs/mini_v2.md, fourth run).
    vae_kl_weight: float = 1e-6
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
    architecture: str = "v1"
    vae_crop_size: int = 0  # 0: the VAE trains on whole images
    # "bf16": autocast, also on a CPU; "auto": bf16 where the CPU has it natively.
    vae_mixed_precision: str = "no"
    # After the VAE: its decoder alone, encoder frozen, so the latents stay where
    # they were (0: no such stage); optionally against a patch discriminator
    # (generator.training.adversarial; 0: reconstruction loss only).
    decoder_epochs: int = 0
    decoder_learning_rate: float = 5e-4
    decoder_adversarial_weight: float = 0.0
    decoder_adversarial_start: int = 0
    decoder_feature_matching_weight: float = 0.0
    decoder_disc_learning_rate: float = 2e-4
    cache_latents: bool = False
    checkpoint_minutes: float = 0.0
    # A finished VAE to start from (a model folder with its vae/, e.g. a committed
    # one) instead of training the first stage; "" trains it.
    vae_from: str = ""
    # The UNet stage saves a moving average of its weights (TrainingConfig.ema_decay;
    # 0: the last step's weights).
    ema_decay: float = 0.0

    @property
    def shape(self) -> MiniArchitecture:
        return ARCHITECTURES[self.architecture]

    def vae_config(self, base: Path, work: Path) -> TrainingConfig:
        return TrainingConfig(
            base=str(base),
            output_dir=str(work / "vae-run"),
            mode="full",
            resolution=self.shape.resolution,
            batch_size=self.vae_batch_size,
            vae_epochs=self.vae_epochs,
            vae_learning_rate=self.vae_learning_rate,
            vae_crop_size=self.vae_crop_size,
            kl_weight=self.vae_kl_weight,
            mixed_precision=cpu_precision(self.vae_mixed_precision),
            lr_schedule="cosine",
            lr_warmup_steps=self.vae_warmup_steps,
            checkpoint_every=self.checkpoint_every,
            checkpoint_minutes=self.checkpoint_minutes,
            seed=self.seed,
        )

    def decoder_config(self, base: Path, work: Path) -> TrainingConfig:
        return replace(
            self.vae_config(base, work),
            output_dir=str(work / "decoder-run"),
            vae_epochs=self.decoder_epochs,
            vae_learning_rate=self.decoder_learning_rate,
            vae_decoder_only=True,
            lr_warmup_steps=20,
            vae_adversarial_weight=self.decoder_adversarial_weight,
            vae_adversarial_start=self.decoder_adversarial_start,
            vae_feature_matching_weight=self.decoder_feature_matching_weight,
            vae_disc_learning_rate=self.decoder_disc_learning_rate,
        )

    def unet_config(self, base: Path, work: Path, round_index: int) -> TrainingConfig:
        first = round_index == 0
        return TrainingConfig(
            base=str(base),
            output_dir=str(work / f"unet-run-{round_index + 1}"),
            mode="full",
            train_text_encoder=True,
            resolution=self.shape.resolution,
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
            checkpoint_minutes=self.checkpoint_minutes,
            cache_latents=self.cache_latents,
            validation_prompts=VALIDATION_PROMPTS,
            validation_size=16,
            sample_steps=self.sample_steps,
            ema_decay=self.ema_decay,
        )


PLANS = {
    "v1": MiniTrainingPlan(),
    # v2 at 128²: the VAE on random 64² crops, latents cached for the UNet stage,
    # checkpoints every few minutes. The VAE has 40 epochs (2,520 steps; the 4x
    # VAE took 0.99 s per step under bf16 on an AMX Xeon and 2.35 s in fp32 on 2
    # Zen 3 threads, docs/mini_v2.md): its 20-epoch trial already beat the
    # 16-channel 8x VAE's 40 epochs. The VAE's stages (and the decoder
    # stage, where the plan has one) run before the UNet, so that the VAE is final
    # when they end and can be committed once; then --vae-from starts from it.
    "v2": MiniTrainingPlan(
        architecture="v2",
        vae_crop_size=64,
        vae_epochs=40,
        vae_batch_size=16,
        vae_learning_rate=2e-3,
        vae_warmup_steps=50,
        # The KL weight as v1's (1e-6): at 1e-9 the posterior noise fell from 0.26
        # to 0.002 of the latents' spread, but the round trip stayed the same
        # (31.2 dB, ceiling FID 197-198; docs/mini_v2.md, fourth run).
        vae_mixed_precision="auto",
        batch_size=16,
        max_steps=1800,
        rounds=1,
        learning_rate=5e-4,
        lr_warmup_steps=100,
        cache_latents=True,
        checkpoint_every=0,
        checkpoint_minutes=3.0,
        # The decoder against a discriminator took the 8-channel VAE's ceiling
        # from FID 209 to 188 within 200 adversarial steps, then no further
        # (docs/mini_v2.md); off until measured on the 4x VAE.
        decoder_epochs=0,
        decoder_learning_rate=1e-4,
        decoder_adversarial_weight=0.5,
        decoder_adversarial_start=100,
        decoder_feature_matching_weight=1.0,
        decoder_disc_learning_rate=2e-4,
        # A moving average of the UNet's and text encoder's weights is what is
        # saved: its warm-up, (1 + step) / (10 + step), keeps it near the last
        # couple of hundred steps of a short run.
        ema_decay=0.999,
    ),
}


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
    untrained = work / "untrained"
    if not (work / "vae-stage" / "model_index.json").is_file():
        build_mini_pipeline(plan.seed, architecture=plan.shape).save_pretrained(
            str(untrained)
        )
    config = plan.vae_config(untrained, work)
    return fit_vae(records, config, work / "vae-stage", progress)


def train_decoder_stage(
    records: Sequence[Record],
    plan: MiniTrainingPlan,
    work: Path,
    base: Path,
    progress: Callable[[TrainingProgress], None] | None = None,
) -> tuple[Path, dict]:
    """The pipeline ``base`` with its VAE decoder fine-tuned, encoder frozen (so the
    latents a UNet trains on do not move), saved as ``<work>/decoder-stage``."""
    config = plan.decoder_config(base, work)
    return fit_vae(records, config, work / "decoder-stage", progress)


def fit_vae(
    records: Sequence[Record],
    config: TrainingConfig,
    folder: Path,
    progress: Callable[[TrainingProgress], None] | None = None,
) -> tuple[Path, dict]:
    """``train_vae`` on ``config.base`` and ``records``, the pipeline saved as
    ``folder`` with a record in ``<folder>.json``; skipped when already there."""
    finished = finished_stage(folder)
    if finished is not None:
        return folder, finished
    started = time.perf_counter()
    pipe = load_pipeline(config.base, placement=FP32_CPU)
    pixels = example_tensors(
        [TrainingExample(image=r.path, caption=r.text) for r in records],
        config.resolution,
    )
    history = train_vae(pipe, pixels, config, Accelerator(cpu=True), progress)
    record = {
        "steps": len(history),
        "seconds": round(time.perf_counter() - started, 1),
        "final_loss": history[-1][1] if history else None,
    }
    return save_stage(pipe, folder, record), record


def finished_stage(folder: Path) -> dict | None:
    """The record of the stage saved as ``folder`` (empty if it has none), or None
    while the stage is not finished."""
    if not (folder / "model_index.json").is_file():
        return None
    record_path = folder.with_name(folder.name + ".json")
    return json.loads(record_path.read_text()) if record_path.is_file() else {}


def save_stage(pipe: StableDiffusionPipeline, folder: Path, record: dict) -> Path:
    """Save a finished stage's pipeline as ``folder`` (whole or not at all) and
    its record beside it as ``<folder>.json``."""
    partial = folder.with_name(folder.name + ".partial")
    pipe.save_pretrained(str(partial))
    partial.replace(folder)
    folder.with_name(folder.name + ".json").write_text(json.dumps(record) + "\n")
    return folder


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
    resolution: int = RESOLUTION
    invocations: list[dict] = field(default_factory=list)
    decoder: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "resolution": self.resolution,
            "train_images": len(self.split.train),
            "heldout_images": len(self.split.heldout),
            "heldout_patients": len({r.patient_id for r in self.split.heldout}),
            "vae": self.vae,
            "unet_rounds": [
                {**result.metrics(), "resumed_from": result.resumed_from}
                for result in self.rounds
            ],
            "decoder": self.decoder,
            "invocations": self.invocations,
        }


STAGE_LOG = "stages.jsonl"


def log_stage(work: Path, stage: str, event: str, **fields: object) -> None:
    """Append one line to ``<work>/stages.jsonl``: which stage started or ended when,
    so the wall time of every invocation, resumed ones included, can be reported."""
    line = {"stage": stage, "event": event, "utc": utc_now(), **fields}
    with (work / STAGE_LOG).open("a") as handle:
        handle.write(json.dumps(line) + "\n")


def stage_log(work: Path) -> list[dict]:
    path = work / STAGE_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    work = work or default_work(out)
    # 1-2. Hold out whole patients; the VAE alone on the rest, then its decoder.
    vae = run_vae_stage(data, work, plan, progress)

    # 3. UNet and text encoder with the diffusion loss, checkpointed, in rounds.
    examples = training_examples(vae.split.train, seed=plan.seed)
    rounds, base = [], vae.folder
    for round_index in range(plan.rounds):
        config = plan.unet_config(base, work, round_index)
        stage = f"unet-round-{round_index + 1}"
        log_stage(work, stage, "start")
        rounds.append(train(config, examples, progress))
        log_stage(
            work,
            stage,
            "end",
            resumed_from=rounds[-1].resumed_from,
            steps=rounds[-1].steps,
            seconds=round(rounds[-1].seconds, 1),
        )
        base = rounds[-1].pipeline_dir

    # 4. The artefact: diffusers layout, float16 safetensors, and a summary.
    save_half_precision(base, out)
    trained = MiniTrainingResult(
        out,
        vae.split,
        vae.record,
        rounds,
        plan.shape.resolution,
        stage_log(work),
        vae.decoder_record,
    )
    (out / "training_summary.json").write_text(
        json.dumps(trained.summary(), indent=2) + "\n"
    )
    return trained


def default_work(out: Path) -> Path:
    """Where a run writing the model ``out`` keeps its checkpoints by default."""
    return DEFAULT_WORK_ROOT / out.name


@dataclass(frozen=True)
class VaeStage:
    """The first stages' outcome: the patient split, the pipeline folder with the
    finished VAE, and the records of the VAE and decoder stages."""

    split: Split
    folder: Path
    record: dict
    decoder_record: dict


def run_vae_stage(
    data: Path,
    work: Path,
    plan: MiniTrainingPlan,
    progress: Callable[[TrainingProgress], None] | None = None,
) -> VaeStage:
    """The VAE's stages alone: hold out whole patients (seeded), fit the VAE to the
    rest with the reconstruction loss, then (``decoder_epochs``) its decoder alone,
    each logged in ``stages.jsonl``. A VAE adopted with ``vae_from`` is final: no
    decoder stage runs on it."""
    if plan.threads < 1:
        raise InvalidParameterError(f"threads must be at least 1, got {plan.threads}")
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(plan.threads)
    split = split_by_patient(read_records(data), seed=plan.seed)
    log_stage(work, "vae", "start")
    if plan.vae_from:
        vae_dir, vae_record = adopt_vae_stage(Path(plan.vae_from), plan, work)
    else:
        vae_dir, vae_record = train_vae_stage(split.train, plan, work, progress)
    log_stage(work, "vae", "end", **vae_record)
    decoder_record: dict = {}
    if plan.decoder_epochs and not plan.vae_from:
        log_stage(work, "decoder", "start")
        vae_dir, decoder_record = train_decoder_stage(
            split.train, plan, work, vae_dir, progress
        )
        log_stage(work, "decoder", "end", **decoder_record)
    return VaeStage(split, vae_dir, vae_record, decoder_record)


def adopt_vae_stage(
    source: Path, plan: MiniTrainingPlan, work: Path
) -> tuple[Path, dict]:
    """The first stage from a finished VAE: the untrained mini model of the plan's
    shape with ``source``'s ``vae/`` in place of its own, saved as
    ``<work>/vae-stage`` (kept when already there). The record is the source's
    ``vae-stage.json`` when it has one, with where the VAE came from."""
    folder = work / "vae-stage"
    finished = finished_stage(folder)
    if finished is not None:
        return folder, finished
    if not (source / "vae" / "config.json").is_file():
        raise FileNotFoundError(f"no VAE to start from: {source / 'vae'} is missing")
    vae = AutoencoderKL.from_pretrained(str(source / "vae"), torch_dtype=torch.float32)
    shape = plan.shape
    found = (vae.config.latent_channels, tuple(vae.config.block_out_channels))
    if found != (shape.latent_channels, shape.vae_blocks):
        raise InvalidParameterError(
            f"the VAE in {source} has {found[0]} latent channels and blocks "
            f"{found[1]}; architecture {shape.name} needs {shape.latent_channels} "
            f"and {shape.vae_blocks}"
        )
    pipe = build_mini_pipeline(plan.seed, architecture=plan.shape)
    pipe.register_modules(vae=vae)
    given = source / "vae-stage.json"
    record = json.loads(given.read_text()) if given.is_file() else {}
    record = {**record, "adopted_from": str(source)}
    return save_stage(pipe, folder, record), record


def print_progress(update: TrainingProgress) -> None:
    if update.step % 10 == 0 or update.step == update.total:
        print(
            f"step {update.step}/{update.total} epoch {update.epoch} "
            f"loss {update.loss:.4f} lr {update.learning_rate:.2e} "
            f"eta {update.eta_s / 60:.1f} min",
            flush=True,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options, shared by ``python -m`` and ``manage.py``.

    ``--version`` picks the plan (PLANS); the other options override it."""
    parser.add_argument("--data", type=Path, required=True, help="public-cxr folder")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--work", type=Path, help="checkpoint folder")
    parser.add_argument("--version", choices=sorted(PLANS), default="v1")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--vae-epochs", type=int)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--decoder-epochs", type=int)
    parser.add_argument(
        "--vae-kl-weight",
        type=float,
        help="the KL term's weight in the VAE stage's loss",
    )
    parser.add_argument(
        "--vae-precision",
        dest="vae_mixed_precision",
        choices=["no", "bf16", "auto"],
        help="the VAE stages' autocast: bf16 helps only on a CPU with native bf16, "
        "which 'auto' checks for",
    )
    parser.add_argument(
        "--vae-from",
        help="a model folder whose finished vae/ replaces the VAE stage",
    )
    parser.add_argument(
        "--ema-decay",
        type=float,
        help="the UNet stage saves a moving average of its weights with this decay "
        "(0: the last step's weights)",
    )
    parser.add_argument(
        "--vae-only",
        action="store_true",
        help="stop after the VAE's stages (saved in the work folder's vae-stage "
        "and, with decoder epochs, decoder-stage)",
    )


def plan_from_arguments(args: argparse.Namespace) -> MiniTrainingPlan:
    """The version's plan with the options given on the command line."""
    chosen = {
        name: getattr(args, name, None)
        for name in (
            "seed",
            "vae_epochs",
            "max_steps",
            "rounds",
            "threads",
            "decoder_epochs",
            "vae_kl_weight",
            "vae_mixed_precision",
            "vae_from",
            "ema_decay",
        )
    }
    return replace(
        PLANS[getattr(args, "version", None) or "v1"],
        **{name: value for name, value in chosen.items() if value is not None},
    )


def run_from_arguments(args: argparse.Namespace) -> MiniTrainingResult | None:
    plan = plan_from_arguments(args)
    if getattr(args, "vae_only", False):
        work = args.work or default_work(args.out)
        vae = run_vae_stage(args.data, work, plan, print_progress)
        summary = {"vae_stage": str(vae.folder), **vae.record}
        if vae.decoder_record:
            summary["decoder_stage"] = vae.decoder_record
        print(json.dumps(summary, indent=2))
        return None
    result = train_mini(args.data, args.out, args.work, plan, print_progress)
    print(json.dumps(result.summary(), indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    run_from_arguments(parser.parse_args())


if __name__ == "__main__":
    main()
