"""Fixtures for generator/: the tiny model loaded through the real loading code, and
LoRA files saved the way diffusers' train_text_to_image_lora.py saves them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from generator.loading import Placement, load_pipeline, pick_placement
from generator.sampling import GenerationParams

FP32_CPU = Placement("cpu", torch.float32, channels_last=False)
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def small_params(**overrides: object) -> GenerationParams:
    """A request small enough for tests: 64², 2 steps, guidance on."""
    values: dict = {
        "prompt": "No acute cardiopulmonary abnormality.",
        "width": 64,
        "height": 64,
        "steps": 2,
        "seed": 7,
    }
    return GenerationParams(**{**values, **overrides})


def save_random_lora(model_dir: Path, out: Path, seed: int) -> Path:
    """A rank-4 LoRA on the tiny UNet's to_q/to_v with random, non-zero weights."""
    unet = trained_unet(model_dir, seed)
    StableDiffusionPipeline.save_lora_weights(
        save_directory=str(out),
        unet_lora_layers=convert_state_dict_to_diffusers(
            get_peft_model_state_dict(unet)
        ),
        # Without it the file forgets lora_alpha and loads at alpha = r (half scale).
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        safe_serialization=True,
    )
    return out / LORA_WEIGHT_NAME


def trained_unet(model_dir: Path, seed: int) -> UNet2DConditionModel:
    """The tiny UNet with a rank-4 peft LoRA on to_q/to_v, random and non-zero
    (``init_lora_weights=False``), drawn from ``seed``."""
    unet = UNet2DConditionModel.from_pretrained(str(model_dir / "unet"))
    torch.manual_seed(seed)
    unet.add_adapter(
        LoraConfig(
            r=4, lora_alpha=8, init_lora_weights=False, target_modules=["to_q", "to_v"]
        )
    )
    return unet


def save_kohya_copy(diffusers_file: Path, out: Path, alpha: float = 8.0) -> Path:
    """The same adapter under kohya-ss names: lora_unet_*.lora_down/lora_up/alpha."""
    kohya = {}
    for key, tensor in load_file(str(diffusers_file)).items():
        module, kind = key.removeprefix("unet.").rsplit(".lora.", 1)
        name = "lora_unet_" + module.replace(".", "_")
        part = "lora_down" if kind.startswith("down") else "lora_up"
        kohya[f"{name}.{part}.weight"] = tensor.contiguous()
        kohya[f"{name}.alpha"] = torch.tensor(alpha)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(kohya, str(out))
    return out


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    """One intra-op thread while these tests run: the tiny model gains nothing from
    two, and on a shared 2-core machine two spinning OpenMP threads ran a tiny
    generation ten times slower (1.8 s against 0.14 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def lora_files(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """Two different adapters for the tiny model."""
    root = tmp_path_factory.mktemp("loras")
    return [
        save_random_lora(tiny_model_dir, root / f"lora-{seed}", seed) for seed in (1, 2)
    ]


@pytest.fixture
def tiny_pipe(tiny_model_dir: Path) -> StableDiffusionPipeline:
    """A fresh tiny pipeline at the platform's default CPU placement."""
    return load_pipeline(str(tiny_model_dir), placement=pick_placement("cpu"))


@pytest.fixture
def tiny_pipe_fp32(tiny_model_dir: Path) -> StableDiffusionPipeline:
    return load_pipeline(str(tiny_model_dir), placement=FP32_CPU)
