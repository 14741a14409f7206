"""Fine-tune SD v1.x on (image, caption) pairs: LoRA through peft, or every UNet weight.

One training loop on diffusers' public API, peft and Accelerate, so the same code runs
on a CPU, one GPU, or many (``accelerate launch``; DDP). The loss is the true one: the
MSE between the UNet's prediction and the noise scheduler's target for its prediction
type (the noise for epsilon, the velocity for v_prediction), optionally min-SNR
weighted.

Determinism and resuming: the data order of epoch ``e`` comes from ``seed + e``, and the
noise and timesteps of every micro-batch from a generator seeded by (seed, step, micro
index, rank). A checkpoint holds the trainable weights, the optimiser and learning-rate
scheduler states and the step; resuming from it replays exactly what an uninterrupted
run with the same seed would have done.
"""

from __future__ import annotations

import hashlib
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_snr
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from PIL import Image

from generator.errors import InvalidParameterError, UnsafeCheckpointError
from generator.loading import Placement, load_pipeline
from generator.sampling import GenerationParams, generate

MODES = ("lora", "full")
UNET_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")
PREDICTION_TYPES = ("epsilon", "v_prediction")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
LR_SCHEDULES = ("cosine", "constant_with_warmup", "linear")
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_FILE = "state.pt"
UNSAFE_CHECKPOINT = (
    "checkpoint {path} holds more than tensors and plain values; it was not "
    "loaded ({reason})"
)
VALIDATION_TIMESTEPS = 4
NO_CUDA_FOR_PRECISION = (
    "mixed_precision {value!r} needs CUDA and this machine has none; use 'no'"
)
NO_EXAMPLES = "No training examples: the data set is empty"
TOO_FEW_EXAMPLES = (
    "{n} training examples give no full step at batch_size {batch} × "
    "gradient_accumulation_steps {accum} × {world} processes"
)


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that decides the trained weights, besides the data. Validated."""

    base: str
    output_dir: str
    revision: str | None = None
    mode: str = "lora"
    rank: int = 16
    alpha: int = 32
    target_modules: tuple[str, ...] = ("to_q", "to_v")
    train_text_encoder: bool = False
    epochs: int = 4
    max_steps: int | None = None
    resolution: int = 256
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    lr_schedule: str = "cosine"
    lr_warmup_steps: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    prediction_type: str | None = None
    snr_gamma: float | None = None
    # Share of captions replaced by the empty prompt, so the model also learns the
    # unconditional prediction that classifier-free guidance subtracts.
    caption_dropout: float = 0.0
    seed: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    validation_prompts: tuple[str, ...] = ()
    validation_size: int = 4
    sample_steps: int = 10
    sample_guidance: float = 1.0
    vae_epochs: int = 0
    vae_learning_rate: float = 1e-3
    kl_weight: float = 1e-6

    def __post_init__(self) -> None:
        problems = config_problems(self)
        if problems:
            raise InvalidParameterError("; ".join(problems))

    def to_json(self) -> dict:
        return asdict(self)


# Upper bounds well past any real run, so a typo (or a hostile form) is refused by
# name here rather than failing on the worker after the run was queued.
MAXIMA = {
    "rank": 1024,
    "alpha": 4096,
    "epochs": 100_000,
    "vae_epochs": 100_000,
    "max_steps": 10**9,
    "batch_size": 4096,
    "gradient_accumulation_steps": 4096,
    "learning_rate": 1.0,
    "vae_learning_rate": 1.0,
    "lr_warmup_steps": 10**9,
    "checkpoint_every": 10**9,
    "resolution": 4096,
    "snr_gamma": 1000.0,
}
MAX_SEED = 2**32 - 1  # numpy's and the CUDA generators' seed range


def config_problems(config: TrainingConfig) -> list[str]:
    """Every rule ``config`` breaks, each message naming the bad value."""
    problems = []
    problems += _choice("mode", config.mode, MODES)
    problems += _choice("lr_schedule", config.lr_schedule, LR_SCHEDULES)
    problems += _choice("mixed_precision", config.mixed_precision, MIXED_PRECISIONS)
    if config.prediction_type is not None:
        problems += _choice("prediction_type", config.prediction_type, PREDICTION_TYPES)
    for name in (
        "rank",
        "alpha",
        "epochs",
        "batch_size",
        "gradient_accumulation_steps",
    ):
        problems += _positive(name, getattr(config, name))
    for name in ("learning_rate", "vae_learning_rate", "max_grad_norm"):
        problems += _positive(name, getattr(config, name))
    for name in ("lr_warmup_steps", "weight_decay", "checkpoint_every", "vae_epochs"):
        problems += _not_negative(name, getattr(config, name))
    problems += _not_negative("kl_weight", config.kl_weight)
    if not 0 <= config.caption_dropout < 1:
        problems.append(
            f"caption_dropout must be in [0, 1), got {config.caption_dropout!r}"
        )
    problems += _positive("keep_checkpoints", config.keep_checkpoints)
    problems += _positive("validation_size", config.validation_size)
    problems += _positive("sample_steps", config.sample_steps)
    if config.max_steps is not None:
        problems += _positive("max_steps", config.max_steps)
    if config.snr_gamma is not None:
        problems += _positive("snr_gamma", config.snr_gamma)
    if config.resolution % 8 or config.resolution < 8:
        problems.append(
            f"resolution has to be a positive multiple of 8, got {config.resolution}"
        )
    for name, most in MAXIMA.items():
        value = getattr(config, name)
        if value is not None and value > most:
            problems.append(f"{name} must be at most {most}, got {value}")
    if not 0 <= config.seed <= MAX_SEED:
        problems.append(f"seed must be from 0 to {MAX_SEED}, got {config.seed}")
    problems += _target_problems(config.target_modules)
    if config.vae_epochs and config.mode != "full":
        problems.append(
            f"vae_epochs {config.vae_epochs} needs mode 'full', got {config.mode!r}"
        )
    return problems


def _choice(name: str, value: object, allowed: Sequence[str]) -> list[str]:
    if value in allowed:
        return []
    return [f"{name} must be one of {list(allowed)}, got {value!r}"]


def _positive(name: str, value: float) -> list[str]:
    return [] if value > 0 else [f"{name} must be greater than 0, got {value}"]


def _not_negative(name: str, value: float) -> list[str]:
    return [] if value >= 0 else [f"{name} must not be negative, got {value}"]


def _target_problems(targets: Sequence[str]) -> list[str]:
    if not targets:
        return [f"target_modules must name at least one of {list(UNET_TARGET_MODULES)}"]
    unknown = [name for name in targets if name not in UNET_TARGET_MODULES]
    if unknown:
        return [
            f"target_modules must be among {list(UNET_TARGET_MODULES)}, got {unknown!r}"
        ]
    return []


@dataclass(frozen=True)
class TrainingExample:
    """One image and the caption it should be generated from. The image is a path,
    a PIL image, or a function that opens it as a binary file (for images kept in
    object storage, where there is no path)."""

    image: Path | str | Image.Image | Callable[[], BinaryIO]
    caption: str


@dataclass(frozen=True)
class TrainingProgress:
    """What a progress callback receives after every optimiser step."""

    step: int
    total: int
    epoch: int
    loss: float
    eta_s: float
    learning_rate: float


ProgressCallback = Callable[[TrainingProgress], None]


@dataclass
class TrainingResult:
    """Where the weights went and how the losses moved."""

    output_dir: Path
    lora_path: Path | None
    pipeline_dir: Path | None
    steps: int
    resumed_from: int
    loss_history: list[tuple[int, float]]
    validation_history: list[tuple[int, float]]
    sample_grids: list[Path]
    seconds: float
    weights_digest: str
    vae_loss_history: list[tuple[int, float]] = field(default_factory=list)

    @property
    def final_validation_loss(self) -> float | None:
        return self.validation_history[-1][1] if self.validation_history else None

    def metrics(self) -> dict:
        """The JSON a model version stores: losses, steps and time."""
        return {
            "steps": self.steps,
            "seconds": round(self.seconds, 2),
            "final_train_loss": self.loss_history[-1][1] if self.loss_history else None,
            "validation_loss": self.validation_history,
            "final_validation_loss": self.final_validation_loss,
            "weights_digest": self.weights_digest,
        }


def example_tensors(
    examples: Sequence[TrainingExample], resolution: int
) -> torch.Tensor:
    """Images as RGB in [-1, 1] at ``resolution``², bicubic, shape (N, 3, H, W)."""
    tensors = []
    for example in examples:
        image = example.image
        if callable(image):
            with image() as stream, Image.open(stream) as handle:
                image = handle.convert("RGB")
        elif not isinstance(image, Image.Image):
            with Image.open(image) as handle:
                image = handle.convert("RGB")
        image = image.convert("RGB")
        if image.size != (resolution, resolution):
            image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        pixels = pixels.view(resolution, resolution, 3).permute(2, 0, 1).float()
        tensors.append(pixels / 127.5 - 1.0)
    return torch.stack(tensors)


def tokenize(tokenizer: object, captions: Sequence[str]) -> torch.Tensor:
    """Token ids padded and cut to the text encoder's window, as the pipeline does."""
    return tokenizer(
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def diffusion_loss(
    noise_scheduler: DDPMScheduler,
    model_pred: torch.Tensor,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """MSE against the scheduler's target: the noise, or the velocity for v_prediction.

    With ``snr_gamma``, each sample's MSE is weighted by min(SNR, gamma) / SNR
    (epsilon) or min(SNR, gamma) / (SNR + 1) (v_prediction): Hang et al. 2023.
    """
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise InvalidParameterError(
            f"prediction_type must be one of {list(PREDICTION_TYPES)}, "
            f"got {prediction_type!r}"
        )
    if snr_gamma is None:
        return F.mse_loss(model_pred.float(), target.float(), reduction="mean")
    snr = compute_snr(noise_scheduler, timesteps)
    weights = torch.clamp(snr, max=snr_gamma)
    weights = (
        weights / (snr + 1) if prediction_type == "v_prediction" else weights / snr
    )
    per_sample = F.mse_loss(model_pred.float(), target.float(), reduction="none")
    per_sample = per_sample.mean(dim=list(range(1, per_sample.ndim)))
    return (per_sample * weights).mean()


def denoising_loss(
    unet: torch.nn.Module,
    noise_scheduler: DDPMScheduler,
    latents: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """Noise the latents to ``timesteps``, predict, and score against the target."""
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    model_pred = unet(noisy, timesteps, encoder_hidden_states, return_dict=False)[0]
    return diffusion_loss(
        noise_scheduler, model_pred, latents, noise, timesteps, snr_gamma
    )


def noise_scheduler_for(
    pipe: StableDiffusionPipeline, prediction_type: str | None
) -> DDPMScheduler:
    """DDPM with the model's noise schedule; the prediction type from config if set."""
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    if prediction_type is not None:
        scheduler.register_to_config(prediction_type=prediction_type)
    return scheduler


def train(
    config: TrainingConfig,
    examples: Sequence[TrainingExample],
    progress: ProgressCallback | None = None,
    on_saved: Callable[[Path], None] | None = None,
) -> TrainingResult:
    """Train, checkpointing as configured; resume from the newest checkpoint if any.

    Writes under ``config.output_dir``: ``checkpoints/``, ``samples/`` and the result,
    ``pytorch_lora_weights.safetensors`` (mode lora) or ``pipeline/`` (mode full).
    ``on_saved`` is called with each checkpoint file and sample grid once written
    (to copy it elsewhere, such as object storage); old checkpoints are removed from
    ``output_dir`` as ``keep_checkpoints`` says.
    """
    saved = on_saved or (lambda path: None)
    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    if not examples:
        raise InvalidParameterError(NO_EXAMPLES)
    if config.mixed_precision != "no" and not torch.cuda.is_available():
        raise InvalidParameterError(
            NO_CUDA_FOR_PRECISION.format(value=config.mixed_precision)
        )

    # 1. Accelerate picks the device, the process group and mixed precision.
    accelerator = Accelerator(
        # Without CUDA, cpu=True lets torchrun/accelerate launch start gloo DDP.
        cpu=not torch.cuda.is_available(),
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
    )
    pipe = load_pipeline(
        config.base,
        revision=config.revision,
        placement=Placement("cpu", torch.float32, False),
    )
    pipe.to(accelerator.device)
    noise_scheduler = noise_scheduler_for(pipe, config.prediction_type)

    # 2. Pixels and token ids once; the VAE first when training from scratch.
    pixels = example_tensors(examples, config.resolution)
    token_ids = tokenize(pipe.tokenizer, [example.caption for example in examples])
    empty_ids = tokenize(pipe.tokenizer, [""])  # what caption dropout puts instead
    vae_history = []
    if config.vae_epochs and not restore_vae(output_dir, pipe):
        vae_history = train_vae(pipe, pixels, config, accelerator)

    # 3. Choose what trains: LoRA layers, or every UNet weight.
    trainable = make_trainable(pipe, config)
    if config.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    unet, text_encoder, optimizer, lr_scheduler, plan = _prepare(
        accelerator, pipe, trainable, config, len(examples)
    )

    # 4. Resume from the newest checkpoint, if one exists.
    state = {"step": 0, "loss_history": [], "validation_history": []}
    resumed_from = load_latest_checkpoint(
        output_dir, pipe, optimizer, lr_scheduler, state
    )
    if vae_history:  # the trained VAE survives a kill before the first checkpoint
        checkpoint = save_checkpoint(
            output_dir,
            accelerator,
            pipe,
            optimizer,
            lr_scheduler,
            state,
            config.keep_checkpoints,
            with_vae=True,
        )
        if checkpoint is not None:
            saved(checkpoint)
    validation = _validation_batch(pixels, token_ids, config)
    if not resumed_from:
        before = validation_loss(pipe, noise_scheduler, validation, config)
        state["validation_history"].append((0, before))

    # 5. Epochs of seeded shuffles; one optimiser step per accumulated group.
    grids = []
    loop_started = time.perf_counter()
    while state["step"] < plan.total_steps:
        epoch = state["step"] // plan.steps_per_epoch
        batches = _epoch_batches(len(examples), epoch, config, plan, accelerator)
        first = (state["step"] - epoch * plan.steps_per_epoch) * plan.accumulation
        unet.train()
        group_loss = 0.0
        for micro, indices in enumerate(batches[first:], start=first):
            with accelerator.accumulate(unet, text_encoder):
                loss = _micro_step(
                    pipe,
                    unet,
                    text_encoder,
                    noise_scheduler,
                    pixels,
                    token_ids,
                    empty_ids,
                    indices,
                    config,
                    seed_of(
                        config.seed, state["step"], micro, accelerator.process_index
                    ),
                )
                accelerator.backward(loss)
                group_loss += loss.detach() / plan.accumulation
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            state["step"] += 1
            step_loss = accelerator.gather(group_loss[None]).mean().item()
            group_loss = 0.0
            state["loss_history"].append((state["step"], step_loss))
            _report(
                progress,
                state,
                plan.total_steps,
                epoch,
                step_loss,
                lr_scheduler,
                time.perf_counter() - loop_started,
                resumed_from,
            )
            if config.checkpoint_every and state["step"] % config.checkpoint_every == 0:
                checkpoint = save_checkpoint(
                    output_dir,
                    accelerator,
                    pipe,
                    optimizer,
                    lr_scheduler,
                    state,
                    config.keep_checkpoints,
                    with_vae=bool(config.vae_epochs),
                )
                if checkpoint is not None:
                    saved(checkpoint)
            if state["step"] >= plan.total_steps:
                break
        # 6. End of epoch (or of training): validation loss and a sample grid.
        val_loss = validation_loss(pipe, noise_scheduler, validation, config)
        state["validation_history"].append((state["step"], val_loss))
        if config.validation_prompts and accelerator.is_main_process:
            grids.append(save_sample_grid(pipe, config, output_dir, epoch))
            saved(grids[-1])

    # 7. Save the result: the adapter alone, or the whole pipeline.
    accelerator.wait_for_everyone()
    lora_path, pipeline_dir = None, None
    if accelerator.is_main_process:
        lora_path, pipeline_dir = save_result(pipe, config, output_dir)
    accelerator.wait_for_everyone()
    return TrainingResult(
        output_dir=output_dir,
        lora_path=lora_path,
        pipeline_dir=pipeline_dir,
        steps=state["step"],
        resumed_from=resumed_from,
        loss_history=state["loss_history"],
        validation_history=state["validation_history"],
        sample_grids=grids,
        seconds=time.perf_counter() - started,
        weights_digest=weights_digest(trainable),
        vae_loss_history=vae_history,
    )


@dataclass(frozen=True)
class StepPlan:
    """How micro-batches become optimiser steps on every process."""

    micro_batches_per_epoch: int
    accumulation: int
    steps_per_epoch: int
    total_steps: int


def plan_steps(n_examples: int, config: TrainingConfig, world: int) -> StepPlan:
    """Whole accumulation groups only, so every process steps the same number of times.

    A trailing partial group of an epoch is dropped, like ``drop_last``.
    """
    per_process = n_examples // world // config.batch_size
    accumulation = config.gradient_accumulation_steps
    steps_per_epoch = per_process // accumulation
    if steps_per_epoch == 0:
        raise InvalidParameterError(
            TOO_FEW_EXAMPLES.format(
                n=n_examples, batch=config.batch_size, accum=accumulation, world=world
            )
        )
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    return StepPlan(
        steps_per_epoch * accumulation, accumulation, steps_per_epoch, total
    )


def seed_of(seed: int, step: int, micro: int, rank: int) -> int:
    """A distinct, reproducible seed for one micro-batch on one process."""
    return (seed * 1_000_003 + step * 1_009 + micro * 101 + rank * 7) % (2**63)


def make_trainable(
    pipe: StableDiffusionPipeline, config: TrainingConfig
) -> list[torch.nn.Parameter]:
    """Freeze everything, then unfreeze what ``config.mode`` trains; return it."""
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    pipe.unet.requires_grad_(False)
    torch.manual_seed(config.seed)  # LoRA's random init of lora_A
    if config.mode == "full":
        pipe.unet.requires_grad_(True)
        if config.train_text_encoder:
            pipe.text_encoder.requires_grad_(True)
    else:
        pipe.unet.add_adapter(_lora_config(config, list(config.target_modules)))
        if config.train_text_encoder:
            # peft directly: transformers' add_adapter wants a newer peft than pinned.
            inject_adapter_in_model(
                _lora_config(config, list(TEXT_TARGET_MODULES)), pipe.text_encoder
            )
    modules = [pipe.unet, pipe.text_encoder]
    return [p for module in modules for p in module.parameters() if p.requires_grad]


def _lora_config(config: TrainingConfig, targets: list[str]) -> LoraConfig:
    return LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        init_lora_weights="gaussian",
        target_modules=targets,
    )


def _prepare(
    accelerator: Accelerator,
    pipe: StableDiffusionPipeline,
    trainable: list[torch.nn.Parameter],
    config: TrainingConfig,
    n_examples: int,
) -> tuple:
    """AdamW and the warmup+schedule, handed to Accelerate with the models."""
    plan = plan_steps(n_examples, config, accelerator.num_processes)
    optimizer = torch.optim.AdamW(
        trainable, lr=config.learning_rate, weight_decay=config.weight_decay
    )
    # A prepared scheduler steps once per process per optimiser step.
    lr_scheduler = get_scheduler(
        config.lr_schedule,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=plan.total_steps * accelerator.num_processes,
    )
    trains_text = config.train_text_encoder
    if trains_text:
        unet, text_encoder, optimizer, lr_scheduler = accelerator.prepare(
            pipe.unet, pipe.text_encoder, optimizer, lr_scheduler
        )
    else:
        unet, optimizer, lr_scheduler = accelerator.prepare(
            pipe.unet, optimizer, lr_scheduler
        )
        text_encoder = pipe.text_encoder
    return unet, text_encoder, optimizer, lr_scheduler, plan


def _epoch_batches(
    n: int,
    epoch: int,
    config: TrainingConfig,
    plan: StepPlan,
    accelerator: Accelerator,
) -> list[list[int]]:
    """This process's micro-batches for ``epoch``: a shuffle seeded by seed + epoch."""
    generator = torch.Generator().manual_seed(config.seed + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    mine = order[accelerator.process_index :: accelerator.num_processes]
    batches = [
        mine[i : i + config.batch_size]
        for i in range(0, len(mine) - config.batch_size + 1, config.batch_size)
    ]
    return batches[: plan.micro_batches_per_epoch]


def _micro_step(
    pipe: StableDiffusionPipeline,
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module,
    noise_scheduler: DDPMScheduler,
    pixels: torch.Tensor,
    token_ids: torch.Tensor,
    empty_ids: torch.Tensor,
    indices: list[int],
    config: TrainingConfig,
    seed: int,
) -> torch.Tensor:
    """Encode, draw seeded noise and timesteps, and return the loss of one batch."""
    device = pipe.device
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        latents = encode_latents(pipe, pixels[indices].to(device), generator)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    timesteps = torch.randint(
        0,
        noise_scheduler.config.num_train_timesteps,
        (len(indices),),
        generator=generator,
    ).to(device)
    ids = token_ids[indices]
    if config.caption_dropout:
        ids = drop_captions(ids, empty_ids, config.caption_dropout, generator)
    hidden = text_encoder(ids.to(device), return_dict=False)[0]
    return denoising_loss(
        unet, noise_scheduler, latents, hidden, noise, timesteps, config.snr_gamma
    )


def drop_captions(
    token_ids: torch.Tensor,
    empty_ids: torch.Tensor,
    rate: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Each row replaced by the empty prompt's ids with probability ``rate``."""
    dropped = torch.rand(len(token_ids), generator=generator) < rate
    return torch.where(dropped[:, None], empty_ids, token_ids)


def encode_latents(
    pipe: StableDiffusionPipeline, pixels: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """VAE latents sampled with ``generator`` and scaled by the VAE's factor."""
    dist = pipe.vae.encode(pixels.to(pipe.vae.dtype)).latent_dist
    sample = dist.mean + dist.std * torch.randn(
        dist.mean.shape, generator=generator
    ).to(dist.mean.device, dist.mean.dtype)
    return sample.float() * pipe.vae.config.scaling_factor


def _report(
    progress: ProgressCallback | None,
    state: dict,
    total: int,
    epoch: int,
    loss: float,
    lr_scheduler: object,
    elapsed: float,
    resumed_from: int,
) -> None:
    if progress is None:
        return
    done = state["step"] - resumed_from
    eta = elapsed / done * (total - state["step"]) if done else 0.0
    progress(
        TrainingProgress(
            step=state["step"],
            total=total,
            epoch=epoch,
            loss=loss,
            eta_s=eta,
            learning_rate=lr_scheduler.get_last_lr()[0],
        )
    )


@dataclass(frozen=True)
class ValidationBatch:
    """A fixed subset with fixed noise and timesteps: equal weights, equal loss."""

    pixels: torch.Tensor
    token_ids: torch.Tensor
    seed: int


def _validation_batch(
    pixels: torch.Tensor, token_ids: torch.Tensor, config: TrainingConfig
) -> ValidationBatch:
    """The first ``validation_size`` examples of a shuffle seeded by the config seed."""
    generator = torch.Generator().manual_seed(config.seed + 1_000_000)
    chosen = torch.randperm(len(pixels), generator=generator)[: config.validation_size]
    return ValidationBatch(pixels[chosen], token_ids[chosen], config.seed + 2_000_000)


@torch.no_grad()
def validation_loss(
    pipe: StableDiffusionPipeline,
    noise_scheduler: DDPMScheduler,
    batch: ValidationBatch,
    config: TrainingConfig,
) -> float:
    """Mean loss over the subset at VALIDATION_TIMESTEPS evenly spaced timesteps."""
    was_training = pipe.unet.training
    pipe.unet.eval()
    generator = torch.Generator().manual_seed(batch.seed)
    device = pipe.device
    latents = encode_latents(pipe, batch.pixels.to(device), generator)
    hidden = pipe.text_encoder(batch.token_ids.to(device), return_dict=False)[0]
    total_steps = noise_scheduler.config.num_train_timesteps
    losses = []
    for t in torch.linspace(0, total_steps - 1, VALIDATION_TIMESTEPS).long().tolist():
        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = torch.full((len(latents),), t, dtype=torch.long, device=device)
        loss = denoising_loss(
            pipe.unet, noise_scheduler, latents, hidden, noise, timesteps
        )
        losses.append(loss.item())
    pipe.unet.train(was_training)
    return sum(losses) / len(losses)


def save_sample_grid(
    pipe: StableDiffusionPipeline, config: TrainingConfig, output_dir: Path, epoch: int
) -> Path:
    """One seeded image per validation prompt, side by side, as a PNG."""
    was_training = pipe.unet.training
    pipe.unet.eval()
    scheduler = pipe.scheduler
    images = []
    for index, prompt in enumerate(config.validation_prompts):
        params = GenerationParams(
            prompt=prompt,
            seed=config.seed + index,
            steps=config.sample_steps,
            guidance_scale=config.sample_guidance,
            width=max(config.resolution, 64),
            height=max(config.resolution, 64),
        )
        images.append(generate(pipe, params).images[0])
    pipe.scheduler = scheduler
    pipe.unet.train(was_training)
    side = images[0].width
    grid = Image.new("L", (side * len(images), side))
    for index, image in enumerate(images):
        grid.paste(image, (index * side, 0))
    path = output_dir / "samples" / f"epoch-{epoch:03d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Checkpoint folders, oldest first."""
    folder = output_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [
        path
        for path in folder.iterdir()
        if path.name.startswith(CHECKPOINT_PREFIX)
        and (path / CHECKPOINT_FILE).is_file()
    ]
    return sorted(found, key=lambda path: int(path.name[len(CHECKPOINT_PREFIX) :]))


def trainable_state(pipe: StableDiffusionPipeline) -> dict[str, torch.Tensor]:
    """The weights that train, by module: what a checkpoint must hold."""
    return {
        f"{module_name}.{name}": param.detach().cpu().clone()
        for module_name in ("unet", "text_encoder")
        for name, param in getattr(pipe, module_name).named_parameters()
        if param.requires_grad
    }


def save_checkpoint(
    output_dir: Path,
    accelerator: Accelerator,
    pipe: StableDiffusionPipeline,
    optimizer: object,
    lr_scheduler: object,
    state: dict,
    keep: int,
    with_vae: bool = False,
) -> Path | None:
    """Write ``checkpoints/checkpoint-<step>/state.pt`` atomically (main process);
    its path there, None on the other processes."""
    accelerator.wait_for_everyone()
    written = None
    if accelerator.is_main_process:
        folder = output_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{state['step']}"
        folder.mkdir(parents=True, exist_ok=True)
        payload = {
            "weights": trainable_state(pipe),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "state": state,
        }
        if with_vae:  # a resumed run must not train the VAE again
            payload["vae"] = {
                "weights": pipe.vae.state_dict(),
                "scaling_factor": pipe.vae.config.scaling_factor,
            }
        written = folder / CHECKPOINT_FILE
        save_atomically(payload, written)
        for old in checkpoint_dirs(output_dir)[:-keep]:
            (old / CHECKPOINT_FILE).unlink()
            old.rmdir()
    accelerator.wait_for_everyone()
    return written


def save_atomically(payload: dict, path: Path) -> None:
    """torch.save to a side file, then rename: a kill never leaves half a file."""
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    partial.replace(path)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's tensors and plain values (``torch.load(weights_only=True)``):
    a file holding anything else, such as a pickle that would run code, is refused
    naming the file, before any of it runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0]
        raise UnsafeCheckpointError(
            UNSAFE_CHECKPOINT.format(
                path=f"{path.parent.name}/{path.name}", reason=reason
            )
        ) from None


def restore_vae(output_dir: Path, pipe: StableDiffusionPipeline) -> bool:
    """Load the trained VAE from the newest checkpoint; False if it holds none."""
    found = checkpoint_dirs(output_dir)
    if not found:
        return False
    payload = load_checkpoint(found[-1] / CHECKPOINT_FILE)
    if "vae" not in payload:
        return False
    pipe.vae.load_state_dict(payload["vae"]["weights"])
    pipe.vae.register_to_config(scaling_factor=payload["vae"]["scaling_factor"])
    return True


def load_latest_checkpoint(
    output_dir: Path,
    pipe: StableDiffusionPipeline,
    optimizer: object,
    lr_scheduler: object,
    state: dict,
) -> int:
    """Restore the newest checkpoint into the models and ``state``; return its step."""
    found = checkpoint_dirs(output_dir)
    if not found:
        return 0
    payload = load_checkpoint(found[-1] / CHECKPOINT_FILE)
    params = {
        f"{module_name}.{name}": param
        for module_name in ("unet", "text_encoder")
        for name, param in getattr(pipe, module_name).named_parameters()
    }
    with torch.no_grad():
        for name, value in payload["weights"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(payload["optimizer"])
    lr_scheduler.load_state_dict(payload["lr_scheduler"])
    state.update(payload["state"])
    return state["step"]


def save_result(
    pipe: StableDiffusionPipeline, config: TrainingConfig, output_dir: Path
) -> tuple[Path | None, Path | None]:
    """Save diffusers-format LoRA safetensors (adapter keys only) or the pipeline."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if config.mode == "full":
        folder = output_dir / "pipeline"
        pipe.scheduler.register_to_config(
            prediction_type=config.prediction_type
            or pipe.scheduler.config.prediction_type
        )
        pipe.save_pretrained(str(folder), safe_serialization=True)
        return None, folder
    text_layers = None
    if config.train_text_encoder:
        text_layers = convert_state_dict_to_diffusers(
            get_peft_model_state_dict(pipe.text_encoder)
        )
    StableDiffusionPipeline.save_lora_weights(
        str(output_dir),
        unet_lora_layers=convert_state_dict_to_diffusers(
            get_peft_model_state_dict(pipe.unet)
        ),
        text_encoder_lora_layers=text_layers,
        weight_name=LORA_WEIGHT_NAME,
        safe_serialization=True,
    )
    return output_dir / LORA_WEIGHT_NAME, None


def weights_digest(parameters: Sequence[torch.nn.Parameter]) -> str:
    """sha256 over the trainable weights' bytes: equal on every rank after DDP."""
    digest = hashlib.sha256()
    for param in parameters:
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


VAE_CHECKPOINT = "vae-checkpoint/state.pt"
VAE_SEED_OFFSET = 10_000


def train_vae(
    pipe: StableDiffusionPipeline,
    pixels: torch.Tensor,
    config: TrainingConfig,
    accelerator: Accelerator,
    progress: ProgressCallback | None = None,
) -> list[tuple[int, float]]:
    """Fit the VAE first, then set its latent scaling factor; returns the loss history.

    The loss is MSE + L1 (L1 keeps edges sharper than MSE alone) + kl_weight × KL,
    with AdamW and ``config.lr_schedule`` (``lr_warmup_steps`` of warm-up) over the
    VAE's own ``vae_epochs`` of batches, gradients clipped to ``max_grad_norm``. Every
    ``checkpoint_every`` steps and at the end the stage is saved to
    ``<output_dir>/vae-checkpoint/state.pt``; a rerun resumes from it and replays what
    an uninterrupted run would have done (epoch order from ``seed + 10000 + epoch``,
    latent noise from the step).

    The scaling factor is 1 / std of the training latents, the rule SD's 0.18215 came
    from, so the UNet sees unit-variance latents.
    """
    if accelerator.num_processes > 1:
        raise InvalidParameterError(
            f"vae_epochs {config.vae_epochs} runs on one process, "
            f"got {accelerator.num_processes}"
        )
    vae = pipe.vae
    vae.requires_grad_(True)
    vae.train()
    steps_per_epoch = -(-len(pixels) // config.batch_size)
    total = steps_per_epoch * config.vae_epochs
    optimizer = torch.optim.AdamW(
        vae.parameters(),
        lr=config.vae_learning_rate,
        weight_decay=config.weight_decay,
    )
    lr_scheduler = get_scheduler(
        config.lr_schedule,
        optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=total,
    )
    checkpoint = Path(config.output_dir) / VAE_CHECKPOINT
    state = {"step": 0, "history": []}
    if checkpoint.is_file():
        payload = load_checkpoint(checkpoint)
        vae.load_state_dict(payload["weights"])
        optimizer.load_state_dict(payload["optimizer"])
        lr_scheduler.load_state_dict(payload["lr_scheduler"])
        state = payload["state"]
    started, resumed_from = time.perf_counter(), state["step"]
    while state["step"] < total:
        loss = _vae_step(vae, pixels, config, state["step"], steps_per_epoch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), config.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        state["step"] += 1
        state["history"].append((state["step"], loss.item()))
        every = config.checkpoint_every
        if state["step"] == total or (every and state["step"] % every == 0):
            _save_vae_checkpoint(checkpoint, vae, optimizer, lr_scheduler, state)
        _report(
            progress,
            state,
            total,
            (state["step"] - 1) // steps_per_epoch,
            state["history"][-1][1],
            lr_scheduler,
            time.perf_counter() - started,
            resumed_from,
        )
    vae.requires_grad_(False)
    vae.eval()
    with torch.no_grad():
        latents = torch.cat(
            [
                vae.encode(pixels[i : i + 16].to(pipe.device)).latent_dist.mean
                for i in range(0, len(pixels), 16)
            ]
        )
    vae.register_to_config(scaling_factor=float(1.0 / latents.std().clamp(min=1e-6)))
    return state["history"]


def _vae_step(
    vae: torch.nn.Module,
    pixels: torch.Tensor,
    config: TrainingConfig,
    step: int,
    steps_per_epoch: int,
) -> torch.Tensor:
    """The reconstruction loss of the batch at ``step``: same batch on a rerun."""
    epoch, index = divmod(step, steps_per_epoch)
    seed = config.seed + VAE_SEED_OFFSET
    order = torch.randperm(
        len(pixels), generator=torch.Generator().manual_seed(seed + epoch)
    )
    start = index * config.batch_size
    batch = pixels[order[start : start + config.batch_size]].to(vae.device)
    dist = vae.encode(batch).latent_dist
    noise = torch.randn(
        dist.mean.shape,
        generator=torch.Generator().manual_seed(seed_of(seed, step, 0, 0)),
    )
    recon = vae.decode(dist.mean + dist.std * noise.to(batch.device)).sample
    return (
        F.mse_loss(recon, batch)
        + F.l1_loss(recon, batch)
        + config.kl_weight * dist.kl().mean()
    )


def _save_vae_checkpoint(
    path: Path,
    vae: torch.nn.Module,
    optimizer: object,
    lr_scheduler: object,
    state: dict,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "weights": vae.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(),
        "state": state,
    }
    save_atomically(payload, path)


def total_steps_for(n_examples: int, config: TrainingConfig, world: int = 1) -> int:
    """Optimiser steps a run of ``config`` takes on ``n_examples`` examples."""
    return plan_steps(n_examples, config, world).total_steps
