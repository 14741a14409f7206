"""What batching and the batch-invariant mode cost on this CPU, and whether batched
images keep their bits.

    .venv/bin/python bench/batching.py [--requests 4] [--steps 10] [--size 256]
                                       [--model tiny|sd14]

The same requests (their own prompts and seeds) run four ways, on CPU in fp32:
one at a time and as one batch, each with and without
generator.batching.batch_invariant. Printed: seconds per image each way, and
whether each batched image equals its request alone, bit for bit, in each mode.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generator.batching import batch_invariant, generate_batch  # noqa: E402
from generator.loading import Placement, prepare_pipeline  # noqa: E402
from generator.sampling import GenerationParams, generate  # noqa: E402

FP32 = Placement("cpu", torch.float32, channels_last=False)
PROMPTS = [
    "Cardiomegaly.",
    "No acute disease.",
    "Small left pleural effusion.",
    "Right upper lobe nodule.",
]


def main() -> None:
    args = parse_args()
    pipe = build(args.model)
    batch = [
        GenerationParams(
            prompt=PROMPTS[i % len(PROMPTS)],
            seed=100 + i,
            steps=args.steps,
            width=args.size,
            height=args.size,
        )
        for i in range(args.requests)
    ]
    generate(pipe, batch[0])  # warm-up
    print(
        f"batching: {args.model}, {args.size}², {args.steps} steps, fp32, "
        f"{len(batch)} requests, {torch.get_num_threads()} threads"
    )
    print(f"load average: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    for invariant in (False, True):
        mode = "batch-invariant" if invariant else "plain"
        with batch_invariant(pipe.unet) if invariant else nullcontext():
            started = time.perf_counter()
            alone = [generate(pipe, params) for params in batch]
            alone_s = time.perf_counter() - started
            started = time.perf_counter()
            together = generate_batch(pipe, batch)
            batch_s = time.perf_counter() - started
        same = [
            np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
            for a, b in zip(alone, together, strict=True)
        ]
        print(
            f"{mode:>15}: alone {alone_s / len(batch):.2f} s/image, "
            f"batched {batch_s / len(batch):.2f} s/image "
            f"({alone_s / batch_s:.2f}x); batched == alone, bit for bit: "
            f"{sum(same)}/{len(same)}"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--model", choices=["tiny", "sd14"], default="tiny")
    return parser.parse_args()


def build(model: str):
    if model == "sd14":
        from generator.sd14_config import build_sd14_pipeline
        from generator.tiny import load_clip_tokenizer

        pipe = build_sd14_pipeline(tokenizer=load_clip_tokenizer())
    else:
        from generator.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline(0)
    return prepare_pipeline(pipe.to(torch.float32), FP32)


if __name__ == "__main__":
    main()
