"""The training loop: true loss, validation, resume, saved adapters, grids."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from generator.errors import InvalidParameterError
from generator.loading import load_pipeline
from generator.lora import activate_adapter, ensure_adapter
from generator.sampling import GenerationParams, generate
from generator.tiny import build_tiny_pipeline
from generator.training import (
    TrainingConfig,
    denoising_loss,
    drop_captions,
    noise_scheduler_for,
    train,
)
from tests.training.data import (
    Interrupted,
    gray_examples,
    interrupt_at,
    small_config,
)


def train_interrupted(config: TrainingConfig, examples, at: int) -> None:
    """Train until step ``at`` is reported and stop there, as a kill would."""
    with pytest.raises(Interrupted):
        train(config, examples, progress=interrupt_at(at))


@pytest.fixture(scope="module")
def tiny_pipe(clip_tokenizer):
    return build_tiny_pipeline(seed=0, tokenizer=clip_tokenizer)


def hand_built_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return {
        "latents": torch.randn(2, 4, 8, 8, generator=generator),
        "noise": torch.randn(2, 4, 8, 8, generator=generator),
        "hidden": torch.randn(2, 77, 32, generator=generator),
        "timesteps": torch.tensor([10, 900]),
    }


def hand_target(kind: str, latents, noise, alpha_bar) -> torch.Tensor:
    """The DDPM targets written out: ε, or v = √ᾱ·ε − √(1−ᾱ)·x₀."""
    if kind == "epsilon":
        return noise
    return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents


def hand_prediction(pipe, scheduler, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """ᾱ per sample, and the UNet's output on x_t = √ᾱ·x₀ + √(1−ᾱ)·ε noised by hand."""
    alpha_bar = scheduler.alphas_cumprod[batch["timesteps"]].view(-1, 1, 1, 1)
    noisy = (
        alpha_bar.sqrt() * batch["latents"] + (1 - alpha_bar).sqrt() * batch["noise"]
    )
    with torch.no_grad():
        pred = pipe.unet(noisy, batch["timesteps"], batch["hidden"]).sample
    return alpha_bar, pred


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_it_computes_the_mse_against_the_schedulers_target(tiny_pipe, kind):
    scheduler = noise_scheduler_for(tiny_pipe, kind)
    batch = hand_built_batch()
    alpha_bar, pred = hand_prediction(tiny_pipe, scheduler, batch)
    with torch.no_grad():
        loss = denoising_loss(
            tiny_pipe.unet,
            scheduler,
            batch["latents"],
            batch["hidden"],
            batch["noise"],
            batch["timesteps"],
        )
    target = hand_target(kind, batch["latents"], batch["noise"], alpha_bar)
    expected = ((pred - target) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_it_weights_each_sample_by_min_snr(tiny_pipe, kind):
    scheduler = noise_scheduler_for(tiny_pipe, kind)
    batch = hand_built_batch()
    alpha_bar, pred = hand_prediction(tiny_pipe, scheduler, batch)
    with torch.no_grad():
        loss = denoising_loss(
            tiny_pipe.unet,
            scheduler,
            batch["latents"],
            batch["hidden"],
            batch["noise"],
            batch["timesteps"],
            snr_gamma=5.0,
        )
    snr = (alpha_bar / (1 - alpha_bar)).flatten()
    weight = torch.clamp(snr, max=5.0) / (snr + 1 if kind == "v_prediction" else snr)
    target = hand_target(kind, batch["latents"], batch["noise"], alpha_bar)
    per_sample = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    assert loss.item() == pytest.approx((per_sample * weight).mean().item(), rel=1e-5)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rank", 0, "rank must be greater than 0, got 0"),
        ("learning_rate", -1e-4, "learning_rate must be greater than 0, got -0.0001"),
        ("epochs", 0, "epochs must be greater than 0, got 0"),
        ("resolution", 100, "resolution has to be a positive multiple of 8, got 100"),
        ("target_modules", ("to_q", "ff"), "got ['ff']"),
        (
            "mode",
            "dreambooth",
            "mode must be one of ['lora', 'full'], got 'dreambooth'",
        ),
        ("prediction_type", "sample", "got 'sample'"),
        ("mixed_precision", "fp8", "got 'fp8'"),
        ("gradient_accumulation_steps", 0, "gradient_accumulation_steps must be"),
        ("vae_epochs", 2, "vae_epochs 2 needs mode 'full', got 'lora'"),
        ("caption_dropout", 1.0, "caption_dropout must be in [0, 1), got 1.0"),
        ("caption_dropout", -0.1, "caption_dropout must be in [0, 1), got -0.1"),
    ],
)
def test_it_rejects_bad_parameters_naming_the_value(tmp_path, field, value, message):
    with pytest.raises(InvalidParameterError) as caught:
        TrainingConfig(base="x", output_dir=str(tmp_path), **{field: value})
    assert message in str(caught.value)


def test_it_rejects_fp16_without_cuda(tiny_model_dir, tmp_path, examples):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = small_config(tiny_model_dir, tmp_path, mixed_precision="fp16")
    with pytest.raises(InvalidParameterError, match="'fp16' needs CUDA"):
        train(config, examples)


def test_it_rejects_too_few_examples_for_one_step(tiny_model_dir, tmp_path, examples):
    config = small_config(tiny_model_dir, tmp_path, batch_size=4)
    with pytest.raises(InvalidParameterError, match="3 training examples"):
        train(config, examples[:3])


def test_it_resumes_to_the_same_weights_as_an_uninterrupted_run(
    tiny_model_dir, tmp_path, examples
):
    settings = {"checkpoint_every": 2, "epochs": 2, "gradient_accumulation_steps": 2}
    straight = small_config(tiny_model_dir, tmp_path / "straight", **settings)
    resumed = small_config(tiny_model_dir, tmp_path / "resumed", **settings)

    expected = train(straight, examples)
    train_interrupted(resumed, examples, at=3)
    result = train(resumed, examples)

    assert (expected.steps, result.steps, result.resumed_from) == (4, 4, 2)
    want, got = load_file(expected.lora_path), load_file(result.lora_path)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[key], got[key]) for key in want)
    assert result.weights_digest == expected.weights_digest
    assert result.loss_history == expected.loss_history


def test_it_saves_only_adapter_keys_that_load_and_change_the_output(
    tiny_model_dir, tmp_path, examples
):
    result = train(small_config(tiny_model_dir, tmp_path, epochs=2), examples)

    keys = list(load_file(result.lora_path))
    assert keys
    assert all(".lora.down." in key or ".lora.up." in key for key in keys)
    assert {key.split(".")[0] for key in keys} == {"unet"}
    pipe = load_pipeline(str(tiny_model_dir))
    params = GenerationParams(prompt="dark chest", steps=2, width=64, height=64)
    before = np.asarray(generate(pipe, params).images[0])
    activate_adapter(pipe, ensure_adapter(pipe, result.lora_path))
    after = np.asarray(generate(pipe, params).images[0])
    assert not np.array_equal(before, after)


def test_it_saves_a_text_encoder_adapter_when_asked(tiny_model_dir, tmp_path):
    config = small_config(
        tiny_model_dir,
        tmp_path,
        train_text_encoder=True,
        target_modules=("to_q", "to_k", "to_v", "to_out.0"),
    )
    result = train(config, gray_examples(4))

    prefixes = {key.split(".")[0] for key in load_file(result.lora_path)}
    assert prefixes == {"unet", "text_encoder"}
    pipe = load_pipeline(str(tiny_model_dir))
    ensure_adapter(pipe, result.lora_path)
    assert pipe.get_list_adapters().keys() == {"unet", "text_encoder"}


def test_it_lowers_the_validation_loss_in_a_few_dozen_steps(tiny_model_dir, tmp_path):
    config = small_config(
        tiny_model_dir,
        tmp_path,
        mode="full",
        epochs=6,
        batch_size=2,
        learning_rate=1e-3,
        lr_warmup_steps=2,
        validation_size=4,
    )
    result = train(config, gray_examples(8))

    assert result.steps == 24
    first, last = result.validation_history[0][1], result.validation_history[-1][1]
    assert last < 0.8 * first, result.validation_history
    assert (result.pipeline_dir / "model_index.json").is_file()


def test_it_writes_a_sample_grid_every_epoch(tiny_model_dir, tmp_path):
    config = small_config(
        tiny_model_dir,
        tmp_path,
        resolution=64,
        epochs=2,
        batch_size=4,
        validation_prompts=("dark chest", "bright chest"),
        sample_steps=2,
    )
    result = train(config, gray_examples(4, size=64))

    assert [path.name for path in result.sample_grids] == [
        "epoch-000.png",
        "epoch-001.png",
    ]
    from PIL import Image

    assert Image.open(result.sample_grids[0]).size == (128, 64)


def test_it_resumes_full_fine_tuning_without_training_the_vae_again(
    tiny_model_dir, tmp_path
):
    settings = {"mode": "full", "vae_epochs": 1, "epochs": 2, "checkpoint_every": 2}
    straight = small_config(tiny_model_dir, tmp_path / "straight", **settings)
    resumed = small_config(tiny_model_dir, tmp_path / "resumed", **settings)
    examples = gray_examples(4)

    expected = train(straight, examples)
    train_interrupted(resumed, examples, at=3)
    result = train(resumed, examples)

    assert (result.resumed_from, result.vae_loss_history) == (2, [])
    assert len(expected.vae_loss_history) == 2
    assert result.weights_digest == expected.weights_digest
    vae = "vae/diffusion_pytorch_model.safetensors"
    want = load_file(expected.pipeline_dir / vae)
    got = load_file(result.pipeline_dir / vae)
    assert all(torch.equal(want[key], got[key]) for key in want)


def test_caption_dropout_swaps_that_share_of_captions_for_the_empty_prompt(
    clip_tokenizer,
):
    from generator.training import tokenize

    captions = tokenize(clip_tokenizer, ["cardiomegaly"] * 2000)
    empty = tokenize(clip_tokenizer, [""])

    dropped = drop_captions(captions, empty, 0.1, torch.Generator().manual_seed(0))
    again = drop_captions(captions, empty, 0.1, torch.Generator().manual_seed(0))

    is_empty = (dropped == empty).all(dim=1)
    assert 0.08 < is_empty.float().mean().item() < 0.12
    assert (dropped[~is_empty] == captions[0]).all()
    assert torch.equal(dropped, again)
    kept = drop_captions(captions, empty, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(kept, captions)


def test_it_resumes_with_cached_latents_to_the_same_weights(tiny_model_dir, tmp_path):
    settings = {
        "mode": "full",
        "epochs": 2,
        "checkpoint_every": 2,
        "cache_latents": True,
    }
    straight = small_config(tiny_model_dir, tmp_path / "straight", **settings)
    resumed = small_config(tiny_model_dir, tmp_path / "resumed", **settings)
    examples = gray_examples(4)

    expected = train(straight, examples)
    train_interrupted(resumed, examples, at=3)
    result = train(resumed, examples)

    assert (expected.steps, result.resumed_from) == (4, 2)
    assert result.weights_digest == expected.weights_digest
    assert result.loss_history == expected.loss_history


def test_it_saves_the_moving_average_and_resumes_it_to_the_same_weights(
    tiny_model_dir, tmp_path
):
    settings = {
        "mode": "full",
        "epochs": 3,
        "checkpoint_every": 2,
        "learning_rate": 1e-3,
        "ema_decay": 0.9,
    }
    straight = small_config(tiny_model_dir, tmp_path / "straight", **settings)
    resumed = small_config(tiny_model_dir, tmp_path / "resumed", **settings)
    last_step = small_config(
        tiny_model_dir, tmp_path / "last", **{**settings, "ema_decay": 0.0}
    )
    examples = gray_examples(4)

    expected = train(straight, examples)
    train_interrupted(resumed, examples, at=3)
    result = train(resumed, examples)
    plain = train(last_step, examples)

    assert (expected.steps, result.resumed_from) == (6, 2)
    # The average resumes exactly; the training steps themselves are unchanged.
    assert result.weights_digest == expected.weights_digest
    assert result.loss_history == expected.loss_history == plain.loss_history
    # What is saved is the average, not the last step's weights.
    unet = "unet/diffusion_pytorch_model.safetensors"
    averaged = load_file(expected.pipeline_dir / unet)
    last = load_file(plain.pipeline_dir / unet)
    assert any(not torch.equal(averaged[key], last[key]) for key in averaged)
    assert expected.averaged_validation_loss is not None
    assert expected.metrics()["averaged_validation_loss"] == (
        expected.averaged_validation_loss
    )
    assert plain.averaged_validation_loss is None


@pytest.mark.parametrize("decay", [1.0, -0.1, float("nan")])
def test_it_refuses_a_moving_average_decay_outside_zero_to_one_naming_it(
    tmp_path, decay
):
    with pytest.raises(InvalidParameterError, match=f"ema_decay .*got {decay!r}"):
        TrainingConfig(base="x", output_dir=str(tmp_path), ema_decay=decay)


def test_it_starts_the_average_at_the_checkpoint_when_resuming_a_run_without_one(
    tiny_model_dir, tmp_path
):
    settings = {"mode": "full", "epochs": 3, "checkpoint_every": 2}
    plain = small_config(tiny_model_dir, tmp_path / "plain", **settings)
    resumed = small_config(tiny_model_dir, tmp_path / "resumed", **settings)
    examples = gray_examples(4)

    expected = train(plain, examples)
    train_interrupted(resumed, examples, at=3)
    averaged = train(replace(resumed, ema_decay=0.9), examples)

    assert (averaged.steps, averaged.resumed_from) == (6, 2)
    assert averaged.loss_history == expected.loss_history
    assert averaged.averaged_validation_loss is not None
    assert averaged.weights_digest != expected.weights_digest
