"""The losses: the diffusion loss against the scheduler's target, and the VAE's
reconstruction loss. Latents are drawn with the VAE's own distribution object."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.training_utils import compute_snr

from generator.errors import InvalidParameterError
from generator.training.config import PREDICTION_TYPES


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


def encode_latents(
    pipe: StableDiffusionPipeline, pixels: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """VAE latents sampled with ``generator`` and scaled by the VAE's factor."""
    dist = pipe.vae.encode(pixels.to(pipe.vae.dtype)).latent_dist
    return sample_latents(pipe, dist, generator)


def sample_latents(
    pipe: StableDiffusionPipeline,
    dist: DiagonalGaussianDistribution,
    generator: torch.Generator,
) -> torch.Tensor:
    """A draw from ``dist`` with ``generator``, scaled by the VAE's factor."""
    return dist.sample(generator=generator).float() * pipe.vae.config.scaling_factor


@torch.no_grad()
def latent_parameters(
    pipe: StableDiffusionPipeline, pixels: torch.Tensor, batch: int = 16
) -> torch.Tensor:
    """Every image's latent distribution (mean and log-variance), encoded once."""
    return torch.cat(
        [
            pipe.vae.encode(
                pixels[start : start + batch].to(pipe.device, pipe.vae.dtype)
            ).latent_dist.parameters
            for start in range(0, len(pixels), batch)
        ]
    )


def reconstruction_loss(
    vae: torch.nn.Module,
    batch: torch.Tensor,
    kl_weight: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE + L1 (sharper edges than MSE alone) + ``kl_weight`` × KL of one batch,
    the latents drawn with ``generator``; and the reconstruction itself."""
    dist = vae.encode(batch).latent_dist
    recon = vae.decode(dist.sample(generator=generator)).sample.float()
    loss = (
        F.mse_loss(recon, batch)
        + F.l1_loss(recon, batch)
        + kl_weight * dist.kl().float().mean()
    )
    return loss, recon
