"""What a training run is allowed to be: the configuration and its checks.

Torch-free, so that a form or serializer can import the choices and limits without
pulling in torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from generator.errors import InvalidParameterError

MODES = ("lora", "full")
UNET_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")
PREDICTION_TYPES = ("epsilon", "v_prediction")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
LR_SCHEDULES = ("cosine", "constant_with_warmup", "linear")
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
    # Also checkpoint once this many minutes have passed since the last checkpoint
    # (0: by steps only). Where checkpoints fall never changes the weights.
    checkpoint_minutes: float = 0.0
    keep_checkpoints: int = 2
    validation_prompts: tuple[str, ...] = ()
    validation_size: int = 4
    sample_steps: int = 10
    sample_guidance: float = 1.0
    # Encode every image's latent distribution once and sample from it each step,
    # instead of running the frozen VAE encoder on every batch.
    cache_latents: bool = False
    vae_epochs: int = 0
    vae_learning_rate: float = 1e-3
    # Train the VAE on random square crops of this side (0: whole images); a
    # convolutional VAE then applies at the full resolution.
    vae_crop_size: int = 0
    # Train the VAE's decoder alone, the encoder frozen: the latent space (and a UNet
    # trained on it) stays valid while reconstructions sharpen.
    vae_decoder_only: bool = False
    kl_weight: float = 1e-6
    # A patch discriminator beside the VAE (0: none). Its adversarial term enters the
    # VAE's loss from step ``vae_adversarial_start``, weighted so that its gradient
    # at the decoder's last layer is this share of the reconstruction loss's; the
    # discriminator itself trains from step 0. Feature matching on its features is
    # added with ``vae_feature_matching_weight``.
    vae_adversarial_weight: float = 0.0
    vae_adversarial_start: int = 0
    vae_feature_matching_weight: float = 0.0
    vae_disc_learning_rate: float = 2e-4
    # An exponential moving average of the trainable weights (diffusers' EMAModel,
    # with its warm-up (1 + step) / (10 + step) up to this decay), saved as the
    # result instead of the last step's weights; 0: none.
    ema_decay: float = 0.0

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
    "vae_disc_learning_rate": 1.0,
    "vae_adversarial_weight": 1000.0,
    "vae_feature_matching_weight": 1000.0,
    "vae_adversarial_start": 10**9,
    "lr_warmup_steps": 10**9,
    "checkpoint_every": 10**9,
    "checkpoint_minutes": 10**6,
    "resolution": 4096,
    "snr_gamma": 1000.0,
}
MAX_SEED = 2**32 - 1  # numpy's and the CUDA generators' seed range


def config_problems(config: TrainingConfig) -> list[str]:
    """Every rule ``config`` breaks, each message naming the bad value."""
    problems = _choice_problems(config) + _range_problems(config)
    problems += _target_problems(config.target_modules)
    problems += _size_problems(config)
    for name, most in MAXIMA.items():
        value = getattr(config, name)
        if value is not None and value > most:
            problems.append(f"{name} must be at most {most}, got {value}")
    if not 0 <= config.seed <= MAX_SEED:
        problems.append(f"seed must be from 0 to {MAX_SEED}, got {config.seed}")
    if config.vae_feature_matching_weight and not config.vae_adversarial_weight:
        problems.append(
            "vae_feature_matching_weight "
            f"{config.vae_feature_matching_weight} needs a discriminator: "
            f"vae_adversarial_weight is {config.vae_adversarial_weight}"
        )
    if config.vae_epochs and config.mode != "full":
        problems.append(
            f"vae_epochs {config.vae_epochs} needs mode 'full', got {config.mode!r}"
        )
    return problems


def _choice_problems(config: TrainingConfig) -> list[str]:
    problems = _choice("mode", config.mode, MODES)
    problems += _choice("lr_schedule", config.lr_schedule, LR_SCHEDULES)
    problems += _choice("mixed_precision", config.mixed_precision, MIXED_PRECISIONS)
    if config.prediction_type is not None:
        problems += _choice("prediction_type", config.prediction_type, PREDICTION_TYPES)
    return problems


def _range_problems(config: TrainingConfig) -> list[str]:
    problems = []
    for name in (
        "rank",
        "alpha",
        "epochs",
        "batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "vae_learning_rate",
        "vae_disc_learning_rate",
        "max_grad_norm",
        "keep_checkpoints",
        "validation_size",
        "sample_steps",
    ):
        problems += _positive(name, getattr(config, name))
    for name in (
        "lr_warmup_steps",
        "weight_decay",
        "checkpoint_every",
        "checkpoint_minutes",
        "vae_epochs",
        "kl_weight",
        "vae_adversarial_weight",
        "vae_adversarial_start",
        "vae_feature_matching_weight",
    ):
        problems += _not_negative(name, getattr(config, name))
    if not 0 <= config.ema_decay < 1:
        problems.append(f"ema_decay must be in [0, 1), got {config.ema_decay!r}")
    if not 0 <= config.caption_dropout < 1:
        problems.append(
            f"caption_dropout must be in [0, 1), got {config.caption_dropout!r}"
        )
    for name in ("max_steps", "snr_gamma"):
        if getattr(config, name) is not None:
            problems += _positive(name, getattr(config, name))
    return problems


def _size_problems(config: TrainingConfig) -> list[str]:
    problems = []
    if config.resolution % 8 or config.resolution < 8:
        problems.append(
            f"resolution has to be a positive multiple of 8, got {config.resolution}"
        )
    crop = config.vae_crop_size
    if crop and (crop % 8 or crop < 8 or crop > config.resolution):
        problems.append(
            "vae_crop_size has to be 0 or a positive multiple of 8 up to resolution "
            f"{config.resolution}, got {crop}"
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
