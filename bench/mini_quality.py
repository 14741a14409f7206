"""Quality of the mini model, in one run: FID against held-out patients at the
model's native size, the v1 model beside it, seconds per image, a conditioning check,
a memorization check, and a grid of generated beside real images. With
``--vae-only``, the first stage alone: the VAE's ceiling and held-out PSNR.

    nice -n 19 .venv/bin/python bench/mini_quality.py \
        --data ../shared/data/public-cxr --model models/mini-cxr-v2 \
        --v1 models/mini-cxr

FID (Inception FID, fid-helper; ``generator.metrics``) compares 200 images with the
held-out real images, every set at the model's native size (the real sets bicubic,
v1's 64² images upsampled bicubic): the model, v1, the untrained model of the same
shape (``build_mini_pipeline`` with the training seed: where training started), real
training images (the floor), and those training images through the model's VAE alone
(the ceiling any UNet on this VAE can reach). The FID gap of a model is
(FID − floor) / (untrained − floor): 0 is as close as real training images, 1 no
better than untrained. Generated images use held-out captions, ``--seeds`` seeds each.

The conditioning check trains a small CNN on real training images for view (AP vs
PA) and for finding vs no finding, keeps the first that reaches ≥ 80% on held-out
real images, and reports how often generated images show the attribute their prompt
asked for: raw and balanced accuracy (50% for a model that ignores the prompt).

The memorization check (``generator.memorization``) finds, for the model's 200
generated images, the nearest training image by centred Inception features and by
SSIM, and counts those above a threshold set from the held-out real images' own
nearest-training similarities; the closest pairs are saved as a picture.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers.utils import make_image_grid  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from generator import memorization  # noqa: E402
from generator.loading import Placement, load_pipeline, prepare_pipeline  # noqa: E402
from generator.metrics import (  # noqa: E402
    frechet_distance,
    inception_features,
    inception_helper,
)
from generator.mini import (  # noqa: E402
    ARCHITECTURES,
    Record,
    Split,
    build_mini_pipeline,
    read_records,
    split_by_patient,
)
from generator.sampling import GenerationParams, generate  # noqa: E402
from generator.training import TrainingExample, example_tensors  # noqa: E402

FP32_CPU = Placement("cpu", torch.float32, False)
MIN_ACCURACY = 0.8
GRID_TILE = 128
GRID_COLUMNS = 4
CLOSEST_PAIRS = 8
CAPTION_KINDS = {
    "no finding": ("{view} chest radiograph of a 60-year-old male: no finding"),
    "pneumonia": "{view} chest radiograph of a 60-year-old male: pneumonia",
    "effusion": "{view} chest radiograph of a 60-year-old male: effusion",
    "COVID-19": "{view} chest radiograph of a male COVID-19-positive patient",
}


@dataclass(frozen=True)
class Settings:
    steps: int
    guidance: float
    scheduler: str


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared/data/public-cxr"
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models/mini-cxr-v2")
    parser.add_argument("--v1", type=Path, default=ROOT / "models/mini-cxr")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/out/mini")
    parser.add_argument("--grid", type=Path, default=ROOT / "docs/mini_grid.png")
    parser.add_argument(
        "--pairs", type=Path, default=ROOT / "docs/mini_closest_pairs.png"
    )
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=4, help="images per caption")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--scheduler", default="dpmpp")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--vae-only",
        action="store_true",
        help="--model is a VAE stage (generator.mini --vae-only): only its "
        "ceiling, floor, untrained FID and held-out PSNR",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.vae_only:
        vae_stage_report(args)
        return
    settings = Settings(args.steps, args.guidance, args.scheduler)
    report: dict = {"settings": settings.__dict__, "images": args.images}

    # 1. The model, v1 and the untrained model of the model's shape.
    trained = load_pipeline(str(args.model), placement=FP32_CPU)
    size = native_size(trained)
    pipes = {"model": trained, "untrained": untrained_like(size)}
    if (args.v1 / "model_index.json").is_file():
        pipes["v1"] = load_pipeline(str(args.v1), placement=FP32_CPU)
    report["native_size"] = size

    # 2. The same patient split as training; real images at the native size.
    split, heldout, train_sample = real_sets(args, size)
    report["heldout_images"] = len(heldout)
    print(f"native size {size}; held-out real images: {len(heldout)}", flush=True)

    # 3. Seconds per image at each model's own native size and default settings.
    report["seconds_per_image"] = {
        name: time_one_image(pipe, settings)
        for name, pipe in pipes.items()
        if name != "untrained"
    }
    print(f"seconds per image: {report['seconds_per_image']}", flush=True)

    # 4. Every model generates from the same held-out captions and seeds.
    requests = caption_requests(split.heldout, args.images, args.seeds)
    generated = {
        name: generate_all(pipe, requests, settings, size)
        for name, pipe in pipes.items()
    }

    # 5. FID against the held-out patients; the floor, the ceiling, the gap.
    report["fid"] = fid_table(heldout, generated, trained, train_sample, size)
    report["vae_heldout_psnr_db"] = vae_psnr(trained, split.heldout, size)
    print(f"FID: {json.dumps(report['fid'], indent=2)}", flush=True)

    # 6. Does the picture carry what the prompt asked for?
    report["conditioning"] = conditioning_check(split, requests, generated, size)
    print(f"conditioning: {json.dumps(report['conditioning'], indent=2)}", flush=True)

    # 7. Does the model copy training patients?
    report["memorization"] = memorization_check(
        generated["model"], split, size, args.pairs
    )
    print(f"memorization: {json.dumps(report['memorization'], indent=2)}", flush=True)

    # 8. The grid: generated beside real, one row per caption kind and view.
    save_grid(trained, split, settings, size, args.grid)
    report["grid"] = str(args.grid)
    save_samples(generated, args.out)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def vae_stage_report(args: argparse.Namespace) -> None:
    """A trained VAE before any UNet: how close its round trip can bring a model
    (the ceiling's FID and gap against the floor and the untrained model of the
    same shape) and its held-out PSNR. The UNet stage is worth starting only when
    the ceiling's gap is well under the bar."""
    settings = Settings(args.steps, args.guidance, args.scheduler)
    stage = load_pipeline(str(args.model), placement=FP32_CPU)
    size = native_size(stage)
    split, heldout, train_sample = real_sets(args, size)
    requests = caption_requests(split.heldout, args.images, args.seeds)
    untrained = generate_all(untrained_like(size), requests, settings, size)
    table = fid_table(heldout, {"untrained": untrained}, stage, train_sample, size)
    floor, ceiling = table["train_images_floor"], table["vae_roundtrip_ceiling"]
    table["vae_roundtrip_gap"] = (ceiling - floor) / (table["untrained"] - floor)
    report = {
        "native_size": size,
        "latent_channels": stage.vae.config.latent_channels,
        "heldout_images": len(heldout),
        "fid": table,
        "vae_heldout_psnr_db": vae_psnr(stage, split.heldout, size),
    }
    (args.out / "vae_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def real_sets(
    args: argparse.Namespace, size: int
) -> tuple[Split, list[Image.Image], list[Record]]:
    """Training's patient split, the held-out images at ``size``, and the seeded
    sample of training records that the floor and the ceiling are scored on."""
    split = split_by_patient(read_records(args.data))
    heldout = [load_gray(r.path, size) for r in split.heldout]
    return split, heldout, random.Random(1).sample(split.train, args.images)


def native_size(pipe: object) -> int:
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def untrained_like(size: int) -> object:
    """The untrained mini architecture of this native size, training's seed."""
    shape = next(a for a in ARCHITECTURES.values() if a.resolution == size)
    return prepare_pipeline(build_mini_pipeline(seed=0, architecture=shape), FP32_CPU)


def load_gray(path: Path, size: int) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("L").resize((size, size), Image.Resampling.BICUBIC)


def at_size(image: Image.Image, size: int) -> Image.Image:
    """A generated image brought to the bench's size (bicubic), if not there."""
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.BICUBIC)


def fid_table(
    heldout: list[Image.Image],
    generated: dict[str, list[Image.Image]],
    trained: object,
    train_sample: list[Record],
    size: int,
) -> dict:
    """FID of every set against the held-out features, computed once; the gaps."""
    helper = inception_helper()
    real = inception_features(helper, heldout)

    def fid(images: list[Image.Image]) -> float:
        return frechet_distance(real, inception_features(helper, images))

    table = {name: fid(images) for name, images in generated.items()}
    table["train_images_floor"] = fid([load_gray(r.path, size) for r in train_sample])
    # The same training images through the VAE alone: the best the UNet can do.
    table["vae_roundtrip_ceiling"] = fid(vae_roundtrip(trained, train_sample, size))
    floor, untrained = table["train_images_floor"], table["untrained"]
    for name in ("model", "v1"):
        if name in table:
            table[f"{name}_gap"] = (table[name] - floor) / (untrained - floor)
    return table


@torch.no_grad()
def vae_roundtrip(pipe: object, records: list[Record], size: int) -> list[Image.Image]:
    """Images encoded to latents (the mean) and decoded again, as grayscale."""
    x = example_tensors([TrainingExample(r.path, "") for r in records], size)
    images = []
    for start in range(0, len(x), 32):
        latents = pipe.vae.encode(x[start : start + 32]).latent_dist.mean
        decoded = pipe.vae.decode(latents).sample.clamp(-1, 1)
        images += [
            Image.fromarray(((t[0] + 1) * 127.5).round().byte().numpy())
            for t in decoded
        ]
    return images


def vae_psnr(pipe: object, records: list[Record], size: int) -> float:
    """Mean PSNR (dB, 8-bit grayscale) of the VAE round trip of ``records``."""
    decoded = vae_roundtrip(pipe, records, size)
    real = [load_gray(record.path, size) for record in records]
    return mean_psnr(
        np.stack([np.asarray(image, np.float64) for image in decoded]),
        np.stack([np.asarray(image, np.float64) for image in real]),
    )


def mean_psnr(images: np.ndarray, reference: np.ndarray) -> float:
    """Mean PSNR (dB) over (N, H, W) 8-bit grayscale ``images`` against
    ``reference``, image by image."""
    errors = ((images - reference) ** 2).mean(axis=(1, 2))
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(errors, 1e-12))))


@dataclass(frozen=True)
class Request:
    record: Record
    seed: int
    count: int


def caption_requests(records: list[Record], images: int, seeds: int) -> list[Request]:
    """``images`` images: ``seeds`` per held-out record, records in a seeded order."""
    chosen = random.Random(2).sample(records, min(len(records), -(-images // seeds)))
    requests, left = [], images
    for index, record in enumerate(chosen):
        count = min(seeds, left)
        requests.append(Request(record, seed=1000 + index * seeds, count=count))
        left -= count
    if left:
        raise ValueError(f"{len(records)} held-out records give fewer than {images}")
    return requests


def params_for(
    prompt: str, seed: int, count: int, settings: Settings, size: int
) -> GenerationParams:
    return GenerationParams(
        prompt=prompt,
        seed=seed,
        num_images=count,
        steps=settings.steps,
        guidance_scale=settings.guidance,
        scheduler=settings.scheduler,
        width=size,
        height=size,
    )


def generate_all(
    pipe: object, requests: list[Request], settings: Settings, size: int
) -> list[Image.Image]:
    """Every request at the model's native size, brought to ``size``."""
    started, native, images = time.perf_counter(), native_size(pipe), []
    for request in requests:
        params = params_for(
            request.record.text, request.seed, request.count, settings, native
        )
        images += [at_size(image, size) for image in generate(pipe, params).images]
    print(
        f"{len(images)} images at {native}² in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return images


def time_one_image(pipe: object, settings: Settings, repeats: int = 5) -> dict:
    """Wall and process-CPU seconds of one single-image generation (median)."""
    params = params_for(
        "PA chest radiograph of a 60-year-old male: no finding",
        0,
        1,
        settings,
        native_size(pipe),
    )
    generate(pipe, params)  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        generate(pipe, params)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {
        "size": native_size(pipe),
        "wall_s_median": round(sorted(walls)[repeats // 2], 3),
        "cpu_s_median": round(sorted(cpus)[repeats // 2], 3),
        "threads": torch.get_num_threads(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


ATTRIBUTES = {
    "view AP vs PA": lambda r: r.view == "AP",
    "finding vs no finding": lambda r: r.labels != ("No Finding",),
}


def conditioning_check(
    split: Split, requests: list[Request], generated: dict, size: int
) -> dict:
    """Train a classifier per attribute; score generated images with the first ≥ 80%."""
    train_x = pixels([load_gray(r.path, size) for r in split.train], size)
    held_x = pixels([load_gray(r.path, size) for r in split.heldout], size)
    results: dict = {}
    for name, attribute in ATTRIBUTES.items():
        train_y = torch.tensor([attribute(r) for r in split.train], dtype=torch.float32)
        held_y = torch.tensor([attribute(r) for r in split.heldout])
        model = fit_classifier(train_x, train_y)
        accuracy = float(((predict(model, held_x)) == held_y).float().mean())
        results[name] = {"heldout_real_accuracy": round(accuracy, 3)}
        print(f"classifier {name}: {accuracy:.3f} on held-out real", flush=True)
        if accuracy < MIN_ACCURACY:
            continue
        asked = torch.tensor(
            [attribute(q.record) for q in requests for _ in range(q.count)]
        )
        for model_name, images in generated.items():
            got = predict(model, pixels(images, size))
            results[name][model_name] = scores(got, asked)
        results["used"] = name
        return results
    results["used"] = None
    return results


def scores(got: torch.Tensor, asked: torch.Tensor) -> dict:
    recalls = [float((got[asked == c] == c).float().mean()) for c in (True, False)]
    return {
        "accuracy": round(float((got == asked).float().mean()), 3),
        "balanced_accuracy": round(sum(recalls) / 2, 3),
        "predicted_positive": round(float(got.float().mean()), 3),
    }


def pixels(images: list[Image.Image], size: int) -> torch.Tensor:
    data = [torch.frombuffer(bytearray(i.tobytes()), dtype=torch.uint8) for i in images]
    stacked = torch.stack(data).float().view(len(images), 1, size, size)
    return stacked / 127.5 - 1.0


def fit_classifier(
    x: torch.Tensor, y: torch.Tensor, epochs: int = 15
) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(64, 1),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 32):
            batch = order[start : start + 32]
            loss = F.binary_cross_entropy_with_logits(model(x[batch])[:, 0], y[batch])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return model.eval()


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)[:, 0] > 0


def memorization_check(
    generated: list[Image.Image], split: Split, size: int, pairs_path: Path
) -> dict:
    """Nearest training image of each generated image by centred Inception features
    and by SSIM; thresholds from the held-out real images; the closest pairs drawn."""
    training = [load_gray(r.path, size) for r in split.train]
    heldout = [load_gray(r.path, size) for r in split.heldout]
    helper = inception_helper()
    shape = (size, size)
    by_features = memorization.check(
        memorization.features(helper, generated, shape),
        memorization.features(helper, training, shape),
        memorization.features(helper, heldout, shape),
    )
    ssim_threshold = memorization.threshold_from_heldout(
        memorization.nearest_by_ssim(heldout, training).cosine
    )
    by_ssim = memorization.Check(
        memorization.nearest_by_ssim(generated, training), ssim_threshold
    )
    closest = np.argsort(-by_features.nearest.cosine)[:CLOSEST_PAIRS].tolist()
    save_pairs(generated, training, by_features, by_ssim, closest, pairs_path)
    return {
        "generated": len(generated),
        "training_images": len(training),
        "inception": {
            "threshold": by_features.threshold.to_json(),
            "near_copies": len(by_features.flagged),
            "generated": memorization.summary(by_features.nearest.cosine),
        },
        "ssim": {
            "threshold": {
                **by_ssim.threshold.to_json(),
                "rule": by_ssim.threshold.rule.replace("cosine", "SSIM"),
            },
            "near_copies": len(by_ssim.flagged),
            "generated": memorization.summary(by_ssim.nearest.cosine),
        },
        "closest_pairs": [
            {
                "generated_index": i,
                "training_image": split.train[
                    int(by_features.nearest.index[i])
                ].path.name,
                "cosine": float(by_features.nearest.cosine[i]),
                "ssim_of_pair": memorization.pair_ssim(
                    generated[i],
                    training[int(by_features.nearest.index[i])],
                    shape,
                ),
            }
            for i in closest
        ],
        "pairs_image": str(pairs_path),
    }


def save_pairs(
    generated: list[Image.Image],
    training: list[Image.Image],
    by_features: memorization.Check,
    by_ssim: memorization.Check,
    closest: list[int],
    path: Path,
) -> None:
    """Columns: the closest generated images by features, each above its nearest
    training image; the last row, each one's nearest training image by SSIM."""
    tiles = [at_size(generated[i], GRID_TILE) for i in closest]
    tiles += [
        at_size(training[int(by_features.nearest.index[i])], GRID_TILE) for i in closest
    ]
    tiles += [
        at_size(training[int(by_ssim.nearest.index[i])], GRID_TILE) for i in closest
    ]
    grid = make_image_grid([t.convert("RGB") for t in tiles], 3, len(closest))
    draw = ImageDraw.Draw(grid)
    for column, i in enumerate(closest):
        draw.text(
            (column * GRID_TILE + 3, 3),
            f"cos {by_features.nearest.cosine[i]:.3f}",
            fill=(255, 64, 64),
        )
        draw.text(
            (column * GRID_TILE + 3, 2 * GRID_TILE + 3),
            f"ssim {by_ssim.nearest.cosine[i]:.3f}",
            fill=(255, 64, 64),
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.convert("L").save(path, optimize=True)


def real_examples(split: Split, kind: str, view: str) -> list[Record]:
    """Real images of one caption kind and view, held-out patients first."""
    wanted = {
        "no finding": lambda r: r.labels == ("No Finding",),
        "pneumonia": lambda r: "Pneumonia" in r.labels,
        "effusion": lambda r: "Effusion" in r.labels,
        "COVID-19": lambda r: "COVID-19" in r.labels,
    }[kind]
    matches = [r for r in split.heldout + split.train if wanted(r) and r.view == view]
    return matches[:GRID_COLUMNS]


def save_grid(
    pipe: object, split: Split, settings: Settings, size: int, path: Path
) -> None:
    """Rows: caption kind × view. Left: generated (seeds 0-3); right: real."""
    label_width = 230
    rows = [(kind, view) for kind in CAPTION_KINDS for view in ("AP", "PA")]
    width = label_width + GRID_TILE * GRID_COLUMNS * 2 + 16
    grid = Image.new("L", (width, 24 + GRID_TILE * len(rows)), color=255)
    draw = ImageDraw.Draw(grid)
    title = f"generated (mini-cxr, {size}x{size}, shown at {GRID_TILE}x{GRID_TILE})"
    draw.text((label_width, 6), title, fill=0)
    draw.text(
        (label_width + GRID_TILE * GRID_COLUMNS + 16, 6), "real (public-cxr)", fill=0
    )
    for row, (kind, view) in enumerate(rows):
        top = 24 + row * GRID_TILE
        draw.text((6, top + GRID_TILE // 2 - 6), f"{view}: {kind}", fill=0)
        prompt = CAPTION_KINDS[kind].format(view=view)
        params = params_for(prompt, 0, GRID_COLUMNS, settings, size)
        generated = make_image_grid(generate(pipe, params).images, 1, GRID_COLUMNS)
        real = [load_gray(r.path, size) for r in real_examples(split, kind, view)]
        grid.paste(
            generated.resize((GRID_TILE * GRID_COLUMNS, GRID_TILE)), (label_width, top)
        )
        for column, image in enumerate(real):
            left = label_width + GRID_TILE * (GRID_COLUMNS + column) + 16
            grid.paste(at_size(image, GRID_TILE), (left, top))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, optimize=True)


def save_samples(generated: dict, out: Path) -> None:
    """Each set's images, 20 to a row, at the bench's size."""
    for name, images in generated.items():
        rows = len(images) // 20
        tiles = [image.convert("RGB") for image in images[: rows * 20]]
        make_image_grid(tiles, rows, 20).convert("L").save(out / f"{name}_samples.png")


if __name__ == "__main__":
    main()
