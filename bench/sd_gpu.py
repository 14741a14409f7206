"""The CUDA path, measured: what each GPU setting buys on the SD v1.4 architecture.

    .venv/bin/python bench/sd_gpu.py [--size 512] [--steps 20] [--batches 1,8]
                                     [--repeats 3] [--no-compile]
    .venv/bin/python bench/sd_gpu.py --cpu-smoke   # checks the script, not the GPU

SD v1.4's published architecture (generator/sd14_config.py) with random weights
costs what SD v1.4 costs. In fp16 at 512², 20 DPM-Solver++ steps, guidance 7.5
(two UNet passes per step), through the platform's own ``generator.sampling.
generate``, for batch 1 and batch 8, it times one variant at a time:

- ``classic``: diffusers' original attention (AttnProcessor), the baseline;
- ``sdpa``: PyTorch scaled-dot-product attention (AttnProcessor2_0, the platform's);
- ``sdpa+channels_last``: the UNet and VAE in channels-last memory format;
- ``sdpa+compile``: the UNet through ``torch.compile`` (compile time printed apart);
- ``sdpa+lora``: a rank-8 LoRA on the UNet's attention projections, live (unfused);
- ``sdpa+lora fused``: the same adapter folded into the weights (``fuse_lora``).

For each it prints seconds per pipeline call (median of ``--repeats`` after one
warm-up), images per second, and the peak CUDA memory of the call. Without CUDA it
says so and exits 0. ``--cpu-smoke`` runs every variant on the CPU with the tiny
SD-shaped model at 64² and 2 steps, to show the script works; its figures say
nothing about a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diffusers import StableDiffusionPipeline  # noqa: E402
from diffusers.models.attention_processor import (  # noqa: E402
    AttnProcessor,
    AttnProcessor2_0,
)
from diffusers.utils import convert_state_dict_to_diffusers  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from peft import LoraConfig  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402

from generator.lora import ensure_adapter, fuse_adapter  # noqa: E402
from generator.sampling import GenerationParams, generate  # noqa: E402

TOKENIZER_DIR = ROOT.parent / "shared" / "models" / "clip-tokenizer"
PROMPT = "Frontal chest radiograph. Mild cardiomegaly. No focal consolidation."
LORA_RANK = 8
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
NO_CUDA = "No CUDA device here: bench/sd_gpu.py measures the CUDA path only."


@dataclass(frozen=True)
class Setup:
    device: str
    dtype: torch.dtype
    size: int
    steps: int
    tiny: bool


@dataclass(frozen=True)
class Timing:
    variant: str
    batch: int
    seconds: float
    peak_mib: float | None
    compile_s: float | None = None

    def line(self) -> str:
        rate = self.batch / self.seconds
        peak = "n/a" if self.peak_mib is None else f"{self.peak_mib:,.0f} MiB"
        compiled = "" if self.compile_s is None else f"; compile {self.compile_s:.0f} s"
        return (
            f"batch {self.batch}  {self.variant:<20} {self.seconds:7.3f} s per call, "
            f"{rate:6.2f} images/s, peak {peak}{compiled}"
        )


def build_pipeline(setup: Setup) -> StableDiffusionPipeline:
    """Random weights of the SD v1.4 architecture (or the tiny model), on the device."""
    from generator.tiny import build_tiny_pipeline, load_clip_tokenizer

    tokenizer = load_clip_tokenizer(TOKENIZER_DIR)
    if setup.tiny:
        pipe = build_tiny_pipeline(seed=0, tokenizer=tokenizer)
    else:
        from generator.sd14_config import build_sd14_pipeline

        pipe = build_sd14_pipeline(tokenizer, seed=0)
    pipe.to(setup.device, setup.dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def params(setup: Setup, batch: int) -> GenerationParams:
    return GenerationParams(
        prompt=PROMPT,
        seed=1,
        steps=setup.steps,
        scheduler="dpmpp",
        width=setup.size,
        height=setup.size,
        num_images=batch,
    )


def synchronize(setup: Setup) -> None:
    if setup.device == "cuda":
        torch.cuda.synchronize()


def time_calls(
    setup: Setup, run: Callable[[], object], repeats: int
) -> tuple[float, float, float | None]:
    """First call's seconds (warm-up, compile), median of the rest, peak MiB."""
    synchronize(setup)
    started = time.perf_counter()
    run()
    synchronize(setup)
    first = time.perf_counter() - started
    if setup.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        synchronize(setup)
        times.append(time.perf_counter() - started)
    peak = None
    if setup.device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    return first, statistics.median(times), peak


def save_random_lora(pipe: StableDiffusionPipeline, folder: Path) -> Path:
    """A rank-8 LoRA with random non-zero weights, saved as training saves one."""
    unet = pipe.unet
    unet.add_adapter(
        LoraConfig(
            r=LORA_RANK,
            lora_alpha=LORA_RANK,
            init_lora_weights=False,
            target_modules=LORA_TARGETS,
        )
    )
    StableDiffusionPipeline.save_lora_weights(
        save_directory=str(folder),
        unet_lora_layers=convert_state_dict_to_diffusers(
            get_peft_model_state_dict(unet)
        ),
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        safe_serialization=True,
    )
    unet.delete_adapters("default")
    return folder / "pytorch_lora_weights.safetensors"


def variants(setup: Setup, compile_unet: bool) -> list[tuple[str, Callable]]:
    """(name, prepare) pairs; each prepare takes a fresh pipeline and a temp folder
    and returns the extra seconds it spent (compile)."""

    def classic(pipe, _):
        pipe.unet.set_attn_processor(AttnProcessor())
        pipe.vae.set_attn_processor(AttnProcessor())

    def sdpa(pipe, _):
        pipe.unet.set_attn_processor(AttnProcessor2_0())
        pipe.vae.set_attn_processor(AttnProcessor2_0())

    def channels_last(pipe, folder):
        sdpa(pipe, folder)
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)

    def compiled(pipe, folder):
        sdpa(pipe, folder)
        pipe.unet = torch.compile(pipe.unet, fullgraph=True)

    def lora(pipe, folder):
        sdpa(pipe, folder)
        path = save_random_lora(pipe, folder)
        pipe.to(setup.device, setup.dtype)
        name = ensure_adapter(pipe, path)
        pipe.set_adapters([name], adapter_weights=[1.0])
        pipe.to(setup.device, setup.dtype)

    def lora_fused(pipe, folder):
        sdpa(pipe, folder)
        path = save_random_lora(pipe, folder)
        pipe.to(setup.device, setup.dtype)
        fuse_adapter(pipe, ensure_adapter(pipe, path))
        pipe.to(setup.device, setup.dtype)

    chosen = [
        ("classic", classic),
        ("sdpa", sdpa),
        ("sdpa+channels_last", channels_last),
    ]
    if compile_unet:
        chosen.append(("sdpa+compile", compiled))
    chosen += [("sdpa+lora", lora), ("sdpa+lora fused", lora_fused)]
    return chosen


def measure(
    setup: Setup, batches: list[int], repeats: int, compile_unet: bool
) -> list[Timing]:
    results = []
    for name, prepare in variants(setup, compile_unet):
        pipe = build_pipeline(setup)
        with tempfile.TemporaryDirectory() as folder:
            prepare(pipe, Path(folder))
            for batch in batches:
                call = params(setup, batch)
                first, seconds, peak = time_calls(
                    setup, lambda pipe=pipe, call=call: generate(pipe, call), repeats
                )
                compile_s = first - seconds if name == "sdpa+compile" else None
                timing = Timing(name, batch, seconds, peak, compile_s)
                print(timing.line(), flush=True)
                results.append(timing)
        del pipe
        if setup.device == "cuda":
            torch.cuda.empty_cache()
    return results


def summary(results: list[Timing]) -> list[str]:
    """Each variant's speed-up over the classic baseline at the same batch size."""
    base = {t.batch: t.seconds for t in results if t.variant == "classic"}
    return [
        f"batch {t.batch}  {t.variant:<20} {base[t.batch] / t.seconds:5.2f}x classic"
        for t in results
        if t.variant != "classic" and t.batch in base
    ]


def device_line(setup: Setup) -> str:
    if setup.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return (
            f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
            f"CUDA {torch.version.cuda}, torch {torch.__version__}"
        )
    return f"CPU smoke run (figures say nothing about a GPU), torch {torch.__version__}"


def main() -> int:
    diffusers_logging.set_verbosity_error()  # "modules kept in float32: []" per .to()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--cpu-smoke", action="store_true")
    args = parser.parse_args()
    if args.cpu_smoke:
        setup = Setup("cpu", torch.float32, 64, 2, tiny=True)
        batches, repeats = [1, 2], 1
    elif not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    else:
        setup = Setup("cuda", torch.float16, args.size, args.steps, tiny=False)
        batches = [int(b) for b in args.batches.split(",")]
        repeats = args.repeats
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"bench/sd_gpu.py {stamp}")
    print(device_line(setup))
    print(
        f"SD v1.4 architecture{' (tiny stand-in)' if setup.tiny else ''}, random "
        f"weights, {str(setup.dtype).removeprefix('torch.')}, {setup.size}², "
        f"{setup.steps} DPM-Solver++ steps, guidance 7.5, median of {repeats}"
    )
    results = measure(setup, batches, repeats, not args.no_compile and not setup.tiny)
    print("\n".join(summary(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
