"""CPU accelerations of one generation, switched on for one pipeline call only.

- DeepCache (the ``DeepCache`` package): on all but every ``interval``-th step the
  UNet runs only its shallowest down and up layers and reuses the deep features of
  the last full step (Ma et al., 2023).
- Token merging (``tomesd``): self-attention at the highest resolution runs on a
  fraction of its tokens, merged by similarity (Bolya and Hoffman, 2023).

Both change the pixels, so each is a generation parameter, stored with the request.
bench/sd_cpu.py measures the speed of each and its SSIM against the same image
without it; the defaults below are what it kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from diffusers import StableDiffusionPipeline

# 1: every step runs the whole UNet (DeepCache off).
DEFAULT_DEEP_CACHE_INTERVAL = 1
MAX_DEEP_CACHE_INTERVAL = 10
# 0: no token is merged (token merging off).
DEFAULT_TOKEN_MERGING = 0.0
MAX_TOKEN_MERGING = 0.75  # tomesd's own guidance: past 0.75 images fall apart


@contextmanager
def accelerated(
    pipe: StableDiffusionPipeline, *, deep_cache_interval: int, token_merging: float
) -> Iterator[StableDiffusionPipeline]:
    """``pipe`` with DeepCache and token merging on while the block runs; both are
    taken off again at its end, whatever happens in it."""
    with deep_cache(pipe, deep_cache_interval), merged_tokens(pipe, token_merging):
        yield pipe


@contextmanager
def deep_cache(pipe: StableDiffusionPipeline, interval: int) -> Iterator[None]:
    """DeepCache with a full UNet step every ``interval`` steps (1: off). The cache
    branch is the first layer of the first down block: the largest saving."""
    if interval <= 1:
        yield
        return
    from DeepCache import DeepCacheSDHelper

    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=0)
    helper.enable()
    try:
        yield
    finally:
        helper.disable()


@contextmanager
def merged_tokens(pipe: StableDiffusionPipeline, ratio: float) -> Iterator[None]:
    """tomesd's token merging at ``ratio`` of the tokens (0: off)."""
    if ratio <= 0:
        yield
        return
    import tomesd

    # use_rand=False: tomesd's random partition forks torch's global RNG, so the
    # same request would give other pixels in another process.
    tomesd.apply_patch(pipe, ratio=ratio, use_rand=False)
    try:
        yield
    finally:
        tomesd.remove_patch(pipe)
