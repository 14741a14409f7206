from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from generator.errors import InvalidParameterError
from generator.sampling import (
    DEFAULT_SCHEDULER,
    DEFAULT_SIZE,
    DEFAULT_STEPS,
    SCHEDULERS,
    GenerationParams,
    generate,
    parameter_problems,
)
from tests.generator.conftest import small_params


def pixels(result) -> list[np.ndarray]:
    return [np.asarray(image) for image in result.images]


def test_it_gives_the_same_pixels_for_the_same_seed(tiny_pipe):
    first = generate(tiny_pipe, small_params(seed=3))
    second = generate(tiny_pipe, small_params(seed=3))

    assert np.array_equal(pixels(first)[0], pixels(second)[0])


def test_it_gives_different_pixels_for_different_seeds(tiny_pipe):
    first = generate(tiny_pipe, small_params(seed=3))
    second = generate(tiny_pipe, small_params(seed=4))

    assert not np.array_equal(pixels(first)[0], pixels(second)[0])


def test_it_gives_the_same_pixels_from_a_fresh_load(tiny_pipe, tiny_model_dir):
    from generator.loading import load_pipeline, pick_placement

    again = load_pipeline(str(tiny_model_dir), placement=pick_placement("cpu"))

    first = generate(tiny_pipe, small_params())
    second = generate(again, small_params())

    assert np.array_equal(pixels(first)[0], pixels(second)[0])


def test_it_returns_grayscale_images_at_the_requested_size(tiny_pipe):
    result = generate(tiny_pipe, small_params(width=96, height=64, num_images=2))

    assert [image.mode for image in result.images] == ["L", "L"]
    assert [image.size for image in result.images] == [(96, 64), (96, 64)]
    assert pixels(result)[0].shape == (64, 96)


def test_it_uses_seed_plus_index_for_each_image(tiny_pipe_fp32):
    both = generate(tiny_pipe_fp32, small_params(seed=10, num_images=2))
    second_alone = generate(tiny_pipe_fp32, small_params(seed=11))

    assert both.seeds == [10, 11]
    # Same starting noise; in fp32 the batch of 2 may move a pixel by a grey level
    # (bf16, the default on CPUs with native bf16, rounds more coarsely).
    difference = np.abs(
        pixels(both)[1].astype(int) - pixels(second_alone)[0].astype(int)
    )
    assert difference.max() <= 1


def test_it_reports_progress_once_per_step(tiny_pipe):
    calls = []

    generate(tiny_pipe, small_params(steps=3), lambda step, total: calls.append(step))

    assert calls == [1, 2, 3]


def test_it_reports_the_total_with_each_step(tiny_pipe):
    calls = []

    generate(tiny_pipe, small_params(steps=2), lambda step, total: calls.append(total))

    assert calls == [2, 2]


def test_it_times_each_stage(tiny_pipe):
    timings = generate(tiny_pipe, small_params()).timings

    assert timings.text_encoding > 0
    assert timings.denoising > 0
    assert timings.decoding > 0
    assert timings.total == pytest.approx(
        timings.text_encoding + timings.denoising + timings.decoding
    )


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_it_runs_every_scheduler(tiny_pipe, scheduler):
    result = generate(tiny_pipe, small_params(scheduler=scheduler))

    assert result.scheduler == scheduler
    assert type(tiny_pipe.scheduler) is SCHEDULERS[scheduler][0]
    assert np.asarray(result.images[0]).std() > 0


def test_it_runs_without_guidance(tiny_pipe):
    result = generate(tiny_pipe, small_params(guidance_scale=1.0))

    assert result.images[0].size == (64, 64)


def test_it_reports_what_a_long_prompt_lost(tiny_pipe):
    prompt = "The heart is normal in size. " * 20

    result = generate(tiny_pipe, small_params(prompt=prompt))

    assert result.prompt.truncated
    assert result.prompt.dropped
    assert prompt.startswith(result.prompt.text)


def test_it_defaults_to_the_platform_size_and_steps():
    params = GenerationParams(prompt="Normal chest.")

    assert (params.width, params.height) == (DEFAULT_SIZE, DEFAULT_SIZE) == (256, 256)
    assert params.steps == DEFAULT_STEPS
    assert params.scheduler == DEFAULT_SCHEDULER


BAD_INPUTS = [
    ({"steps": 0}, "steps", "got 0"),
    ({"steps": 151}, "steps", "got 151"),
    ({"steps": 2.5}, "steps", "got 2.5"),
    ({"width": 300}, "width", "got 300"),
    ({"height": 260}, "height", "got 260"),
    ({"width": 56}, "width", "got 56"),
    ({"height": 1032}, "height", "got 1032"),
    ({"guidance_scale": -1.0}, "guidance_scale", "got -1.0"),
    ({"guidance_scale": 31.0}, "guidance_scale", "got 31.0"),
    ({"guidance_scale": float("nan")}, "guidance_scale", "got nan"),
    ({"scheduler": "lms"}, "scheduler", "got 'lms'"),
    ({"num_images": 0}, "num_images", "got 0"),
    ({"num_images": 9}, "num_images", "got 9"),
    ({"seed": -1}, "seed", "got -1"),
    ({"seed": 2**32}, "seed", f"got {2**32}"),
    ({"lora_scale": -0.5}, "lora_scale", "got -0.5"),
    ({"lora_scale": 2.5}, "lora_scale", "got 2.5"),
    ({"deep_cache_interval": 0}, "deep_cache_interval", "got 0"),
    ({"deep_cache_interval": 11}, "deep_cache_interval", "got 11"),
    ({"deep_cache_interval": 2.5}, "deep_cache_interval", "got 2.5"),
    ({"token_merging": -0.1}, "token_merging", "got -0.1"),
    ({"token_merging": 0.8}, "token_merging", "got 0.8"),
    ({"prompt": "   "}, "prompt", "prompt must not be empty"),
    ({"prompt": "x" * 2001}, "prompt", "2001 characters"),
    ({"negative_prompt": "x" * 2001}, "negative_prompt", "2001 characters"),
]


@pytest.mark.parametrize(("change", "field", "fragment"), BAD_INPUTS)
def test_it_rejects_a_bad_input_naming_the_value(change, field, fragment):
    values = {"prompt": "Normal chest.", **change}

    with pytest.raises(InvalidParameterError) as caught:
        GenerationParams(**values)

    assert fragment in str(caught.value)
    assert field in str(caught.value)


@pytest.mark.parametrize(("change", "field", "fragment"), BAD_INPUTS)
def test_it_lists_a_bad_input_under_its_field(change, field, fragment):
    fields = {**GenerationParams("Normal chest.").__dict__, **change}

    problems = parameter_problems(SimpleNamespace(**fields))

    assert [name for name, _ in problems] == [field]
    assert fragment in problems[0][1]


def test_it_reports_every_problem_at_once():
    with pytest.raises(InvalidParameterError) as caught:
        GenerationParams(prompt="Normal chest.", steps=0, width=300)

    assert "steps must be between 1 and 150, got 0" in str(caught.value)
    assert "width has to be a multiple of 8, got 300" in str(caught.value)


def test_it_accepts_the_bounds():
    params = GenerationParams(
        prompt="Normal chest.",
        deep_cache_interval=10,
        token_merging=0.75,
        steps=150,
        width=64,
        height=1024,
        guidance_scale=0.0,
        num_images=8,
        seed=2**32 - 1,
        lora_scale=2.0,
    )

    assert parameter_problems(params) == []
