from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from generator.cache import cached_count, cached_pipeline, clear_cache
from generator.errors import ModelNotFoundError
from generator.loading import (
    DEFAULT_HUB_ID,
    Placement,
    is_local_reference,
    load_pipeline,
    pick_placement,
)
from tests.conftest import PROJECT_ROOT
from tests.generator.conftest import FP32_CPU


def test_it_names_a_missing_model_folder(tmp_path):
    missing = tmp_path / "no-such-model"

    with pytest.raises(ModelNotFoundError) as caught:
        load_pipeline(str(missing), placement=FP32_CPU)

    assert str(missing) in str(caught.value)
    assert "model_index.json" in str(caught.value)


def test_it_names_a_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(ModelNotFoundError) as caught:
        load_pipeline(str(tmp_path), placement=FP32_CPU)

    assert f"{tmp_path} is not a diffusers pipeline folder" in str(caught.value)


def test_it_names_a_missing_checkpoint_file(tmp_path):
    missing = tmp_path / "sd-v1-4.safetensors"

    with pytest.raises(ModelNotFoundError, match="No checkpoint file at"):
        load_pipeline(str(missing), placement=FP32_CPU)


@pytest.mark.slow
def test_it_names_an_uncached_hub_id_while_offline(tmp_path):
    """In a fresh process, so HF_HOME is read the way a worker reads it at start."""
    code = (
        "from generator.loading import load_pipeline, pick_placement\n"
        "from generator.errors import ModelNotFoundError\n"
        "try:\n"
        f"    load_pipeline({DEFAULT_HUB_ID!r}, placement=pick_placement('cpu'))\n"
        "except ModelNotFoundError as exc:\n"
        "    print('ModelNotFoundError:', exc)\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)

    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.stdout.startswith("ModelNotFoundError:"), done.stderr[-2000:]
    assert DEFAULT_HUB_ID in done.stdout
    assert "'main'" in done.stdout
    assert str(tmp_path / "hf" / "hub") in done.stdout
    assert "HF_HUB_OFFLINE=1" in done.stdout


def test_it_loads_the_tiny_model_from_its_folder(tiny_model_dir):
    pipe = load_pipeline(str(tiny_model_dir), placement=FP32_CPU)

    assert pipe.safety_checker is None
    assert pipe.unet.dtype == torch.float32
    assert pipe.device.type == "cpu"
    assert len(pipe.tokenizer) == 49408
    assert (
        type(
            pipe.unet.attn_processors[
                "mid_block.attentions.0.transformer_blocks.0.attn1.processor"
            ]
        ).__name__
        == "AttnProcessor2_0"
    )


def test_it_honours_an_overridden_dtype(tiny_model_dir):
    placement = pick_placement("cpu", "float32", channels_last=True)

    pipe = load_pipeline(str(tiny_model_dir), placement=placement)

    assert pipe.unet.dtype == torch.float32
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_it_picks_fp16_on_cuda():
    placement = pick_placement("cuda")

    assert placement.dtype == torch.float16
    assert not placement.channels_last


def test_it_picks_bf16_on_a_cpu_with_native_bf16_and_fp32_elsewhere(monkeypatch):
    import generator.loading as loading

    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: True)
    assert pick_placement("cpu").dtype == torch.bfloat16
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: False)
    assert pick_placement("cpu").dtype == torch.float32


def test_it_reads_native_bf16_from_the_cpu_flags(tmp_path):
    from generator.loading import cpu_has_native_bf16

    flags = "flags\t\t: fpu sse2 avx2 fma avx512f avx512bw"
    zen4 = tmp_path / "zen4"
    zen4.write_text(f"{flags} avx512_bf16 avx512_vnni\n")
    avx2 = tmp_path / "avx2"
    avx2.write_text(f"{flags}\n")
    sapphire = tmp_path / "spr"
    sapphire.write_text(f"{flags} amx_bf16 amx_tile\n")

    assert cpu_has_native_bf16(zen4)
    assert cpu_has_native_bf16(sapphire)
    assert not cpu_has_native_bf16(avx2)
    assert not cpu_has_native_bf16(tmp_path / "missing")


def test_it_refuses_an_unknown_dtype_naming_it():
    with pytest.raises(ValueError, match="got 'float8'"):
        pick_placement("cpu", "float8")


def test_it_tells_hub_ids_from_paths(tmp_path):
    assert not is_local_reference("CompVis/stable-diffusion-v1-4")
    assert is_local_reference(str(tmp_path))
    assert is_local_reference("./models/tiny")
    assert is_local_reference("sd-v1-4.safetensors")


def test_it_returns_the_same_pipeline_for_the_same_key(tiny_model_dir):
    clear_cache()
    try:
        first = cached_pipeline(str(tiny_model_dir), None, FP32_CPU)
        again = cached_pipeline(str(tiny_model_dir), None, FP32_CPU)

        assert again is first
        assert cached_count() == 1
    finally:
        clear_cache()


def test_it_loads_another_pipeline_for_another_dtype(tiny_model_dir):
    clear_cache()
    try:
        first = cached_pipeline(str(tiny_model_dir), None, FP32_CPU)
        other = cached_pipeline(
            str(tiny_model_dir), None, Placement("cpu", torch.bfloat16, False)
        )

        assert other is not first
        assert other.unet.dtype == torch.bfloat16
        assert cached_count() == 2
    finally:
        clear_cache()
