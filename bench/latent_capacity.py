"""How many latent numbers per patch does a 128² chest X-ray need? The best
patch-local linear code as a yardstick for a VAE's shape, before any training.

    .venv/bin/python bench/latent_capacity.py --data ../shared/data/public-cxr \
        --codes 8:8 8:16 4:4

A VAE with downsampling f and c latent channels keeps c numbers per f×f patch. For
each ``f:c`` this fits PCA on f×f patches of training images (the code of c numbers
per patch with the least squared error among linear, patch-local ones), sends 200
training images through it, and scores the result as ``bench/mini_quality.py``
scores a VAE's round trip (its "ceiling"): Inception FID at 128² against the
held-out patients' real images, and PSNR. A trained VAE is non-linear and sees past
its patch, so it should do at least as well once trained enough; a shape whose
linear code already misses the FID bar needs more numbers per patch, not more
training. The floor and the untrained figure for the gap are measured in the same
run (``--gap-from`` takes them from a ``vae_report.json`` instead).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import mini_quality  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from generator.metrics import (  # noqa: E402
    frechet_distance,
    inception_features,
    inception_helper,
)
from generator.mini import read_records, split_by_patient  # noqa: E402

SIZE = 128


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    split = split_by_patient(read_records(args.data))
    scored = gray_stack(random.Random(1).sample(split.train, args.images))
    fitted = gray_stack(random.Random(2).sample(split.train, args.fit_images))
    helper = inception_helper()
    heldout = [mini_quality.load_gray(r.path, SIZE) for r in split.heldout]
    real = inception_features(helper, heldout)

    def fid(images: np.ndarray) -> float:
        pictures = [Image.fromarray(i.round().astype(np.uint8)) for i in images]
        return frechet_distance(real, inception_features(helper, pictures))

    floor, untrained = gap_ends(args, split, fid, scored)
    print(f"floor (training images) FID {floor:.1f}; untrained v2 FID {untrained:.1f}")
    rows = [
        score_code(fitted, scored, patch, numbers, fid, (floor, untrained))
        for patch, numbers in args.codes
    ]
    if args.out:
        figures = {"floor": floor, "untrained": untrained, "codes": rows}
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


def score_code(
    fitted: np.ndarray,
    scored: np.ndarray,
    patch: int,
    numbers: int,
    fid: Callable[[np.ndarray], float],
    ends: tuple[float, float],
) -> dict:
    """One code's round trip: its PSNR, FID and gap, printed as it is measured."""
    started = time.perf_counter()
    coded = patch_pca_roundtrip(fitted, scored, patch, numbers)
    score, (floor, untrained) = fid(coded), ends
    row = {
        "downsampling": patch,
        "numbers_per_patch": numbers,
        "psnr_db": round(mini_quality.mean_psnr(coded.round(), scored), 2),
        "fid": round(score, 1),
        "gap": round((score - floor) / (untrained - floor), 3),
    }
    print(
        f"{patch}x{patch} patches, {numbers} numbers each "
        f"({numbers / patch**2:.3f} per pixel): PSNR {row['psnr_db']} dB, "
        f"FID {row['fid']}, gap {row['gap']} "
        f"({time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    return row


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared/data/public-cxr"
    )
    parser.add_argument(
        "--codes",
        nargs="+",
        type=code,
        default=[(8, 4), (8, 8), (8, 16), (4, 4)],
        help="f:c pairs: patch side (the VAE's downsampling) and numbers per patch",
    )
    parser.add_argument("--images", type=int, default=200, help="images scored")
    parser.add_argument(
        "--fit-images", type=int, default=400, help="images PCA fits on"
    )
    parser.add_argument(
        "--gap-from", type=Path, help="a vae_report.json to take the gap's ends from"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    return parser.parse_args()


def code(text: str) -> tuple[int, int]:
    """'8:16' -> (8, 16), refusing a patch that does not tile 128² or a code
    longer than the patch."""
    try:
        patch, numbers = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a code is PATCH:NUMBERS, got {text!r}"
        ) from None
    if patch < 1 or SIZE % patch or not 1 <= numbers <= patch * patch:
        raise argparse.ArgumentTypeError(
            f"PATCH must divide {SIZE} and NUMBERS be 1 to PATCH², got {text!r}"
        )
    return patch, numbers


def gray_stack(records: list) -> np.ndarray:
    """The records' images at 128², 8-bit grayscale, as one float array."""
    return np.stack(
        [np.asarray(mini_quality.load_gray(r.path, SIZE), np.float32) for r in records]
    )


def gap_ends(args, split, fid, scored: np.ndarray) -> tuple[float, float]:
    """The gap's floor (real training images) and untrained end (the untrained v2
    architecture's images for held-out captions, as mini_quality makes them)."""
    if args.gap_from:
        table = json.loads(args.gap_from.read_text())["fid"]
        return table["train_images_floor"], table["untrained"]
    settings = mini_quality.Settings(20, 3.0, "dpmpp")
    requests = mini_quality.caption_requests(split.heldout, args.images, 4)
    untrained = mini_quality.generate_all(
        mini_quality.untrained_like(SIZE), requests, settings, SIZE
    )
    untrained = np.stack([np.asarray(i.convert("L"), np.float32) for i in untrained])
    return fid(scored), fid(untrained)


def to_patches(images: np.ndarray, patch: int) -> np.ndarray:
    """(N, H, W) images as rows of flattened, non-overlapping patch×patch tiles."""
    count, side = len(images), SIZE // patch
    tiles = images.reshape(count, side, patch, side, patch).transpose(0, 1, 3, 2, 4)
    return tiles.reshape(-1, patch * patch)


def from_patches(rows: np.ndarray, count: int, patch: int) -> np.ndarray:
    side = SIZE // patch
    tiles = rows.reshape(count, side, side, patch, patch).transpose(0, 1, 3, 2, 4)
    return tiles.reshape(count, SIZE, SIZE)


def patch_pca_roundtrip(
    fitted: np.ndarray, scored: np.ndarray, patch: int, numbers: int
) -> np.ndarray:
    """``scored`` through the ``numbers`` leading principal components of the
    patches of ``fitted``: encoded, decoded, clipped to 8 bits."""
    train = to_patches(fitted, patch)
    mean = train.mean(axis=0)
    basis = np.linalg.svd(train - mean, full_matrices=False)[2][:numbers]
    rows = to_patches(scored, patch) - mean
    decoded = rows @ basis.T @ basis + mean
    return from_patches(decoded, len(scored), patch).clip(0, 255)


if __name__ == "__main__":
    main()
