"""Image quality of each CPU acceleration on the shipped mini model, as FID.

    nice -n 19 .venv/bin/python bench/mini_accelerations.py \
        --data ../shared/data/public-cxr --model models/mini-cxr [--images 200]

bench/sd_cpu.py measures what each acceleration saves on the SD v1.4 architecture,
whose random weights say nothing about image quality. Here the trained mini model
generates ``--images`` images from held-out captions at each setting, and each set
is scored by FID against the held-out real images (generator.metrics.inception_fid,
at the model's native 64²). The unaccelerated default (10 DPM-Solver++ steps) runs
with two seed sets: their FID difference is the spread that chance alone gives, and
a setting is no worse when its FID (first seed set) exceeds the default's by at
most that spread. Guidance is the model's recommended 3.0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.mini_quality import Request, caption_requests, load_gray  # noqa: E402
from generator.loading import load_pipeline, pick_placement  # noqa: E402
from generator.metrics import (  # noqa: E402
    frechet_distance,
    inception_features,
    inception_helper,
)
from generator.mini import RESOLUTION, read_records, split_by_patient  # noqa: E402
from generator.sampling import GenerationParams, generate  # noqa: E402

OFF = {"deep_cache_interval": 1, "token_merging": 0.0}
UNACCELERATED = {"scheduler": "dpmpp", "steps": 10, **OFF}
SECOND_SEEDS = 500_000  # added to every seed of the second set of the default
SETTINGS = {
    "DPM-Solver++ 2M Karras, 5 steps": {"scheduler": "dpmpp_karras", "steps": 5},
    "DPM-Solver++ 2M Karras, 6 steps": {"scheduler": "dpmpp_karras", "steps": 6},
    "DPM-Solver++ 2M Karras, 8 steps": {"scheduler": "dpmpp_karras", "steps": 8},
    "UniPC, 5 steps": {"scheduler": "unipc", "steps": 5},
    "UniPC, 6 steps": {"scheduler": "unipc", "steps": 6},
    "UniPC, 8 steps": {"scheduler": "unipc", "steps": 8},
    "DeepCache every 2 steps": {"deep_cache_interval": 2},
    "DeepCache every 3 steps": {"deep_cache_interval": 3},
    "token merging 0.5": {"token_merging": 0.5},
    "DPM-Solver++ 2M Karras, 6 steps, DeepCache every 2": {
        "scheduler": "dpmpp_karras",
        "steps": 6,
        "deep_cache_interval": 2,
    },
    "DPM-Solver++ 2M Karras, 8 steps, DeepCache every 3": {
        "scheduler": "dpmpp_karras",
        "steps": 8,
        "deep_cache_interval": 3,
    },
    "UniPC, 6 steps, DeepCache every 2": {
        "scheduler": "unipc",
        "steps": 6,
        "deep_cache_interval": 2,
    },
    "platform default": None,  # GenerationParams' own defaults
}


@dataclass(frozen=True)
class Scored:
    fid: float
    seconds: float


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared/data/public-cxr"
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models/mini-cxr")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=4, help="images per caption")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--only", nargs="*", help="setting names to score (default: all)"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench/out/mini_accelerations.json"
    )
    return parser.parse_args()


def params_for(request: Request, offset: int, setting: dict | None, guidance: float):
    base = GenerationParams(
        prompt=request.record.text,
        seed=request.seed + offset,
        num_images=request.count,
        width=RESOLUTION,
        height=RESOLUTION,
        guidance_scale=guidance,
    )
    if setting is None:
        return base
    return replace(base, **{**UNACCELERATED, **setting})


def images_of(pipe, requests, offset, setting, guidance) -> tuple[list, float]:
    """The images one setting makes from ``requests``, and its seconds."""
    started, images = time.perf_counter(), []
    for request in requests:
        images += generate(pipe, params_for(request, offset, setting, guidance)).images
    return images, time.perf_counter() - started


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    split = split_by_patient(read_records(args.data))
    requests = caption_requests(split.heldout, args.images, args.seeds)
    pipe = load_pipeline(str(args.model), placement=pick_placement("cpu"))
    print(
        f"{len(split.heldout)} held-out real images; {args.images} generated per "
        f"setting; placement {pick_placement('cpu')}",
        flush=True,
    )

    # 1. Every setting's images first, so that all are scored alike afterwards.
    runs = [
        ("unaccelerated default, seed set 1", 0, UNACCELERATED),
        ("unaccelerated default, seed set 2", SECOND_SEEDS, UNACCELERATED),
        *((name, 0, setting) for name, setting in SETTINGS.items()),
    ]
    made = {}
    for name, offset, setting in runs:
        if args.only and name not in args.only and "unaccelerated" not in name:
            continue
        made[name] = images_of(pipe, requests, offset, setting, args.guidance)
        print(f"{name}: {made[name][1]:.0f} s", flush=True)

    # 2. FID of each set against the held-out real images, with one Inception.
    helper = inception_helper()
    real = inception_features(helper, [load_gray(r.path) for r in split.heldout])
    results: dict[str, dict] = {}
    for name, (images, seconds) in made.items():
        fid = frechet_distance(real, inception_features(helper, images))
        results[name] = {"fid": round(fid, 2), "seconds": round(seconds, 1)}
        print(f"{name}: FID {fid:.2f}", flush=True)
    first_images = made["unaccelerated default, seed set 1"][0]
    again = frechet_distance(real, inception_features(helper, first_images))
    print(f"control: seed set 1 scored again at the end: FID {again:.2f}")

    first = results["unaccelerated default, seed set 1"]["fid"]
    spread = abs(first - results["unaccelerated default, seed set 2"]["fid"])
    print(f"spread of the default over two seed sets: {spread:.2f}")
    for name, result in results.items():
        if "unaccelerated" in name:
            continue
        worse = result["fid"] - first
        result["no_worse"] = worse <= spread
        verdict = "no worse" if worse <= spread else "WORSE"
        print(
            f"  {name}: FID {result['fid']:.2f} ({worse:+.2f} against the default; "
            f"{verdict} than its spread {spread:.2f})"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "spread": round(spread, 2),
        "control_fid": round(again, 2),
        "images": args.images,
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
