"""DeepCache and token merging: each does less work, and leaves the pipeline as it
was once the generation ends."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers.models.attention import BasicTransformerBlock

from generator.acceleration import accelerated
from generator.errors import GenerationInterrupted
from generator.sampling import generate
from tests.generator.conftest import small_params


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0])


def block_classes(pipe) -> set[str]:
    """The class names of the UNet's transformer blocks (tomesd swaps them)."""
    modules = pipe.unet.modules()
    return {type(m).__name__ for m in modules if isinstance(m, BasicTransformerBlock)}


def count_calls(module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_it_runs_the_deep_blocks_once_per_interval(tiny_pipe_fp32):
    deep = count_calls(tiny_pipe_fp32.unet.mid_block.resnets[0])

    generate(tiny_pipe_fp32, small_params(steps=6, deep_cache_interval=3))

    assert len(deep) == 2  # steps 1 and 4 run in full; 2, 3, 5, 6 reuse them


def test_it_runs_every_deep_block_without_deep_cache(tiny_pipe_fp32):
    deep = count_calls(tiny_pipe_fp32.unet.mid_block.resnets[0])

    generate(tiny_pipe_fp32, small_params(steps=6, deep_cache_interval=1))

    assert len(deep) == 6


def test_it_changes_the_pixels_with_deep_cache(tiny_pipe_fp32):
    plain = generate(tiny_pipe_fp32, small_params(steps=4))
    cached = generate(tiny_pipe_fp32, small_params(steps=4, deep_cache_interval=2))

    assert not np.array_equal(pixels(plain), pixels(cached))


@pytest.mark.parametrize(
    "change", [{"deep_cache_interval": 2}, {"token_merging": 0.5}], ids=str
)
def test_it_leaves_the_pipeline_as_it_was(tiny_pipe_fp32, change):
    before = generate(tiny_pipe_fp32, small_params(steps=3))

    generate(tiny_pipe_fp32, small_params(steps=3, **change))
    after = generate(tiny_pipe_fp32, small_params(steps=3))

    assert np.array_equal(pixels(before), pixels(after))
    assert block_classes(tiny_pipe_fp32) == {"BasicTransformerBlock"}


def test_it_takes_deep_cache_off_when_the_generation_stops(tiny_pipe_fp32):
    before = generate(tiny_pipe_fp32, small_params(steps=3))

    with pytest.raises(GenerationInterrupted):
        generate(
            tiny_pipe_fp32,
            small_params(steps=3, deep_cache_interval=2),
            lambda step, total: False,
        )
    after = generate(tiny_pipe_fp32, small_params(steps=3))

    assert np.array_equal(pixels(before), pixels(after))


def test_it_merges_tokens_in_the_attention_while_on(tiny_pipe_fp32):
    with accelerated(tiny_pipe_fp32, deep_cache_interval=1, token_merging=0.5):
        patched = block_classes(tiny_pipe_fp32)

    assert len(patched) == 1
    assert patched != {"BasicTransformerBlock"}  # tomesd's subclass while on


def test_it_gives_the_same_pixels_twice_with_both_on(tiny_pipe_fp32):
    params = small_params(steps=4, deep_cache_interval=2, token_merging=0.5)

    first = generate(tiny_pipe_fp32, params)
    second = generate(tiny_pipe_fp32, params)

    assert np.array_equal(pixels(first), pixels(second))
