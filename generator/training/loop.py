"""The training loop: full fine-tuning or LoRA of SD v1.x's UNet (and text encoder).

Determinism and resuming: the data order of epoch ``e`` comes from ``seed + e``, and
the noise and timesteps of every micro-batch from a generator seeded by (seed, step,
micro index, rank). A checkpoint holds the trainable weights, the optimiser and
learning-rate scheduler states, the moving average of the weights (``ema_decay``)
and the step; resuming from it replays exactly what an
uninterrupted run with the same seed would have done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from diffusers.utils import make_image_grid
from peft import LoraConfig, inject_adapter_in_model

from generator.errors import InvalidParameterError
from generator.loading import Placement, load_pipeline
from generator.sampling import GenerationParams, generate
from generator.training.checkpoints import (
    CheckpointClock,
    load_latest_checkpoint,
    restore_vae,
    save_checkpoint,
    save_result,
    weights_digest,
)
from generator.training.config import (
    NO_CUDA_FOR_PRECISION,
    NO_EXAMPLES,
    TEXT_TARGET_MODULES,
    TOO_FEW_EXAMPLES,
    TrainingConfig,
)
from generator.training.data import (
    TrainingExample,
    drop_captions,
    example_tensors,
    tokenize,
)
from generator.training.losses import (
    denoising_loss,
    encode_latents,
    latent_parameters,
    noise_scheduler_for,
    sample_latents,
)
from generator.training.progress import ProgressCallback, report
from generator.training.seeds import seed_of
from generator.training.vae import train_vae

VALIDATION_TIMESTEPS = 4


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
    # With ema_decay: the validation loss of the saved (averaged) weights, beside
    # validation_history's last entry, which is the last step's weights.
    averaged_validation_loss: float | None = None

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
            "averaged_validation_loss": self.averaged_validation_loss,
            "weights_digest": self.weights_digest,
        }


@dataclass(frozen=True)
class StepPlan:
    """How micro-batches become optimiser steps on every process."""

    micro_batches_per_epoch: int
    accumulation: int
    steps_per_epoch: int
    total_steps: int


@dataclass
class TrainingData:
    """Pixels and token ids, made once; the latent distributions if cached."""

    pixels: torch.Tensor
    token_ids: torch.Tensor
    empty_ids: torch.Tensor  # what caption dropout puts instead
    latents: torch.Tensor | None = None


@dataclass(frozen=True)
class ValidationBatch:
    """A fixed subset with fixed noise and timesteps: equal weights, equal loss."""

    pixels: torch.Tensor
    token_ids: torch.Tensor
    seed: int


@dataclass
class Run:
    """One run's parts, as the loop's steps share them."""

    config: TrainingConfig
    accelerator: Accelerator
    pipe: StableDiffusionPipeline
    noise_scheduler: DDPMScheduler
    data: TrainingData
    trainable: list[torch.nn.Parameter]
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    plan: StepPlan
    progress: ProgressCallback | None
    saved: Callable[[Path], None]
    clock: CheckpointClock
    ema: EMAModel | None = None
    state: dict = field(
        default_factory=lambda: {
            "step": 0,
            "loss_history": [],
            "validation_history": [],
        }
    )
    resumed_from: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)


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
    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    check_can_train(config, examples)

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
    data = TrainingData(
        pixels=example_tensors(examples, config.resolution),
        token_ids=tokenize(pipe.tokenizer, [example.caption for example in examples]),
        empty_ids=tokenize(pipe.tokenizer, [""]),
    )
    vae_history = []
    if config.vae_epochs and not restore_vae(output_dir, pipe):
        vae_history = train_vae(pipe, data.pixels, config, accelerator)
    if config.cache_latents:
        data.latents = latent_parameters(pipe, data.pixels)

    # 3. Choose what trains: LoRA layers, or every UNet weight.
    trainable = make_trainable(pipe, config)
    if config.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    run = prepare_run(accelerator, pipe, noise_scheduler, data, trainable, config)
    run.progress, run.saved = progress, on_saved or (lambda path: None)

    # 4. Resume from the newest checkpoint, if one exists.
    run.resumed_from = load_latest_checkpoint(
        output_dir, pipe, run.optimizer, run.lr_scheduler, run.state, run.ema
    )
    if vae_history:  # the trained VAE survives a kill before the first checkpoint
        checkpoint(run)
    validation = _validation_batch(data.pixels, data.token_ids, config)
    if not run.resumed_from:
        before = validation_loss(pipe, noise_scheduler, validation, config)
        run.state["validation_history"].append((0, before))

    # 5. Epochs of seeded shuffles; after each, validation loss and a sample grid.
    grids = []
    while run.state["step"] < run.plan.total_steps:
        epoch = train_epoch(run)
        val_loss = validation_loss(pipe, noise_scheduler, validation, config)
        run.state["validation_history"].append((run.state["step"], val_loss))
        if config.validation_prompts and accelerator.is_main_process:
            grids.append(save_sample_grid(pipe, config, output_dir, epoch))
            run.saved(grids[-1])

    # 6. Save the result: the adapter alone, or the whole pipeline; the moving
    # average of the weights where the run keeps one.
    averaged = None
    if run.ema is not None:
        run.ema.copy_to(trainable)
        averaged = validation_loss(pipe, noise_scheduler, validation, config)
    accelerator.wait_for_everyone()
    lora_path, pipeline_dir = None, None
    if accelerator.is_main_process:
        lora_path, pipeline_dir = save_result(pipe, config, output_dir)
    accelerator.wait_for_everyone()
    return TrainingResult(
        output_dir=output_dir,
        lora_path=lora_path,
        pipeline_dir=pipeline_dir,
        steps=run.state["step"],
        resumed_from=run.resumed_from,
        loss_history=run.state["loss_history"],
        validation_history=run.state["validation_history"],
        sample_grids=grids,
        seconds=time.perf_counter() - started,
        weights_digest=weights_digest(trainable),
        vae_loss_history=vae_history,
        averaged_validation_loss=averaged,
    )


def check_can_train(config: TrainingConfig, examples: Sequence[object]) -> None:
    """Refuse what cannot run here before anything loads."""
    if not examples:
        raise InvalidParameterError(NO_EXAMPLES)
    if config.mixed_precision != "no" and not torch.cuda.is_available():
        raise InvalidParameterError(
            NO_CUDA_FOR_PRECISION.format(value=config.mixed_precision)
        )


def train_epoch(run: Run) -> int:
    """Optimiser steps up to the end of the current epoch (or of training), one per
    accumulated group of micro-batches; returns the epoch."""
    plan, state = run.plan, run.state
    epoch = state["step"] // plan.steps_per_epoch
    batches = _epoch_batches(run, epoch)
    first = (state["step"] - epoch * plan.steps_per_epoch) * plan.accumulation
    run.unet.train()
    group_loss = 0.0
    for micro, indices in enumerate(batches[first:], start=first):
        group_loss = group_loss + _accumulate(run, micro, indices)
        if not run.accelerator.sync_gradients:
            continue
        _finish_step(run, epoch, group_loss)
        group_loss = 0.0
        if state["step"] >= plan.total_steps:
            break
    return epoch


def _accumulate(run: Run, micro: int, indices: list[int]) -> torch.Tensor:
    """One micro-batch's backward pass; the optimiser steps when a group is full."""
    accelerator = run.accelerator
    seed = seed_of(run.config.seed, run.state["step"], micro, accelerator.process_index)
    with accelerator.accumulate(run.unet, run.text_encoder):
        loss = micro_step(run, indices, seed)
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(run.trainable, run.config.max_grad_norm)
        run.optimizer.step()
        run.lr_scheduler.step()
        run.optimizer.zero_grad()
    return loss.detach() / run.plan.accumulation


def _finish_step(run: Run, epoch: int, group_loss: torch.Tensor) -> None:
    """Count the step, update the average, record and report its loss, checkpoint
    when due."""
    state = run.state
    state["step"] += 1
    if run.ema is not None:
        run.ema.step(run.trainable)
    step_loss = run.accelerator.gather(group_loss[None]).mean().item()
    state["loss_history"].append((state["step"], step_loss))
    report(
        run.progress,
        step=state["step"],
        total=run.plan.total_steps,
        epoch=epoch,
        loss=step_loss,
        learning_rate=run.lr_scheduler.get_last_lr()[0],
        elapsed=time.perf_counter() - run.started,
        resumed_from=run.resumed_from,
    )
    # A timed run also keeps its last step, so a rerun after the end finds it done.
    last = run.config.checkpoint_minutes and state["step"] == run.plan.total_steps
    if checkpoint_due(run) or last:
        checkpoint(run)


def checkpoint_due(run: Run) -> bool:
    """The clock's answer, taken from the main process so every process agrees."""
    due = run.clock.due(run.state["step"])
    if run.accelerator.num_processes > 1 and run.config.checkpoint_minutes:
        flag = torch.tensor([float(due)], device=run.accelerator.device)
        due = bool(broadcast(flag, from_process=0).item())
    return due


def checkpoint(run: Run) -> None:
    written = save_checkpoint(
        run.output_dir,
        run.accelerator,
        run.pipe,
        run.optimizer,
        run.lr_scheduler,
        run.state,
        run.config.keep_checkpoints,
        with_vae=bool(run.config.vae_epochs),
        ema=run.ema,
    )
    run.clock.saved()
    if written is not None:
        run.saved(written)


def micro_step(run: Run, indices: list[int], seed: int) -> torch.Tensor:
    """Draw seeded latents, noise and timesteps, and return the loss of one batch."""
    pipe, data, config = run.pipe, run.data, run.config
    device = pipe.device
    generator = torch.Generator().manual_seed(seed)
    if data.latents is not None:
        dist = DiagonalGaussianDistribution(data.latents[indices].to(device))
        latents = sample_latents(pipe, dist, generator)
    else:
        with torch.no_grad():
            latents = encode_latents(pipe, data.pixels[indices].to(device), generator)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    timesteps = torch.randint(
        0,
        run.noise_scheduler.config.num_train_timesteps,
        (len(indices),),
        generator=generator,
    ).to(device)
    ids = data.token_ids[indices]
    if config.caption_dropout:
        ids = drop_captions(ids, data.empty_ids, config.caption_dropout, generator)
    hidden = run.text_encoder(ids.to(device), return_dict=False)[0]
    return denoising_loss(
        run.unet,
        run.noise_scheduler,
        latents,
        hidden,
        noise,
        timesteps,
        config.snr_gamma,
    )


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


def total_steps_for(n_examples: int, config: TrainingConfig, world: int = 1) -> int:
    """Optimiser steps a run of ``config`` takes on ``n_examples`` examples."""
    return plan_steps(n_examples, config, world).total_steps


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


def prepare_run(
    accelerator: Accelerator,
    pipe: StableDiffusionPipeline,
    noise_scheduler: DDPMScheduler,
    data: TrainingData,
    trainable: list[torch.nn.Parameter],
    config: TrainingConfig,
) -> Run:
    """AdamW and the warmup+schedule, handed to Accelerate with the models."""
    plan = plan_steps(len(data.pixels), config, accelerator.num_processes)
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
    if config.train_text_encoder:
        unet, text_encoder, optimizer, lr_scheduler = accelerator.prepare(
            pipe.unet, pipe.text_encoder, optimizer, lr_scheduler
        )
    else:
        unet, optimizer, lr_scheduler = accelerator.prepare(
            pipe.unet, optimizer, lr_scheduler
        )
        text_encoder = pipe.text_encoder
    return Run(
        config=config,
        accelerator=accelerator,
        pipe=pipe,
        noise_scheduler=noise_scheduler,
        data=data,
        trainable=trainable,
        unet=unet,
        text_encoder=text_encoder,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        plan=plan,
        progress=None,
        saved=lambda path: None,
        clock=CheckpointClock(config.checkpoint_every, config.checkpoint_minutes),
        ema=EMAModel(trainable, decay=config.ema_decay) if config.ema_decay else None,
    )


def _epoch_batches(run: Run, epoch: int) -> list[list[int]]:
    """This process's micro-batches for ``epoch``: a shuffle seeded by seed + epoch."""
    accelerator, config = run.accelerator, run.config
    generator = torch.Generator().manual_seed(config.seed + epoch)
    order = torch.randperm(len(run.data.pixels), generator=generator).tolist()
    mine = order[accelerator.process_index :: accelerator.num_processes]
    batches = [
        mine[i : i + config.batch_size]
        for i in range(0, len(mine) - config.batch_size + 1, config.batch_size)
    ]
    return batches[: run.plan.micro_batches_per_epoch]


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
    images = [
        generate(
            pipe,
            GenerationParams(
                prompt=prompt,
                seed=config.seed + index,
                steps=config.sample_steps,
                guidance_scale=config.sample_guidance,
                width=max(config.resolution, 64),
                height=max(config.resolution, 64),
            ),
        ).images[0]
        for index, prompt in enumerate(config.validation_prompts)
    ]
    pipe.scheduler = scheduler
    pipe.unet.train(was_training)
    grid = make_image_grid(images, rows=1, cols=len(images)).convert("L")
    path = output_dir / "samples" / f"epoch-{epoch:03d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
