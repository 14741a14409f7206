"""The VAE stage: fit the autoencoder alone, before any diffusion training.

One path, used by ``train`` (``vae_epochs``) and by the mini model's VAE stage, with
the same checkpoint format as the diffusion stage (``vae-checkpoints/`` beside
``checkpoints/``; see ``generator.training.checkpoints``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import StableDiffusionPipeline
from diffusers.optimization import get_scheduler

from generator.errors import InvalidParameterError
from generator.training.adversarial import (
    PatchDiscriminator,
    adaptive_weight,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
)
from generator.training.checkpoints import (
    VAE_CHECKPOINTS,
    CheckpointClock,
    latest_checkpoint,
    write_checkpoint,
)
from generator.training.config import TrainingConfig
from generator.training.data import random_crops
from generator.training.losses import latent_parameters, reconstruction_loss
from generator.training.progress import ProgressCallback, report
from generator.training.seeds import seed_of

VAE_SEED_OFFSET = 10_000


@dataclass
class VaeRun:
    """The VAE stage's parts, as its steps share them."""

    config: TrainingConfig
    vae: torch.nn.Module
    pixels: torch.Tensor
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    steps_per_epoch: int
    total: int
    autocast: torch.autocast
    clock: CheckpointClock
    state: dict
    # With ``vae_adversarial_weight``: the patch discriminator and its optimiser.
    discriminator: PatchDiscriminator | None = None
    disc_optimizer: torch.optim.Optimizer | None = None


def train_vae(
    pipe: StableDiffusionPipeline,
    pixels: torch.Tensor,
    config: TrainingConfig,
    accelerator: Accelerator,
    progress: ProgressCallback | None = None,
) -> list[tuple[int, float]]:
    """Fit the VAE first, then set its latent scaling factor; returns the loss history.

    The loss is ``reconstruction_loss`` (MSE + L1 + kl_weight × KL), with AdamW and
    ``config.lr_schedule`` (``lr_warmup_steps`` of warm-up) over the VAE's own
    ``vae_epochs`` of batches, gradients clipped to ``max_grad_norm``; with
    ``vae_crop_size`` each batch is random crops of that side; with
    ``mixed_precision`` "bf16" the forward passes run under bf16 autocast; with
    ``vae_decoder_only`` the encoder stays frozen (and the scaling factor as it was). A
    checkpoint is written as ``checkpoint_every`` / ``checkpoint_minutes`` say and at
    the end; a rerun resumes from the newest and replays what an uninterrupted run
    would have done (epoch order from ``seed + 10000 + epoch``; latent noise and
    crops from the step).

    With ``vae_adversarial_weight`` a patch discriminator trains beside the VAE
    (``generator.training.adversarial``): its hinge loss on real crops against
    their reconstructions, and, from step ``vae_adversarial_start``, its
    adaptively weighted adversarial term (plus ``vae_feature_matching_weight`` ×
    feature matching) in the VAE's loss. It is checkpointed with the VAE.

    The scaling factor is 1 / std of the training latents (at full size), the rule
    SD's 0.18215 came from, so the UNet sees unit-variance latents.
    """
    if accelerator.num_processes > 1:
        raise InvalidParameterError(
            f"vae_epochs {config.vae_epochs} runs on one process, "
            f"got {accelerator.num_processes}"
        )
    run = prepare_vae_run(pipe.vae, pixels, config, accelerator.device.type)
    started, resumed_from = time.perf_counter(), run.state["step"]
    while run.state["step"] < run.total:
        vae_step(run)
        report(
            progress,
            step=run.state["step"],
            total=run.total,
            epoch=(run.state["step"] - 1) // run.steps_per_epoch,
            loss=run.state["history"][-1][1],
            learning_rate=run.lr_scheduler.get_last_lr()[0],
            elapsed=time.perf_counter() - started,
            resumed_from=resumed_from,
        )
    pipe.vae.requires_grad_(False)
    pipe.vae.eval()
    if not config.vae_decoder_only:  # the same encoder keeps its factor
        set_scaling_factor(pipe, pixels)
    return run.state["history"]


def prepare_vae_run(
    vae: torch.nn.Module, pixels: torch.Tensor, config: TrainingConfig, device: str
) -> VaeRun:
    """AdamW and the schedule over ``vae_epochs``, restored from the newest
    checkpoint if there is one."""
    vae.requires_grad_(True)
    if config.vae_decoder_only:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    vae.train()
    steps_per_epoch = -(-len(pixels) // config.batch_size)
    total = steps_per_epoch * config.vae_epochs
    optimizer = torch.optim.AdamW(
        [param for param in vae.parameters() if param.requires_grad],
        lr=config.vae_learning_rate,
        weight_decay=config.weight_decay,
    )
    lr_scheduler = get_scheduler(
        config.lr_schedule,
        optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=total,
    )
    discriminator, disc_optimizer = _discriminator(vae, config)
    state = _resume(
        Path(config.output_dir),
        vae,
        optimizer,
        lr_scheduler,
        discriminator,
        disc_optimizer,
    )
    # bf16 autocast here on any device, the CPU included (1.7x faster per step on
    # Zen 4, measured); other precisions leave the stage in float32.
    autocast = torch.autocast(
        device, dtype=torch.bfloat16, enabled=config.mixed_precision == "bf16"
    )
    clock = CheckpointClock(config.checkpoint_every, config.checkpoint_minutes)
    return VaeRun(
        config,
        vae,
        pixels,
        optimizer,
        lr_scheduler,
        steps_per_epoch,
        total,
        autocast,
        clock,
        state,
        discriminator,
        disc_optimizer,
    )


def _discriminator(
    vae: torch.nn.Module, config: TrainingConfig
) -> tuple[PatchDiscriminator | None, torch.optim.Optimizer | None]:
    """The patch discriminator (seeded, on the VAE's device) and its Adam, or
    (None, None) when the loss has no adversarial term."""
    if not config.vae_adversarial_weight:
        return None, None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + VAE_SEED_OFFSET)
        discriminator = PatchDiscriminator(vae.config.out_channels)
    discriminator.to(vae.device).train()
    disc_optimizer = torch.optim.Adam(
        discriminator.parameters(), lr=config.vae_disc_learning_rate, betas=(0.5, 0.9)
    )
    return discriminator, disc_optimizer


def vae_step(run: VaeRun) -> None:
    """One optimiser step (and one discriminator step when there is one); a
    checkpoint when due and after the last step."""
    state, config = run.state, run.config
    batch, generator = _step_batch(
        run.pixels, config, state["step"], run.steps_per_epoch
    )
    batch = batch.to(run.vae.device)
    with run.autocast:
        loss, recon = _vae_loss(run, batch, generator)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.vae.parameters(), config.max_grad_norm)
    run.optimizer.step()
    run.lr_scheduler.step()
    run.optimizer.zero_grad()
    if run.discriminator is not None:
        state.setdefault("disc_history", []).append(
            (state["step"] + 1, _discriminator_step(run, batch, recon))
        )
    state["step"] += 1
    state["history"].append((state["step"], loss.item()))
    if state["step"] == run.total or run.clock.due(state["step"]):
        _save(run)


def _vae_loss(
    run: VaeRun, batch: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's loss on ``batch`` and its reconstruction: the reconstruction loss,
    plus the adversarial terms once they are on."""
    config = run.config
    rec, recon = reconstruction_loss(run.vae, batch, config.kl_weight, generator)
    if run.discriminator is None or run.state["step"] < config.vae_adversarial_start:
        return rec, recon
    run.discriminator.requires_grad_(False)  # its own step comes after
    fake_logits, fake_features = run.discriminator(recon)
    adversarial = generator_loss(fake_logits)
    weight = adaptive_weight(
        rec,
        adversarial,
        run.vae.decoder.conv_out.weight,
        config.vae_adversarial_weight,
    )
    loss = rec + weight * adversarial
    if config.vae_feature_matching_weight:
        with torch.no_grad():  # a fixed target: no graph to build through it
            _, real_features = run.discriminator(batch)
        loss = loss + config.vae_feature_matching_weight * feature_matching_loss(
            real_features, fake_features
        )
    run.discriminator.requires_grad_(True)
    return loss, recon


def _discriminator_step(run: VaeRun, batch: torch.Tensor, recon: torch.Tensor) -> float:
    """One hinge-loss step of the discriminator: real crops against their
    reconstructions (detached, so the VAE is not moved)."""
    with run.autocast:
        real_logits, _ = run.discriminator(batch)
        fake_logits, _ = run.discriminator(recon.detach())
        loss = discriminator_loss(real_logits.float(), fake_logits.float())
    loss.backward()
    run.disc_optimizer.step()
    run.disc_optimizer.zero_grad()
    return loss.item()


def _save(run: VaeRun) -> None:
    """A checkpoint of everything the next step depends on."""
    payload = {
        "weights": run.vae.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "lr_scheduler": run.lr_scheduler.state_dict(),
        "state": run.state,
    }
    if run.discriminator is not None:
        payload["discriminator"] = run.discriminator.state_dict()
        payload["disc_optimizer"] = run.disc_optimizer.state_dict()
    write_checkpoint(
        Path(run.config.output_dir),
        VAE_CHECKPOINTS,
        run.state["step"],
        payload,
        run.config.keep_checkpoints,
    )
    run.clock.saved()


def _resume(
    output_dir: Path,
    vae: torch.nn.Module,
    optimizer: object,
    lr_scheduler: object,
    discriminator: torch.nn.Module | None = None,
    disc_optimizer: object | None = None,
) -> dict:
    """The stage's state from its newest checkpoint, loaded into the objects given."""
    payload = latest_checkpoint(output_dir, VAE_CHECKPOINTS)
    if payload is None:
        return {"step": 0, "history": []}
    vae.load_state_dict(payload["weights"])
    optimizer.load_state_dict(payload["optimizer"])
    lr_scheduler.load_state_dict(payload["lr_scheduler"])
    if discriminator is not None:
        if "discriminator" not in payload:
            raise InvalidParameterError(
                f"the newest checkpoint in {output_dir / VAE_CHECKPOINTS} was written "
                "without a discriminator; vae_adversarial_weight "
                "cannot change within a run"
            )
        discriminator.load_state_dict(payload["discriminator"])
        disc_optimizer.load_state_dict(payload["disc_optimizer"])
    return payload["state"]


def _step_batch(
    pixels: torch.Tensor, config: TrainingConfig, step: int, steps_per_epoch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch at ``step`` (cropped when the config says so) and the generator
    its latents are drawn with: the same on a rerun."""
    epoch, index = divmod(step, steps_per_epoch)
    seed = config.seed + VAE_SEED_OFFSET
    order = torch.randperm(
        len(pixels), generator=torch.Generator().manual_seed(seed + epoch)
    )
    start = index * config.batch_size
    batch = pixels[order[start : start + config.batch_size]]
    generator = torch.Generator().manual_seed(seed_of(seed, step, 0, 0))
    if config.vae_crop_size:
        batch = random_crops(batch, config.vae_crop_size, generator)
    return batch, generator


def set_scaling_factor(pipe: StableDiffusionPipeline, pixels: torch.Tensor) -> float:
    """Set the VAE's scaling factor to 1 / std of the latent means of ``pixels``."""
    means = latent_parameters(pipe, pixels).chunk(2, dim=1)[0]
    factor = float(1.0 / means.std().clamp(min=1e-6))
    pipe.vae.register_to_config(scaling_factor=factor)
    return factor
