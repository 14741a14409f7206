"""Several compatible requests as one pipeline call: their own prompts and seeds, one
UNet call per step for the whole batch.

Requests are compatible when everything one pipeline call fixes is the same: steps,
scheduler, guidance, size and LoRA scale (the model is the caller's pipeline). Each
request keeps its prompts (encoded alone, as ``generate`` does) and its seeds (one
CPU generator per image), so its starting noise and text embeddings are exactly those
of the request run alone.

A CPU's GEMM and convolution kernels pick their blocking and threading from the
shapes, so one sample's output can change in the last bits with the batch around it
(tests/generator/test_batching.py finds which layers). ``batch_invariant`` runs every
convolution and linear layer one sample at a time: each sample then meets the same
kernels with the same shapes in any batch, and a batched image is bit-identical to
the same request run alone in that mode. The rest of the UNet (norms, attention,
activations, the scheduler) computes each sample on its own already.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers import StableDiffusionPipeline

from generator.acceleration import accelerated
from generator.errors import GenerationInterrupted, InvalidParameterError
from generator.prompts import cut_prompt
from generator.sampling import (
    GenerationParams,
    GenerationResult,
    LatentsCallback,
    ProgressCallback,
    StepReporter,
    Timings,
    image_seeds,
    make_scheduler,
)

# What one pipeline call fixes for every request in it.
SHARED_FIELDS = (
    "steps",
    "scheduler",
    "guidance_scale",
    "width",
    "height",
    "lora_scale",
    "deep_cache_interval",
    "token_merging",
)
MIXED = "requests in one batch must share {field}: got {values}"


def batch_key(params: GenerationParams) -> tuple:
    """Requests with equal keys (and the same model) may share a pipeline call."""
    return tuple(getattr(params, name) for name in SHARED_FIELDS)


def batch_problems(batch: list[GenerationParams]) -> list[str]:
    """What keeps ``batch`` from running as one call: each field they do not share."""
    problems = []
    for name in SHARED_FIELDS:
        values = sorted({getattr(params, name) for params in batch})
        if len(values) > 1:
            problems.append(MIXED.format(field=name, values=values))
    return problems


@dataclass(frozen=True)
class Slot:
    """Where one request's images sit in the batch: rows ``start`` to ``stop``."""

    start: int
    stop: int


def slots(batch: list[GenerationParams]) -> list[Slot]:
    found, start = [], 0
    for params in batch:
        found.append(Slot(start, start + params.num_images))
        start += params.num_images
    return found


@torch.inference_mode()
def generate_batch(
    pipe: StableDiffusionPipeline,
    batch: list[GenerationParams],
    progress: ProgressCallback | None = None,
    on_latents: LatentsCallback | None = None,
) -> list[GenerationResult]:
    """Run compatible requests as one pipeline call; one result per request, in order.

    ``progress`` returning False stops the whole call (GenerationInterrupted); a
    caller that drops one request of the batch simply ignores its result.
    """
    # 1. Refuse a batch that one call cannot run.
    if not batch:
        raise InvalidParameterError("a batch needs at least one request")
    problems = batch_problems(batch)
    if problems:
        raise InvalidParameterError("; ".join(problems))
    first = batch[0]
    do_guidance = first.guidance_scale > 1.0
    pipe.scheduler = make_scheduler(first.scheduler, pipe.scheduler.config)

    # 2. Encode each request's prompts alone, as generate() does, then stack them.
    started = time.perf_counter()
    cuts, positive, negative = [], [], []
    for params in batch:
        prompt = cut_prompt(pipe.tokenizer, params.prompt)
        negative_cut = cut_prompt(pipe.tokenizer, params.negative_prompt)
        embeds, negative_embeds = pipe.encode_prompt(
            prompt.text,
            pipe.device,
            params.num_images,
            do_guidance,
            negative_prompt=negative_cut.text,
        )
        cuts.append((prompt, negative_cut))
        positive.append(embeds)
        negative.append(negative_embeds)
    encoded = time.perf_counter()

    # 3. Denoise the whole batch in one call, one seeded generator per image.
    seeds = [image_seeds(params) for params in batch]
    every_seed = [seed for group in seeds for seed in group]
    reporter = StepReporter(progress, first.steps, on_latents)
    with accelerated(
        pipe,
        deep_cache_interval=first.deep_cache_interval,
        token_merging=first.token_merging,
    ):
        latents = pipe(
            prompt_embeds=torch.cat(positive),
            negative_prompt_embeds=torch.cat(negative) if do_guidance else None,
            height=first.height,
            width=first.width,
            num_inference_steps=first.steps,
            guidance_scale=first.guidance_scale,
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in every_seed],
            output_type="latent",
            callback_on_step_end=reporter,
        ).images
    denoised = time.perf_counter()
    if reporter.stopped_at is not None:
        raise GenerationInterrupted(
            f"stopped at step {reporter.stopped_at} of {first.steps}"
        )

    # 4. Decode one image at a time (the VAE's slicing) and split per request.
    images = decode_grey(pipe, latents)
    finished = time.perf_counter()
    timings = Timings(encoded - started, denoised - encoded, finished - denoised)
    return [
        GenerationResult(
            images=images[slot.start : slot.stop],
            seeds=group,
            prompt=prompt,
            negative_prompt=negative_cut,
            timings=timings,
            scheduler=first.scheduler,
        )
        for slot, group, (prompt, negative_cut) in zip(
            slots(batch), seeds, cuts, strict=True
        )
    ]


def decode_grey(pipe: StableDiffusionPipeline, latents: torch.Tensor) -> list:
    """Latents to single-channel images (ITU-R 601 luminance), as generate() does.

    The VAE decodes in slices of one image, so a large batch never holds every
    image's activations at once.
    """
    pipe.vae.enable_slicing()
    latents = latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor
    decoded = pipe.vae.decode(latents).sample
    rgb = pipe.image_processor.postprocess(decoded.float(), output_type="pil")
    return [image.convert("L") for image in rgb]


BATCH_INVARIANT_LAYERS = (torch.nn.Conv2d, torch.nn.Linear)


@contextmanager
def batch_invariant(module: torch.nn.Module) -> Iterator[int]:
    """Inside the block, every Conv2d and Linear of ``module`` computes one sample
    at a time, so a sample's bits never depend on the batch around it. Yields how
    many layers it switched. Costs the speed a batch gains in those layers."""
    layers = [m for m in module.modules() if isinstance(m, BATCH_INVARIANT_LAYERS)]
    for layer in layers:
        layer.forward = _one_sample_at_a_time(layer)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward  # back to the class's forward


def _one_sample_at_a_time(layer: torch.nn.Module) -> Callable:
    forward = type(layer).forward

    def per_sample(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if x.dim() < 2 or x.shape[0] == 1:
            return forward(layer, x, *args, **kwargs)
        parts = [forward(layer, x[i : i + 1], *args, **kwargs) for i in range(len(x))]
        return torch.cat(parts)

    return per_sample
