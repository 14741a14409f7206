"""Previews from the latents: a least-squares projection fitted against the VAE,
handed every step's latents by generate()."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from generator import previews
from generator.sampling import generate
from tests.generator.conftest import small_params


def test_it_fits_better_than_a_flat_grey(tiny_pipe_fp32):
    vae = tiny_pipe_fp32.vae
    projection = previews.fit_projection(vae)

    # Held-out: latents of phantoms not in the fit, against their own decode.
    pixels = torch.from_numpy(previews._phantom_batch(12)[8:])
    with torch.inference_mode():
        latents = vae.encode(pixels).latent_dist.mean
        decoded = vae.decode(latents).sample
    factor = decoded.shape[-1] // latents.shape[-1]
    grey = (decoded.mean(dim=1, keepdim=True).clamp(-1, 1) + 1) / 2
    target = torch.nn.functional.avg_pool2d(grey, factor)[:, 0].numpy() * 255
    scaled = latents * vae.config.scaling_factor
    predicted = np.stack([projection.grey(one) for one in scaled]).astype(float)

    error = np.sqrt(((predicted - target) ** 2).mean())
    flat = np.sqrt(((target - target.mean()) ** 2).mean())
    assert error < flat


def test_it_fits_each_vae_once(tiny_pipe_fp32, monkeypatch):
    fits = []
    real = previews.fit_projection
    monkeypatch.setattr(
        previews, "fit_projection", lambda vae: fits.append(1) or real(vae)
    )
    monkeypatch.setattr(previews, "_PROJECTIONS", type(previews._PROJECTIONS)())

    first = previews.projection_for(tiny_pipe_fp32.vae)
    again = previews.projection_for(tiny_pipe_fp32.vae)

    assert first is again
    assert fits == [1]


def test_it_draws_a_png_twice_the_latent_size():
    projection = previews.Projection(torch.tensor([0.5, 0, 0, 0]), 0.5, 0.0)
    latents = torch.zeros(4, 8, 12)
    latents[0, :, :6] = 1.0  # left half: 0.5 * 1 + 0.5 = white

    png = previews.preview_png(projection, latents)

    image = Image.open(io.BytesIO(png))
    assert image.mode == "L"
    assert image.size == (24, 16)
    pixels = np.asarray(image)
    assert pixels[:, :12].min() == 255
    assert pixels[:, 12:].max() == 128


def test_it_hands_every_steps_latents_to_the_callback(tiny_pipe_fp32):
    seen = []

    generate(
        tiny_pipe_fp32,
        small_params(steps=3, num_images=2),
        on_latents=lambda step, latents: seen.append((step, tuple(latents.shape))),
    )

    assert [step for step, _ in seen] == [1, 2, 3]
    channels = tiny_pipe_fp32.unet.config.in_channels
    assert all(shape[:2] == (2, channels) for _, shape in seen)
