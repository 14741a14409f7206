"""CPU benchmark of the SD v1.4 architecture (random weights) through generator/.

    python -m bench.sd_cpu [--quick] [--threads N] [--bf16-unet] [--compile]
                           [--out bench/out/sd_cpu.txt]

In one run it prints: UNet seconds per step and achieved GFLOP/s against an
estimated FP32 peak, with each placement tried (threads, channels_last, bf16, fp16)
and its relative error against fp32; then whole 256² images in the platform's CPU
placement: the setting before issue 16 (10 DPM-Solver++ steps), each stronger solver
at fewer steps, DeepCache and token merging (speed, and SSIM against the fp32 image
of the same seed and steps without them), and threads; last, the platform default
(GenerationParams' defaults) against the prototype's setting (fp32, 512², 5 steps,
PNDM), interleaved so load from other processes shifts both, the fastest of the
repeats reported, and their ratio with the default's SSIM against fp32.
Image quality at fewer steps is judged on a trained model: bench/mini_accelerations.py.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from torch.utils.flop_counter import FlopCounterMode

from generator.loading import Placement, pick_placement, prepare_pipeline
from generator.metrics import compare
from generator.sampling import SCHEDULER_LABELS, GenerationParams, generate
from generator.sd14_config import build_sd14_pipeline
from generator.tiny import load_clip_tokenizer

OUT = Path(__file__).resolve().parent / "out" / "sd_cpu.txt"
MINI_FID = OUT.parent / "mini_accelerations.json"  # bench/mini_accelerations.py
TARGET_RATIO = 0.10
# An optimisation must save at least 10% to be kept: on the shared 2-core machine
# the same generation repeats within about +-10-20%.
KEEP_SPEEDUP = 1.10
# Fidelity bars against fp32. bf16 keeps 8 significant bits (unit round-off 2^-9,
# about 2e-3); through the UNet's ~70 layers with random weights that grows to about
# 1e-2 of the output, so a step's relative error must stay under 3e-2, and the final
# image at the same seed must keep an SSIM of at least 0.95 against the fp32 one.
MAX_RELATIVE_ERROR = 3e-2
MIN_IMAGE_SSIM = 0.95
PROMPT = (
    "The heart is mildly enlarged. There is a small right pleural effusion with "
    "adjacent basilar atelectasis. No pneumothorax."
)
PROTOTYPE = {"width": 512, "height": 512, "steps": 5, "scheduler": "pndm"}
FP32 = Placement("cpu", torch.float32, channels_last=False)


class Report:
    """Print each line and append it to the output file as it comes."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "w", encoding="utf-8")  # noqa: SIM115

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.handle.write(line + "\n")
        self.handle.flush()


# 1. This CPU's FP32 peak, from lscpu.


def lscpu() -> dict[str, str]:
    done = subprocess.run(["lscpu"], capture_output=True, text=True, check=False)
    pairs = (line.split(":", 1) for line in done.stdout.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def fp32_flops_per_cycle(flags: set[str]) -> int:
    """Per core: two FMA pipes x SIMD fp32 lanes x 2 FLOPs (multiply and add)."""
    if "avx512f" in flags:
        return 2 * 16 * 2
    if "avx2" in flags and "fma" in flags:
        return 2 * 8 * 2
    return 2 * 4 * 2  # SSE: one add and one multiply pipe, 4 lanes each


def cpu_ghz(info: dict[str, str]) -> float:
    if info.get("CPU max MHz"):
        return float(info["CPU max MHz"]) / 1000
    text = Path("/proc/cpuinfo").read_text()
    return float(re.search(r"cpu MHz\s*:\s*([\d.]+)", text).group(1)) / 1000


def peak_gflops(report: Report) -> float:
    info = lscpu()
    flags = set(info.get("Flags", "").split())
    cores = len(os.sched_getaffinity(0))
    ghz, per_cycle = cpu_ghz(info), fp32_flops_per_cycle(flags)
    peak = cores * ghz * per_cycle
    simd = [flag for flag in ("avx512f", "avx512_bf16", "amx_bf16") if flag in flags]
    report(f"CPU: {info.get('Model name', platform.processor())}, {cores} cores")
    report(f"  SIMD flags: avx2={'avx2' in flags} fma={'fma' in flags} {simd or ''}")
    report(
        f"  FP32 peak estimate: {cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle"
        f" = {peak:.0f} GFLOP/s (2 FMA pipes x SIMD lanes x 2; lscpu MHz, no turbo)"
    )
    if "avx512_bf16" in flags:
        report(
            f"  BF16 peak estimate: {2 * peak:.0f} GFLOP/s (VDPBF16PS does two "
            "multiply-adds per fp32 lane)"
        )
    return peak


# 2. UNet forwards: speed, FLOPs and fidelity of each variant.


def unet_inputs(pipe: StableDiffusionPipeline, size: int) -> tuple:
    """One guided step's inputs: a batch of 2 (unconditional and conditional)."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, size // 8, size // 8, generator=generator)
    width = pipe.unet.config.cross_attention_dim
    text = torch.randn(2, 77, width, generator=generator)
    return latents, torch.tensor(500), text


@torch.inference_mode()
def unet_forward(unet: torch.nn.Module, inputs: tuple) -> torch.Tensor:
    latents, timestep, text = inputs
    fmt = (
        torch.channels_last
        if unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )
    latents = latents.to(unet.dtype).contiguous(memory_format=fmt)
    return unet(latents, timestep, encoder_hidden_states=text.to(unet.dtype)).sample


def seconds(
    action: Callable[[], object], repeats: int, warm_up: bool = True
) -> tuple[float, object]:
    """Minimum wall time of ``repeats`` calls, after one warm-up call if asked."""
    result = action() if warm_up else None
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - started)
    return min(times), result


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.float(), reference.float()
    return float((value - reference).norm() / reference.norm())


def unet_flops(unet: torch.nn.Module, inputs: tuple) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        unet_forward(unet, inputs)
    return counter.get_total_flops()


def with_threads(threads: int, action: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return action()
        finally:
            torch.set_num_threads(before)

    return run


def low_precision_block_check(
    pipe: StableDiffusionPipeline, report: Report
) -> dict[str, tuple[float, float]]:
    """bf16 and fp16 on the first resnet + transformer of the UNet at 256²: cheap,
    so it runs even where a whole low-precision forward would take minutes (a CPU
    without native bf16/fp16 kernels)."""
    index, block = next(
        (index, block)
        for index, block in enumerate(pipe.unet.down_blocks)
        if hasattr(block, "attentions")
    )
    piece = torch.nn.ModuleList([block.resnets[0], block.attentions[0]])
    side = 32 // 2**index
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(
        2, block.resnets[0].in_channels, side, side, generator=generator
    )
    temb = torch.randn(2, pipe.unet.time_embedding.linear_2.out_features)
    text = torch.randn(2, 77, pipe.unet.config.cross_attention_dim)

    def run(module: torch.nn.ModuleList, dtype: torch.dtype) -> Callable[[], object]:
        def forward() -> torch.Tensor:
            with torch.inference_mode():
                out = module[0](hidden.to(dtype), temb.to(dtype))
                return module[1](out, encoder_hidden_states=text.to(dtype))[0]

        return forward

    base_s, base = seconds(run(piece, torch.float32), 1)
    report(f"  first resnet + transformer ({side}², batch 2), fp32: {base_s:.3f} s")
    speedups = {}
    for dtype in (torch.bfloat16, torch.float16):
        low = copy.deepcopy(piece).to(dtype)
        low_s, out = seconds(run(low, dtype), 1, warm_up=False)
        speedups[dtype] = (base_s / low_s, relative_error(out, base))
        report(
            f"  first resnet + transformer, {str(dtype)[6:]}: {low_s:.3f} s "
            f"({base_s / low_s:.2f}x fp32 speed), rel. error "
            f"{relative_error(out, base):.2e}"
        )
    return speedups


def unet_variant(
    pipe: StableDiffusionPipeline,
    inputs: tuple,
    base: tuple[float, torch.Tensor],
    label: str,
    placement: Placement,
    report: Report,
) -> tuple[float, float]:
    """Seconds per step of a copy of the UNet in ``placement``; (speed-up, error)."""
    unet = copy.deepcopy(pipe.unet).to(dtype=placement.dtype)
    if placement.channels_last:
        unet.to(memory_format=torch.channels_last)
    step_s, out = seconds(lambda: unet_forward(unet, inputs), 1)
    speedup, error = base[0] / step_s, relative_error(out, base[1])
    report(f"  {label}: {step_s:.2f} s/step ({speedup:.2f}x), rel. error {error:.2e}")
    return step_s, error


def unet_variants(
    pipe: StableDiffusionPipeline, args: argparse.Namespace, report: Report
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Seconds per guided UNet step at 256², and (speed-up, relative error) of each
    optimisation against the fp32 baseline."""
    inputs, threads = unet_inputs(pipe, 256), torch.get_num_threads()
    timings: dict[str, float] = {}
    gains: dict[str, tuple[float, float]] = {}
    base = seconds(lambda: unet_forward(pipe.unet, inputs), 1)
    timings["fp32"] = base[0]
    report(f"  fp32, {threads} thread(s) (baseline): {base[0]:.2f} s/step")
    if args.quick:  # the placements were measured before; whole images matter here
        return timings, gains
    cores = len(os.sched_getaffinity(0))
    other = 1 if threads > 1 else cores
    if other != threads:
        other_s, out = seconds(
            with_threads(other, lambda: unet_forward(pipe.unet, inputs)), 1, False
        )
        timings[f"fp32 {other} threads"] = other_s
        gains[f"{other} thread(s)"] = (base[0] / other_s, relative_error(out, base[1]))
        report(
            f"  fp32, {other} thread(s): {other_s:.2f} s/step "
            f"({base[0] / other_s:.2f}x), rel. error {relative_error(out, base[1]):.2e}"
        )
    variants = {"fp32 + channels_last": Placement("cpu", torch.float32, True)}
    block = low_precision_block_check(pipe, report)
    # A whole bf16 forward only where the block says bf16 is not a slow fallback.
    if block[torch.bfloat16][0] > 1 or args.bf16_unet:
        variants["bf16"] = Placement("cpu", torch.bfloat16, False)
        variants["bf16 + channels_last"] = Placement("cpu", torch.bfloat16, True)
    else:
        gains["bf16 (one block)"] = block[torch.bfloat16]
    gains["fp16 (one block)"] = block[torch.float16]
    for label, placement in variants.items():
        step_s, error = unet_variant(pipe, inputs, base, label, placement, report)
        timings[label] = step_s
        gains[label] = (base[0] / step_s, error)
    if args.compile:
        compiled_forward(pipe, inputs, base[1], base[0], report)
    return timings, gains


def decisions(gains: dict[str, tuple[float, float]], report: Report) -> None:
    """Keep what saves at least 10% with a relative error under the bar."""
    for name, (speedup, error) in gains.items():
        kept = speedup >= KEEP_SPEEDUP and error < MAX_RELATIVE_ERROR
        report(
            f"  {name}: {speedup:.2f}x speed, error {error:.1e} -> "
            f"{'KEEP' if kept else 'drop'}"
        )


def acceleration_decisions(
    gains: dict[str, tuple[float, float | None]], report: Report
) -> None:
    """Speed and SSIM bars per acceleration, beside its FID on the mini model when
    bench/mini_accelerations.py has written one."""
    fids, spread = mini_fids()
    for name, (speedup, ssim) in gains.items():
        bars = speedup >= KEEP_SPEEDUP and (ssim is None or ssim >= MIN_IMAGE_SSIM)
        fidelity = "" if ssim is None else f", SSIM {ssim:.4f}"
        quality = ""
        if name in fids:
            worse = fids[name]
            verdict = "within" if worse <= spread else "BEYOND"
            quality = (
                f"; mini FID {worse:+.1f} vs default, {verdict} spread {spread:.1f}"
            )
        verdict = "bars met" if bars else "bars not met"
        report(f"  {name}: {speedup:.2f}x{fidelity} -> {verdict}{quality}")


def mini_fids() -> tuple[dict[str, float], float]:
    """FID of each setting minus the unaccelerated default's, and the default's
    two-seed spread, from bench/mini_accelerations.py's last output."""
    if not MINI_FID.is_file():
        return {}, 0.0
    data = json.loads(MINI_FID.read_text())
    default = data["results"]["unaccelerated default, seed set 1"]["fid"]
    fids = {name: r["fid"] - default for name, r in data["results"].items()}
    return fids, data["spread"]


def setting_label(params: GenerationParams) -> str:
    cache = params.deep_cache_interval
    return (
        f"{SCHEDULER_LABELS[params.scheduler]}, {params.steps} steps, "
        f"DeepCache {f'every {cache} steps' if cache > 1 else 'off'}, "
        f"token merging {params.token_merging or 'off'}"
    )


def compiled_forward(
    pipe: StableDiffusionPipeline,
    inputs: tuple,
    base: torch.Tensor,
    base_s: float,
    report: Report,
) -> None:
    started = time.perf_counter()
    compiled = torch.compile(pipe.unet)
    unet_forward(compiled, inputs)
    compile_s = time.perf_counter() - started
    step_s, out = seconds(lambda: unet_forward(compiled, inputs), 2)
    report(
        f"  torch.compile (inductor): first call {compile_s:.0f} s, then "
        f"{step_s:.2f} s/step ({base_s / step_s:.2f}x), "
        f"rel. error {relative_error(out, base):.2e}"
    )


# 3. Whole images through generator.sampling.generate.


def timed_generation(
    pipe: StableDiffusionPipeline, params: GenerationParams, report: Report, label: str
) -> tuple[float, object]:
    result = generate(pipe, params)
    timings = result.timings
    report(
        f"  {label}: {timings.total:.2f} s (text {timings.text_encoding:.2f}, "
        f"denoise {timings.denoising:.2f} over {len(pipe.scheduler.timesteps)} UNet "
        f"calls, decode {timings.decoding:.2f})"
    )
    return timings.total, result


def placement_label(placement: Placement) -> str:
    dtype = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    layout = " + channels_last" if placement.channels_last else ""
    return f"{dtype[placement.dtype]}{layout}"


def placed_copy(
    pipe: StableDiffusionPipeline, placement: Placement
) -> StableDiffusionPipeline:
    """The same weights in another placement, leaving the fp32 pipeline as it is."""
    placed = copy.deepcopy(pipe)
    if placement.dtype != FP32.dtype:
        placed = placed.to(dtype=placement.dtype)
    return prepare_pipeline(placed, placement)


# 4. CPU accelerations on whole images, in the platform's placement.

OFF = {"deep_cache_interval": 1, "token_merging": 0.0}
SOLVERS = [("dpmpp_karras", 5), ("dpmpp_karras", 6), ("dpmpp_karras", 8)]
SOLVERS += [("unipc", 5), ("unipc", 6), ("unipc", 8)]
DEEP_CACHE_INTERVALS = (2, 3)
TOKEN_MERGING_RATIOS = (0.3, 0.5)
# Every acceleration that keeps SSIM >= 0.95 on SD v1.4, at once: what CPU time
# they could save, whatever they cost in quality (bench/mini_accelerations.py).
FASTEST = GenerationParams(
    prompt=PROMPT, seed=0, scheduler="dpmpp_karras", steps=6, deep_cache_interval=3
)


def image_seconds(
    pipe: StableDiffusionPipeline, params: GenerationParams, repeats: int = 1
) -> tuple[float, object]:
    """The fastest of ``repeats`` generations, and its result."""
    results = [generate(pipe, params) for _ in range(repeats)]
    best = min(results, key=lambda result: result.timings.total)
    return best.timings.total, best


def solver_speeds(
    pipe: StableDiffusionPipeline, old_s: float, report: Report
) -> dict[str, tuple[float, float]]:
    """Seconds per image of each solver and step count, against 10 DPM-Solver++
    steps; their quality is FID on the mini model (bench/mini_accelerations.py)."""
    gains = {}
    for scheduler, steps in SOLVERS:
        params = GenerationParams(
            prompt=PROMPT, seed=0, scheduler=scheduler, steps=steps, **OFF
        )
        image_s, _ = image_seconds(pipe, params)
        label = f"{SCHEDULER_LABELS[scheduler]}, {steps} steps"
        report(f"  {label}: {image_s:.2f} s ({old_s / image_s:.2f}x)")
        gains[label] = (old_s / image_s, None)
    return gains


def cached_and_merged(
    fp32: StableDiffusionPipeline,
    pipe: StableDiffusionPipeline,
    base: GenerationParams,
    report: Report,
) -> dict[str, tuple[float, float]]:
    """DeepCache and token merging on ``base`` in ``pipe``'s placement: speed against
    ``base`` without them, and SSIM against the fp32 image of ``base`` without them
    (same seed, same steps)."""
    plain = replace(base, **OFF)
    reference = generate(fp32, plain).images[0]
    plain_s, plain_result = image_seconds(pipe, plain)
    ssim = compare(plain_result.images[0], reference).ssim
    report(f"  without either: {plain_s:.2f} s, SSIM {ssim:.4f}")
    gains = {}
    variants = [
        (f"DeepCache every {n} steps", replace(plain, deep_cache_interval=n))
        for n in DEEP_CACHE_INTERVALS
    ] + [
        (f"token merging {r}", replace(plain, token_merging=r))
        for r in TOKEN_MERGING_RATIOS
    ]
    for label, params in variants:
        image_s, result = image_seconds(pipe, params)
        ssim = compare(result.images[0], reference).ssim
        report(
            f"  {label}: {image_s:.2f} s ({plain_s / image_s:.2f}x), SSIM {ssim:.4f}"
        )
        gains[label] = (plain_s / image_s, ssim)
    return gains


def thread_speeds(
    pipe: StableDiffusionPipeline, params: GenerationParams, report: Report
) -> dict[str, tuple[float, float]]:
    """The default setting at each thread count up to this process's cores."""
    cores, gains, times = len(os.sched_getaffinity(0)), {}, {}
    for threads in sorted({1, cores}):
        times[threads], _ = with_threads(threads, lambda: image_seconds(pipe, params))()
        report(f"  {threads} thread(s): {times[threads]:.2f} s")
    for threads, image_s in times.items():
        gains[f"{threads} thread(s)"] = (times[cores] / image_s, None)
    return gains


# 5. The platform default against the prototype.


def end_to_end(
    fp32: StableDiffusionPipeline,
    placed: StableDiffusionPipeline,
    settings: dict[str, GenerationParams],
    args: argparse.Namespace,
    report: Report,
) -> tuple[dict[str, tuple[float, float]], float]:
    """Each setting and the prototype, interleaved: per setting its fastest seconds
    and its SSIM against the fp32 image of the same seed and steps without
    accelerations; and the prototype's seconds."""
    prototype = GenerationParams(prompt=PROMPT, seed=0, **PROTOTYPE, **OFF)
    results: dict[str, list] = {label: [] for label in settings}
    prototype_s = 0.0
    for round_ in range(1 if args.quick else 2):
        for label, setting in settings.items():
            results[label].append(timed_generation(placed, setting, report, label)[1])
        if round_ == 0:
            prototype_s = timed_generation(fp32, prototype, report, "prototype")[0]
    measured = {}
    for label, setting in settings.items():
        best = min(results[label], key=lambda result: result.timings.total)
        plain = replace(setting, **OFF)
        _, reference = timed_generation(fp32, plain, report, f"{label}, fp32, plain")
        ssim = compare(best.images[0], reference.images[0]).ssim
        report(f"    SSIM against fp32 without accelerations: {ssim:.4f}")
        measured[label] = (best.timings.total, ssim)
    return measured, prototype_s


def ratio_lines(
    label: str, seconds: float, ssim: float, prototype_s: float, report: Report
) -> None:
    ratio = seconds / prototype_s
    report(f"{label}: {seconds:.2f} s/image; prototype: {prototype_s:.2f} s/image")
    report(
        f"  ratio {label}/prototype: {ratio:.3f} (target <= {TARGET_RATIO:.2f}: "
        f"{'met' if ratio <= TARGET_RATIO else 'NOT met'})"
    )
    report(
        f"  image SSIM against fp32, same seed and steps, no accelerations: "
        f"{ssim:.4f} (bar >= {MIN_IMAGE_SSIM}: "
        f"{'kept' if ssim >= MIN_IMAGE_SSIM else 'NOT acceptable'})"
    )


def main(
    argv: list[str] | None = None,
    build: Callable[[], StableDiffusionPipeline] | None = None,
) -> None:
    """Run the benchmark; ``build`` replaces SD v1.4 (a smoke test passes tiny)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats, variants and solvers"
    )
    parser.add_argument("--compile", action="store_true", help="also torch.compile")
    parser.add_argument(
        "--bf16-unet", action="store_true", help="also one whole bf16 UNet forward"
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    report = Report(args.out)
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)

    report(f"bench/sd_cpu.py {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    report(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s)")
    report(f"load average at start: {os.getloadavg()[0]:.2f} (shared machine)")
    peak = peak_gflops(report)

    placement = pick_placement("cpu")
    report(f"platform CPU default placement: {placement}")
    build = build or (lambda: build_sd14_pipeline(load_clip_tokenizer()))
    pipe = prepare_pipeline(build(), FP32)
    flops = unet_flops(pipe.unet, unet_inputs(pipe, 256))
    report(f"UNet FLOPs per guided step at 256² (batch 2): {flops / 1e9:.0f} GFLOP")

    report("")
    report("UNet, one guided step at 256²:")
    steps, gains = unet_variants(pipe, args, report)
    achieved = flops / steps["fp32"] / 1e9
    report(
        f"  fp32: {achieved:.1f} GFLOP/s achieved = {achieved / peak:.0%} of the "
        f"{peak:.0f} GFLOP/s peak estimate"
    )
    default_label = placement_label(placement)
    if default_label != "fp32" and default_label in steps:
        achieved = flops / steps[default_label] / 1e9
        report(
            f"  {default_label} (platform default): {achieved:.1f} GFLOP/s achieved ="
            f" {achieved / peak:.0%} of the fp32 peak estimate"
        )

    report("")
    default = GenerationParams(prompt=PROMPT, seed=0)
    report("Whole images at 256², guidance 7.5, in the platform's CPU placement")
    report(f"({placement_label(placement)}); the default: {setting_label(default)}.")
    default_pipe = pipe if placement == FP32 else placed_copy(pipe, placement)
    generate(default_pipe, default)  # warm-up: first-call allocations
    old = GenerationParams(prompt=PROMPT, seed=0, scheduler="dpmpp", steps=10, **OFF)
    old_s, _ = image_seconds(default_pipe, old)
    report(f"  before issue 16 ({setting_label(old)}): {old_s:.2f} s")
    accelerations: dict[str, tuple[float, float | None]] = {}
    if not args.quick:
        report("Fewer steps with a stronger solver (against the 10-step setting):")
        accelerations |= solver_speeds(default_pipe, old_s, report)
    report("DeepCache and token merging on the default sampler and steps (SSIM against")
    report("the fp32 image of the same seed and steps without them):")
    accelerations |= cached_and_merged(pipe, default_pipe, default, report)
    if not args.quick:
        report("Threads, the default setting:")
        accelerations |= thread_speeds(default_pipe, default, report)

    report("")
    report("The platform default, and the fastest setting tried within the SSIM bar,")
    report(f"{setting_label(FASTEST)},")
    report(
        "against the prototype (fp32, 512², 5 steps, PNDM, guidance 7.5), interleaved:"
    )
    settings = {"platform default": default, "fastest within the SSIM bar": FASTEST}
    if default == FASTEST:
        del settings["fastest within the SSIM bar"]
    measured, prototype_s = end_to_end(pipe, default_pipe, settings, args, report)
    report("")
    for label, (seconds_, ssim) in measured.items():
        ratio_lines(label, seconds_, ssim, prototype_s, report)
    report("")
    report("UNet optimisations against fp32 with the run's threads (error: relative")
    report("error of one UNet step's output at 256²;")
    report(f"kept when >= {KEEP_SPEEDUP:.2f}x and error < {MAX_RELATIVE_ERROR:.0e}):")
    decisions(gains, report)
    report(f"CPU accelerations on whole images (bars: >= {KEEP_SPEEDUP:.2f}x and,")
    report(f"where measured, SSIM >= {MIN_IMAGE_SSIM}; image quality: FID on the mini")
    report("model, bench/mini_accelerations.py, read from its last output):")
    acceleration_decisions(accelerations, report)
    report(f"load average at the end: {os.getloadavg()[0]:.2f}")
    report(f"bench wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
