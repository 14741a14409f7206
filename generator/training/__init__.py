"""Fine-tune SD v1.x on (image, caption) pairs: LoRA through peft, or every UNet weight.

One training loop on diffusers' public API, peft and Accelerate, so the same code runs
on a CPU, one GPU, or many (``accelerate launch``; DDP). The loss is the true one: the
MSE between the UNet's prediction and the noise scheduler's target for its prediction
type (the noise for epsilon, the velocity for v_prediction), optionally min-SNR
weighted.

The package, in reading order:

- ``config``: ``TrainingConfig`` and its checks (torch-free);
- ``data``: examples to pixels (the pipeline's ``VaeImageProcessor``), token ids,
  caption dropout, random crops;
- ``losses``: the diffusion loss, the VAE's reconstruction loss, latents drawn with
  ``latent_dist.sample(generator=...)``;
- ``vae``: the VAE stage, ``train_vae``;
- ``adversarial``: the patch discriminator and the adversarial terms that the VAE
  stage adds with ``vae_adversarial_weight``;
- ``loop``: ``train``, the diffusion stage;
- ``checkpoints``: one checkpoint format for both stages (``torch.load(
  weights_only=True)``, never accelerate's ``load_state``: see that module), and the
  saved result.

Determinism and resuming: every random draw comes from a generator seeded by the
seed, the epoch or the step (``seeds.seed_of``), so a run resumed from any checkpoint
ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

from generator.training.checkpoints import (
    CHECKPOINT_FILE,
    CHECKPOINT_PREFIX,
    CHECKPOINTS,
    LORA_WEIGHT_NAME,
    UNSAFE_CHECKPOINT,
    VAE_CHECKPOINTS,
    checkpoint_dirs,
    latest_checkpoint,
    load_checkpoint,
    load_latest_checkpoint,
    restore_vae,
    save_atomically,
    save_checkpoint,
    save_result,
    trainable_state,
    weights_digest,
)
from generator.training.config import (
    LR_SCHEDULES,
    MAX_SEED,
    MAXIMA,
    MIXED_PRECISIONS,
    MODES,
    PREDICTION_TYPES,
    TEXT_TARGET_MODULES,
    UNET_TARGET_MODULES,
    TrainingConfig,
    config_problems,
)
from generator.training.data import (
    TrainingExample,
    drop_captions,
    example_tensors,
    random_crops,
    tokenize,
)
from generator.training.loop import (
    StepPlan,
    TrainingResult,
    ValidationBatch,
    make_trainable,
    plan_steps,
    save_sample_grid,
    total_steps_for,
    train,
    validation_loss,
)
from generator.training.losses import (
    denoising_loss,
    diffusion_loss,
    encode_latents,
    noise_scheduler_for,
    reconstruction_loss,
)
from generator.training.progress import ProgressCallback, TrainingProgress
from generator.training.seeds import seed_of
from generator.training.vae import VAE_SEED_OFFSET, train_vae

__all__ = [
    "CHECKPOINTS",
    "CHECKPOINT_FILE",
    "CHECKPOINT_PREFIX",
    "LORA_WEIGHT_NAME",
    "LR_SCHEDULES",
    "MAXIMA",
    "MAX_SEED",
    "MIXED_PRECISIONS",
    "MODES",
    "PREDICTION_TYPES",
    "TEXT_TARGET_MODULES",
    "UNET_TARGET_MODULES",
    "UNSAFE_CHECKPOINT",
    "VAE_CHECKPOINTS",
    "VAE_SEED_OFFSET",
    "ProgressCallback",
    "StepPlan",
    "TrainingConfig",
    "TrainingExample",
    "TrainingProgress",
    "TrainingResult",
    "ValidationBatch",
    "checkpoint_dirs",
    "config_problems",
    "denoising_loss",
    "diffusion_loss",
    "drop_captions",
    "encode_latents",
    "example_tensors",
    "latest_checkpoint",
    "load_checkpoint",
    "load_latest_checkpoint",
    "make_trainable",
    "noise_scheduler_for",
    "plan_steps",
    "random_crops",
    "reconstruction_loss",
    "restore_vae",
    "save_atomically",
    "save_checkpoint",
    "save_result",
    "save_sample_grid",
    "seed_of",
    "tokenize",
    "total_steps_for",
    "train",
    "train_vae",
    "trainable_state",
    "validation_loss",
    "weights_digest",
]
