from __future__ import annotations

import gc
import hashlib

import numpy as np
import psutil
import pytest
import torch

from generator.loading import load_pipeline
from generator.lora import (
    activate_adapter,
    adapter_name,
    ensure_adapter,
    fuse_adapter,
    loaded_adapters,
    sha256_file,
)
from generator.sampling import generate
from tests.generator.conftest import (
    FP32_CPU,
    save_kohya_copy,
    small_params,
    trained_unet,
)


def image_of(pipe, **overrides) -> np.ndarray:
    return np.asarray(generate(pipe, small_params(**overrides)).images[0]).astype(int)


def first_to_q(pipe) -> torch.nn.Module:
    """The first attention's query projection: LoRA-wrapped once an adapter loads."""
    return next(
        module
        for name, module in pipe.unet.named_modules()
        if name.endswith("attn1.to_q")
    )


def base_weight(pipe) -> torch.Tensor:
    layer = first_to_q(pipe)
    return getattr(layer, "base_layer", layer).weight


def test_it_changes_the_image_with_an_adapter(tiny_pipe, lora_files):
    base = image_of(tiny_pipe)

    name = ensure_adapter(tiny_pipe, lora_files[0])
    activate_adapter(tiny_pipe, name, 1.0)

    assert np.abs(image_of(tiny_pipe) - base).mean() > 1


def test_it_gives_the_base_image_at_scale_zero(tiny_pipe, lora_files):
    base = image_of(tiny_pipe)

    name = ensure_adapter(tiny_pipe, lora_files[0])
    activate_adapter(tiny_pipe, name, 0.0)

    assert np.array_equal(image_of(tiny_pipe), base)


def test_it_gives_the_base_image_with_no_adapter_active(tiny_pipe, lora_files):
    base = image_of(tiny_pipe)
    name = ensure_adapter(tiny_pipe, lora_files[0])
    activate_adapter(tiny_pipe, name, 1.0)
    image_of(tiny_pipe)

    activate_adapter(tiny_pipe, None)

    assert np.array_equal(image_of(tiny_pipe), base)


def test_it_scales_the_adapter_per_request(tiny_pipe, lora_files):
    name = ensure_adapter(tiny_pipe, lora_files[0])
    activate_adapter(tiny_pipe, name, 0.5)
    half = image_of(tiny_pipe)
    activate_adapter(tiny_pipe, name, 1.0)
    full = image_of(tiny_pipe)

    activate_adapter(tiny_pipe, name, 0.5)

    assert not np.array_equal(half, full)
    assert np.array_equal(image_of(tiny_pipe), half)


def test_it_switches_adapters_without_reloading_the_base(tiny_pipe, lora_files):
    unet = tiny_pipe.unet
    first = ensure_adapter(tiny_pipe, lora_files[0])
    weight = base_weight(tiny_pipe)
    saved = weight.detach().clone()
    activate_adapter(tiny_pipe, first, 1.0)
    with_first = image_of(tiny_pipe)

    second = ensure_adapter(tiny_pipe, lora_files[1])
    activate_adapter(tiny_pipe, second, 1.0)
    with_second = image_of(tiny_pipe)
    activate_adapter(tiny_pipe, first, 1.0)

    assert tiny_pipe.unet is unet
    assert base_weight(tiny_pipe) is weight
    assert torch.equal(weight, saved)
    assert loaded_adapters(tiny_pipe) == {first, second}
    assert not np.array_equal(with_first, with_second)
    assert np.array_equal(image_of(tiny_pipe), with_first)


def test_it_loads_the_same_file_once(tiny_pipe, lora_files):
    first = ensure_adapter(tiny_pipe, lora_files[0])
    again = ensure_adapter(tiny_pipe, lora_files[0])

    assert first == again
    assert loaded_adapters(tiny_pipe) == {first}


def test_it_names_adapters_after_the_file_sha256(tiny_pipe, lora_files):
    digest = hashlib.sha256(lora_files[0].read_bytes()).hexdigest()

    name = ensure_adapter(tiny_pipe, lora_files[0])

    assert sha256_file(lora_files[0]) == digest
    assert name == adapter_name(digest) == f"lora_{digest[:16]}"


def test_it_hashes_the_whole_file_in_chunks(tmp_path):
    path = tmp_path / "big.bin"
    data = bytes(range(256)) * 10_000  # 2.5 MiB: several 1 MiB chunks
    path.write_bytes(data)

    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_it_refuses_a_missing_adapter_file_naming_it(tiny_pipe, tmp_path):
    missing = tmp_path / "nowhere" / "adapter.safetensors"

    with pytest.raises(FileNotFoundError, match=str(missing)):
        ensure_adapter(tiny_pipe, missing)


def test_it_fuses_to_the_same_image_as_the_live_adapter(
    tiny_pipe_fp32, tiny_model_dir, lora_files
):
    name = ensure_adapter(tiny_pipe_fp32, lora_files[0])
    activate_adapter(tiny_pipe_fp32, name, 0.7)
    live = image_of(tiny_pipe_fp32)
    fused_pipe = load_pipeline(str(tiny_model_dir), placement=FP32_CPU)
    fused_name = ensure_adapter(fused_pipe, lora_files[0])

    fuse_adapter(fused_pipe, fused_name, 0.7)

    assert loaded_adapters(fused_pipe) == set()
    assert np.abs(image_of(fused_pipe) - live).max() <= 1


@pytest.mark.slow
def test_it_keeps_memory_flat_over_50_generations(tiny_pipe, lora_files):
    names = [ensure_adapter(tiny_pipe, path) for path in lora_files]
    process = psutil.Process()

    def run(count: int) -> None:
        for index in range(count):
            activate_adapter(tiny_pipe, names[index % 2], 1.0)
            generate(tiny_pipe, small_params(seed=index))

    run(10)  # warm-up: allocator pools and one-time caches fill here
    gc.collect()
    before = process.memory_info().rss
    run(50)
    gc.collect()
    grown = process.memory_info().rss - before

    assert grown < 30 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB"


def unet_output(unet, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    with torch.inference_mode():
        return unet(latents, torch.tensor(10), encoder_hidden_states=text).sample


def test_it_loads_the_adapter_as_it_was_trained(
    tiny_pipe_fp32, tiny_model_dir, lora_files
):
    """Same UNet output as the peft model that was saved, alpha/r scaling included."""
    trained = unet_output(trained_unet(tiny_model_dir, seed=1))

    name = ensure_adapter(tiny_pipe_fp32, lora_files[0])
    activate_adapter(tiny_pipe_fp32, name, 1.0)

    assert torch.allclose(unet_output(tiny_pipe_fp32.unet), trained, atol=1e-5)


def test_it_loads_a_kohya_file_like_its_diffusers_twin(
    tiny_pipe_fp32, tiny_model_dir, lora_files, tmp_path
):
    kohya = save_kohya_copy(lora_files[0], tmp_path / "kohya" / "xray.safetensors")
    fresh = load_pipeline(str(tiny_model_dir), placement=FP32_CPU)
    twin = ensure_adapter(tiny_pipe_fp32, lora_files[0])
    activate_adapter(tiny_pipe_fp32, twin, 0.8)

    name = ensure_adapter(fresh, kohya)
    activate_adapter(fresh, name, 0.8)

    assert torch.allclose(
        unet_output(fresh.unet), unet_output(tiny_pipe_fp32.unet), atol=1e-5
    )
    assert np.abs(image_of(fresh) - image_of(tiny_pipe_fp32)).max() <= 1
