"""What live previews cost: the same jobs with and without the worker's preview
writer, on the tiny model (the fastest UNet, so the largest share for previews).

    .venv/bin/python bench/previews.py [--jobs 10] [--rounds 3] [--steps 10]

Each job is generator.sampling.generate at the platform default (256², 10 steps,
DPM-Solver++, this CPU's placement), once with no latents callback and once with
the runner's PreviewWriter (projection to grey, PNG, written to the shared cache in
Redis every XRAY_PREVIEW_EVERY_STEPS steps), alternating in rounds so a change in
load hits both. Printed: seconds per job each way, their difference as a share of
the job, the time measured inside the preview writer as a share of the job, and the
one-time fit of the projection per model. The bar is 5 %.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = Path(tempfile.mkdtemp(prefix="xray-previews-"))
os.environ.setdefault("DATABASE_URL", f"sqlite:///{WORK / 'bench.sqlite3'}")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/12")
os.environ.update(
    SECRET_KEY="bench",
    XRAY_DEBUG="1",
    HF_HUB_OFFLINE="1",
    DJANGO_SETTINGS_MODULE="xrayweb.settings",
)
BAR = 0.05


def main() -> None:
    args = parse_args()
    import django

    django.setup()
    from django.conf import settings

    from generator import previews
    from generator.loading import load_pipeline, pick_placement
    from generator.sampling import GenerationParams, generate
    from generator.tiny import save_tiny_pipeline
    from xrayweb.generations.runner import PreviewWriter

    placement = pick_placement(settings.XRAY_DEVICE, settings.XRAY_DTYPE)
    pipe = load_pipeline(str(save_tiny_pipeline(WORK / "tiny-sd")), placement=placement)
    started = time.perf_counter()
    projection = previews.projection_for(pipe.vae)
    fit_s = time.perf_counter() - started
    params = GenerationParams(prompt="No acute disease.", steps=args.steps)
    generate(pipe, params)  # warm-up
    member = SimpleNamespace(
        attempt=SimpleNamespace(pk=10**9, number=1),
        request=SimpleNamespace(num_images=1),
        dropped=False,
    )
    default_interval = settings.XRAY_PREVIEW_INTERVAL_S
    plain = []
    runs = {default_interval: ([], [], []), 0.0: ([], [], [])}
    for _ in range(args.rounds):
        for seed in range(args.jobs):
            params = GenerationParams(
                prompt="No acute disease.", seed=seed, steps=args.steps
            )
            started = time.perf_counter()
            generate(pipe, params)
            plain.append(time.perf_counter() - started)
            for interval, (times, inside, made) in runs.items():
                settings.XRAY_PREVIEW_INTERVAL_S = interval
                writer = PreviewWriter(pipe, [member], params.steps)
                started = time.perf_counter()
                generate(pipe, params, on_latents=writer)
                times.append(time.perf_counter() - started)
                inside.append(writer.seconds)
                made.append(writer.made)
    print(header(args, placement, projection, fit_s, plain))
    for interval, (times, inside, made) in runs.items():
        print(report(interval, plain, times, inside, made))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10, help="jobs per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    return parser.parse_args()


def header(args, placement, projection, fit_s, plain) -> str:
    from django.conf import settings

    return "\n".join(
        [
            f"previews: tiny model, 256², {args.steps} steps, {placement.dtype}, "
            f"every {settings.XRAY_PREVIEW_EVERY_STEPS} steps at most",
            "CPU: " + cpu_name() + f", {os.cpu_count()} cores",
            f"load average: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}",
            f"projection fit (once per model and process): {fit_s * 1000:.0f} ms, "
            f"fit RMS error {projection.residual * 255:.1f} grey levels",
            f"job without previews: median {statistics.median(plain) * 1000:.1f} ms "
            f"({len(plain)} jobs)",
        ]
    )


def report(interval: float, plain, times, inside, made) -> str:
    share_inside = sum(inside) / sum(times)
    share_wall = (sum(times) - sum(plain)) / sum(plain)
    verdict = "met" if max(share_inside, share_wall) <= BAR else "NOT met"
    return "\n".join(
        [
            f"with previews at most every {interval:g} s: "
            f"{statistics.mean(made):.1f} previews per job, "
            f"median {statistics.median(times) * 1000:.1f} ms per job",
            f"  inside the preview writer: {share_inside:.2%} of the job "
            f"({statistics.mean(inside) * 1000:.2f} ms per job)",
            f"  wall time (with - without) / without: {share_wall:+.2%}",
            f"  cost bar <= {BAR:.0%}: {verdict}",
        ]
    )


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    main()
