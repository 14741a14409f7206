from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from generator.sd14_config import TEXT_ENCODER_CONFIG, UNET_CONFIG, VAE_CONFIG


def parameters_of(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def test_it_has_sd14s_parameter_counts():
    """SD v1.4: UNet 859.52M, VAE 83.65M, CLIP ViT-L/14 text tower 123.06M."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET_CONFIG)
        vae = AutoencoderKL(**VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG))

    assert parameters_of(unet) == 859_520_964
    assert parameters_of(vae) == 83_653_863
    assert parameters_of(text_encoder) == 123_060_480
