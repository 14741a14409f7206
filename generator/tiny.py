"""The untrained tiny SD-shaped test model: seeded random weights from small configs.

It has every component of SD v1.x (VAE, UNet with cross-attention, CLIP text encoder
with the real 49,408-token tokenizer, PNDM scheduler with SD's betas) at a fraction
of the size, so tests and a GPU-less platform exercise exactly the code that runs
SD v1.4. It draws noise: it is a test model, never a product.

    python -m generator.tiny var/models/tiny-sd
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_TOKENIZER = PROJECT_ROOT.parent / "shared" / "models" / "clip-tokenizer"
CLIP_VOCAB_SIZE = 49408
MISSING_TOKENIZER = (
    "No CLIP tokenizer folder at {path}: set XRAY_CLIP_TOKENIZER to a folder holding "
    "vocab.json and merges.txt (SD v1.x's tokenizer/), or run "
    "`python -m generator.clip_tokenizer_files OUT` to build one from the "
    "open-clip-torch wheel."
)


def clip_tokenizer_dir() -> Path:
    """XRAY_CLIP_TOKENIZER, else ../shared/models/clip-tokenizer."""
    return Path(os.environ.get("XRAY_CLIP_TOKENIZER", SHARED_TOKENIZER))


def load_clip_tokenizer(path: Path | None = None) -> CLIPTokenizer:
    """Load the real CLIP tokenizer; refuse a folder that gives a broken vocabulary."""
    path = path or clip_tokenizer_dir()
    if not (path / "vocab.json").is_file():
        raise FileNotFoundError(MISSING_TOKENIZER.format(path=path))
    tokenizer = CLIPTokenizer.from_pretrained(str(path))
    if len(tokenizer) != CLIP_VOCAB_SIZE:
        raise ValueError(f"{path} gives {len(tokenizer)} tokens, not {CLIP_VOCAB_SIZE}")
    return tokenizer


def build_tiny_pipeline(
    seed: int = 0, tokenizer: CLIPTokenizer | None = None
) -> StableDiffusionPipeline:
    """SD v1.x in miniature: same classes and wiring, random weights from ``seed``."""
    tokenizer = tokenizer or load_clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,  # latent size for the platform's default 256² output
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),  # four levels: 8x downsampling, as SD
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=256,
    )
    text_encoder = clip_text_encoder(tokenizer, width=32)
    return assemble_pipeline(vae, text_encoder, tokenizer, unet)


def clip_text_encoder(
    tokenizer: CLIPTokenizer, width: int, layers: int = 2, heads: int = 4
) -> CLIPTextModel:
    """A small CLIP text encoder wired to the real tokenizer's vocabulary and ids."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=width,
        )
    )


def assemble_pipeline(
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    unet: UNet2DConditionModel,
) -> StableDiffusionPipeline:
    """SD v1.x's pipeline around the given parts, with SD v1.4's PNDM scheduler."""
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_pipeline(out: Path, seed: int = 0) -> Path:
    """Build the tiny model and save it in diffusers layout (safetensors)."""
    build_tiny_pipeline(seed).save_pretrained(str(out), safe_serialization=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write (diffusers layout)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"tiny test model written to {save_tiny_pipeline(args.out, args.seed)}")


if __name__ == "__main__":
    main()
