"""One text-to-X-ray generation: validated parameters in, grayscale images out."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UniPCMultistepScheduler,
)
from PIL import Image

from generator.acceleration import (
    DEFAULT_DEEP_CACHE_INTERVAL,
    DEFAULT_TOKEN_MERGING,
    MAX_DEEP_CACHE_INTERVAL,
    MAX_TOKEN_MERGING,
    accelerated,
)
from generator.errors import GenerationInterrupted, InvalidParameterError
from generator.prompts import PromptCut, cut_prompt

SCHEDULERS = {
    "dpmpp": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "ddim": (DDIMScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    # Second-order multistep solvers on Karras et al.'s noise levels (denser near
    # the end), which keep their quality at fewer steps (bench/sd_cpu.py).
    "dpmpp_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "unipc": (UniPCMultistepScheduler, {}),
}
SCHEDULER_LABELS = {
    "dpmpp": "DPM-Solver++",
    "ddim": "DDIM",
    "euler_a": "Euler ancestral",
    "pndm": "PNDM",
    "dpmpp_karras": "DPM-Solver++ 2M Karras",
    "unipc": "UniPC",
}
DEFAULT_SIZE = 256
DEFAULT_STEPS = 10
DEFAULT_SCHEDULER = "dpmpp"
MAX_STEPS = 150
MIN_SIZE, MAX_SIZE = 64, 1024
MAX_IMAGES = 8
MAX_GUIDANCE = 30.0
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1
MAX_LORA_SCALE = 2.0

# Called after each denoising step with (step, total); returning False stops the
# pipeline at that step (diffusers' interrupt) and generate() raises.
ProgressCallback = Callable[[int, int], bool | None]
# Called after each denoising step with (step, latents of every image), before the
# progress callback: for previews (generator/previews.py).
LatentsCallback = Callable[[int, torch.Tensor], None]


@dataclass(frozen=True)
class GenerationParams:
    """Everything that decides the pixels, besides the model. Validated on creation."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = DEFAULT_STEPS
    guidance_scale: float = 7.5
    scheduler: str = DEFAULT_SCHEDULER
    width: int = DEFAULT_SIZE
    height: int = DEFAULT_SIZE
    num_images: int = 1
    lora_scale: float = 1.0
    deep_cache_interval: int = DEFAULT_DEEP_CACHE_INTERVAL
    token_merging: float = DEFAULT_TOKEN_MERGING

    def __post_init__(self) -> None:
        problems = parameter_problems(self)
        if problems:
            raise InvalidParameterError("; ".join(message for _, message in problems))


def parameter_problems(params: GenerationParams) -> list[tuple[str, str]]:
    """Every bound ``params`` breaks, as (field, message naming the value) pairs."""
    problems = []
    if not params.prompt.strip():
        problems.append(("prompt", "prompt must not be empty"))
    for name in ("prompt", "negative_prompt"):
        length = len(getattr(params, name))
        if length > MAX_PROMPT_CHARS:
            problems.append(
                (
                    name,
                    f"{name} has {length} characters; the limit is {MAX_PROMPT_CHARS}",
                )
            )
    problems += _integer_problem("steps", params.steps, 1, MAX_STEPS)
    problems += _range_problem("guidance_scale", params.guidance_scale, 0, MAX_GUIDANCE)
    if params.scheduler not in SCHEDULERS:
        problems.append(
            (
                "scheduler",
                f"scheduler must be one of {sorted(SCHEDULERS)}, "
                f"got {params.scheduler!r}",
            )
        )
    for name in ("width", "height"):
        problems += size_problems(name, getattr(params, name))
    problems += _integer_problem("num_images", params.num_images, 1, MAX_IMAGES)
    problems += _integer_problem("seed", params.seed, 0, MAX_SEED)
    problems += _range_problem("lora_scale", params.lora_scale, 0, MAX_LORA_SCALE)
    problems += _integer_problem(
        "deep_cache_interval", params.deep_cache_interval, 1, MAX_DEEP_CACHE_INTERVAL
    )
    problems += _range_problem(
        "token_merging", params.token_merging, 0, MAX_TOKEN_MERGING
    )
    return problems


def _range_problem(
    name: str, value: float, low: float, high: float
) -> list[tuple[str, str]]:
    if low <= value <= high:
        return []
    return [(name, f"{name} must be between {low} and {high}, got {value}")]


def _integer_problem(
    name: str, value: object, low: int, high: int
) -> list[tuple[str, str]]:
    if not _is_integer(value):
        return [(name, f"{name} must be a whole number, got {value!r}")]
    return _range_problem(name, value, low, high)  # type: ignore[arg-type]


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def size_problems(name: str, value: int) -> list[tuple[str, str]]:
    """Image sides: a multiple of 8 (the VAE's factor) within the supported bounds."""
    if not _is_integer(value):
        return [(name, f"{name} must be a whole number, got {value!r}")]
    if value % 8:
        return [(name, f"{name} has to be a multiple of 8, got {value}")]
    return _range_problem(name, value, MIN_SIZE, MAX_SIZE)


@dataclass(frozen=True)
class Timings:
    """Seconds spent in each stage of one generation."""

    text_encoding: float
    denoising: float
    decoding: float

    @property
    def total(self) -> float:
        return self.text_encoding + self.denoising + self.decoding


@dataclass
class GenerationResult:
    """Grayscale images ("L" mode), the seed of each, and what the model was told."""

    images: list[Image.Image]
    seeds: list[int]
    prompt: PromptCut
    negative_prompt: PromptCut
    timings: Timings
    scheduler: str = field(default=DEFAULT_SCHEDULER)


def make_scheduler(name: str, config: dict) -> object:
    """A fresh scheduler of the named kind, sharing the model's noise schedule."""
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(config, **overrides)


def image_seeds(params: GenerationParams) -> list[int]:
    """Image i uses seed + i, so any single image can be regenerated alone."""
    return [params.seed + i for i in range(params.num_images)]


def generate(
    pipe: StableDiffusionPipeline,
    params: GenerationParams,
    progress: ProgressCallback | None = None,
    on_latents: LatentsCallback | None = None,
) -> GenerationResult:
    """``_generate`` with the request's accelerations (DeepCache, token merging)
    applied to ``pipe`` for this call only."""
    with accelerated(
        pipe,
        deep_cache_interval=params.deep_cache_interval,
        token_merging=params.token_merging,
    ):
        return _generate(pipe, params, progress, on_latents)


@torch.inference_mode()
def _generate(
    pipe: StableDiffusionPipeline,
    params: GenerationParams,
    progress: ProgressCallback | None = None,
    on_latents: LatentsCallback | None = None,
) -> GenerationResult:
    """Run one request on ``pipe`` and return grayscale images with timings.

    Noise comes from one CPU generator per image (seed + i), so the same inputs give
    the same pixels on CPU and the same starting noise on any device. A different
    ``num_images`` changes the batch, which may move a few pixels by one grey level.
    """
    # 1. Cut prompts to the text encoder's window, keeping what was dropped.
    prompt = cut_prompt(pipe.tokenizer, params.prompt)
    negative = cut_prompt(pipe.tokenizer, params.negative_prompt)

    # 2. Pick the scheduler; it shares the model's training noise schedule.
    pipe.scheduler = make_scheduler(params.scheduler, pipe.scheduler.config)
    do_guidance = params.guidance_scale > 1.0

    # 3. Encode the text once for all images of the request.
    started = time.perf_counter()
    prompt_embeds, negative_embeds = pipe.encode_prompt(
        prompt.text,
        pipe.device,
        params.num_images,
        do_guidance,
        negative_prompt=negative.text,
    )
    encoded = time.perf_counter()

    # 4. Denoise in latent space, one seeded generator per image.
    seeds = image_seeds(params)
    reporter = StepReporter(progress, params.steps, on_latents)
    latents = pipe(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds,
        height=params.height,
        width=params.width,
        num_inference_steps=params.steps,
        guidance_scale=params.guidance_scale,
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
        output_type="latent",
        callback_on_step_end=reporter,
    ).images
    denoised = time.perf_counter()
    if reporter.stopped_at is not None:
        stopped = reporter.stopped_at
        raise GenerationInterrupted(f"stopped at step {stopped} of {params.steps}")

    # 5. Decode with the VAE and convert RGB to single-channel luminance (ITU-R 601).
    latents = latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor
    decoded = pipe.vae.decode(latents).sample
    rgb = pipe.image_processor.postprocess(decoded.float(), output_type="pil")
    images = [image.convert("L") for image in rgb]
    finished = time.perf_counter()

    return GenerationResult(
        images=images,
        seeds=seeds,
        prompt=prompt,
        negative_prompt=negative,
        timings=Timings(encoded - started, denoised - encoded, finished - denoised),
        scheduler=params.scheduler,
    )


class StepReporter:
    """diffusers' step-end callback: hands the latents on, reports progress, and
    interrupts the pipeline (its documented ``_interrupt`` flag) when the caller's
    callback returns False."""

    def __init__(
        self,
        progress: ProgressCallback | None,
        total: int,
        on_latents: LatentsCallback | None = None,
    ) -> None:
        self.progress, self.total, self.on_latents = progress, total, on_latents
        self.stopped_at: int | None = None

    def __call__(self, pipe: object, step: int, timestep: object, kwargs: dict) -> dict:
        if self.on_latents is not None:
            self.on_latents(step + 1, kwargs["latents"])
        if self.progress is not None and self.progress(step + 1, self.total) is False:
            pipe._interrupt = True  # the remaining steps are skipped
            self.stopped_at = step + 1
        return kwargs
