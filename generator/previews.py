"""Cheap previews of a running generation: latents to grey levels without the VAE.

A linear map from the latent channels to one grey level per latent pixel, fitted by
least squares against the model's own VAE: a few procedural chest phantoms are
encoded, decoded, and the decoded images, averaged over each latent pixel's 8×8
block, are the targets. Fitting costs one small encode and decode per VAE, once per
process (``projection_for`` caches it); a preview then costs a matrix product over
the latents of one image and a PNG of a few hundred bytes.
"""

from __future__ import annotations

import io
import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from generator import phantoms

FIT_IMAGES = 8
FIT_SIZE = 64  # the phantoms' side: 8×8 latents each


@dataclass(frozen=True)
class Projection:
    """Grey level (0-1) = weights · latent channels + bias, per latent pixel."""

    weights: torch.Tensor  # (channels,)
    bias: float
    residual: float  # RMS error of the fit on its own data, in grey levels 0-1

    def grey(self, latents: torch.Tensor) -> np.ndarray:
        """(channels, h, w) latents, as the pipeline holds them, to uint8 (h, w)."""
        flat = torch.einsum("chw,c->hw", latents.float(), self.weights) + self.bias
        return (flat.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def fit_projection(vae: AutoencoderKL, images: int = FIT_IMAGES) -> Projection:
    """Least squares from scaled latents (as the denoiser sees them) to the VAE's
    decoded luminance, averaged over each latent pixel's block."""
    pixels = torch.from_numpy(_phantom_batch(images)).to(vae.device, vae.dtype)
    with torch.inference_mode():
        latents = vae.encode(pixels).latent_dist.mean
        decoded = vae.decode(latents).sample.float()
    latents = latents.float() * vae.config.scaling_factor
    factor = decoded.shape[-1] // latents.shape[-1]
    grey = (decoded.mean(dim=1, keepdim=True).clamp(-1, 1) + 1) / 2
    target = torch.nn.functional.avg_pool2d(grey, factor).flatten()
    inputs = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    design = torch.cat([inputs, torch.ones(len(inputs), 1)], dim=1).cpu()
    solution = torch.linalg.lstsq(design, target.cpu()[:, None]).solution[:, 0]
    residual = (design @ solution - target.cpu()).pow(2).mean().sqrt()
    return Projection(solution[:-1], float(solution[-1]), float(residual))


def _phantom_batch(count: int) -> np.ndarray:
    """``count`` phantoms as RGB in -1..1, shaped (count, 3, FIT_SIZE, FIT_SIZE)."""
    rng = np.random.default_rng(0)
    findings = phantoms.all_findings()
    images = [
        np.asarray(phantoms.draw(findings[i % len(findings)], rng), dtype=np.float32)
        for i in range(count)
    ]
    grey = np.stack(images) / 127.5 - 1
    return np.repeat(grey[:, None], 3, axis=1)


_PROJECTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def projection_for(vae: AutoencoderKL) -> Projection:
    """The VAE's projection, fitted on first use in this process. A LoRA changes
    only the UNet, so every adapter on one base shares it."""
    with _LOCK:
        found = _PROJECTIONS.get(vae)
        if found is None:
            found = _PROJECTIONS[vae] = fit_projection(vae)
        return found


def preview_png(projection: Projection, latents: torch.Tensor, scale: int = 2) -> bytes:
    """One image's latents (channels, h, w) as a small grey PNG, ``scale`` times
    the latent size (64² for a 256² request)."""
    image = Image.fromarray(projection.grey(latents))
    if scale > 1:
        size = (image.width * scale, image.height * scale)
        image = image.resize(size, Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
