"""Quality of the mini model, in one run: FID against held-out patients, seconds per
image, a grid of generated beside real images, and a conditioning check.

    nice -n 19 .venv/bin/python bench/mini_quality.py \
        --data ../shared/data/public-cxr --model models/mini-cxr

FID (generator.metrics.inception_fid) compares ≥ 200 images with the held-out real
images at the model's native 64² (so every set is scored at the same resolution):
the trained mini model, the untrained model of the same shape (build_mini_pipeline
with the training seed: where training started), real training images (the floor),
and those training images passed through the trained VAE alone (the ceiling that any
UNet on this VAE can reach).
Generated images use held-out captions, `--seeds` seeds each.

The conditioning check trains a small CNN on real training images for view (AP vs PA)
and for finding vs no finding, keeps the first that reaches ≥ 80% on held-out real
images, and reports how often generated images show the attribute their prompt asked
for: raw accuracy and balanced accuracy (mean recall over the two classes, 50% for a
model that ignores the prompt).
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

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from generator.loading import Placement, load_pipeline, prepare_pipeline  # noqa: E402
from generator.metrics import inception_fid  # noqa: E402
from generator.mini import (  # noqa: E402
    RESOLUTION,
    Record,
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
    parser.add_argument("--model", type=Path, default=ROOT / "models/mini-cxr")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/out/mini")
    parser.add_argument("--grid", type=Path, default=ROOT / "docs/mini_grid.png")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=4, help="images per caption")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--scheduler", default="dpmpp")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = Settings(args.steps, args.guidance, args.scheduler)
    report: dict = {"settings": settings.__dict__, "images": args.images}

    # 1. The same patient split as training; real images at the native size.
    split = split_by_patient(read_records(args.data))
    heldout = [load_gray(r.path) for r in split.heldout]
    train_sample = random.Random(1).sample(split.train, args.images)
    report["heldout_images"] = len(heldout)
    print(f"held-out real images: {len(heldout)}", flush=True)

    # 2. Both models generate from the same held-out captions and seeds.
    trained = load_pipeline(str(args.model), placement=FP32_CPU)
    untrained = prepare_pipeline(build_mini_pipeline(seed=0), FP32_CPU)
    requests = caption_requests(split.heldout, args.images, args.seeds)
    report["seconds_per_image"] = time_one_image(trained, settings)
    print(f"seconds per image: {report['seconds_per_image']}", flush=True)
    generated = {}
    for name, pipe in (("mini", trained), ("untrained", untrained)):
        started = time.perf_counter()
        generated[name] = generate_all(pipe, requests, settings)
        print(
            f"{name}: {len(generated[name])} images in "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )

    # 3. FID against the held-out patients; real training images are the floor.
    report["fid"] = {
        "mini": inception_fid(heldout, generated["mini"]),
        "untrained": inception_fid(heldout, generated["untrained"]),
        "train_images_floor": inception_fid(
            heldout, [load_gray(r.path) for r in train_sample]
        ),
        # The same training images through the VAE alone: the best the UNet can do.
        "vae_roundtrip_ceiling": inception_fid(
            heldout, vae_roundtrip(trained, train_sample)
        ),
    }
    report["fid"]["mini_over_untrained"] = (
        report["fid"]["mini"] / report["fid"]["untrained"]
    )
    print(f"FID: {json.dumps(report['fid'], indent=2)}", flush=True)

    # 4. Does the picture carry what the prompt asked for?
    report["conditioning"] = conditioning_check(split, requests, generated)
    print(f"conditioning: {json.dumps(report['conditioning'], indent=2)}", flush=True)

    # 5. The grid: generated beside real, one row per caption kind and view.
    save_grid(trained, split, settings, args.grid)
    report["grid"] = str(args.grid)
    save_samples(generated, args.out)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def load_gray(path: Path, size: int = RESOLUTION) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("L").resize((size, size), Image.Resampling.BICUBIC)


@torch.no_grad()
def vae_roundtrip(pipe: object, records: list[Record]) -> list[Image.Image]:
    """Images encoded to latents (the mean) and decoded again, as grayscale."""
    x = example_tensors([TrainingExample(r.path, "") for r in records], RESOLUTION)
    images = []
    for start in range(0, len(x), 32):
        latents = pipe.vae.encode(x[start : start + 32]).latent_dist.mean
        decoded = pipe.vae.decode(latents).sample.clamp(-1, 1)
        images += [
            Image.fromarray(((t[0] + 1) * 127.5).round().byte().numpy())
            for t in decoded
        ]
    return images


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
    prompt: str, seed: int, count: int, settings: Settings
) -> GenerationParams:
    return GenerationParams(
        prompt=prompt,
        seed=seed,
        num_images=count,
        steps=settings.steps,
        guidance_scale=settings.guidance,
        scheduler=settings.scheduler,
        width=RESOLUTION,
        height=RESOLUTION,
    )


def generate_all(pipe: object, requests: list[Request], settings: Settings) -> list:
    images = []
    for request in requests:
        params = params_for(request.record.text, request.seed, request.count, settings)
        images += generate(pipe, params).images
    return images


def time_one_image(pipe: object, settings: Settings, repeats: int = 5) -> dict:
    """Wall and process-CPU seconds of one single-image generation (median)."""
    params = params_for(
        "PA chest radiograph of a 60-year-old male: no finding", 0, 1, settings
    )
    generate(pipe, params)  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        generate(pipe, params)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {
        "wall_s_median": round(sorted(walls)[repeats // 2], 3),
        "cpu_s_median": round(sorted(cpus)[repeats // 2], 3),
        "threads": torch.get_num_threads(),
    }


ATTRIBUTES = {
    "view AP vs PA": lambda r: r.view == "AP",
    "finding vs no finding": lambda r: r.labels != ("No Finding",),
}


def conditioning_check(split: object, requests: list[Request], generated: dict) -> dict:
    """Train a classifier per attribute; score generated images with the first ≥ 80%."""
    train_x = pixels([load_gray(r.path) for r in split.train])
    held_x = pixels([load_gray(r.path) for r in split.heldout])
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
            got = predict(model, pixels(images))
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


def pixels(images: list[Image.Image]) -> torch.Tensor:
    data = [torch.frombuffer(bytearray(i.tobytes()), dtype=torch.uint8) for i in images]
    stacked = torch.stack(data).float().view(len(images), 1, RESOLUTION, RESOLUTION)
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


def real_examples(split: object, kind: str, view: str) -> list[Record]:
    """Real images of one caption kind and view, held-out patients first."""
    wanted = {
        "no finding": lambda r: r.labels == ("No Finding",),
        "pneumonia": lambda r: "Pneumonia" in r.labels,
        "effusion": lambda r: "Effusion" in r.labels,
        "COVID-19": lambda r: "COVID-19" in r.labels,
    }[kind]
    matches = [r for r in split.heldout + split.train if wanted(r) and r.view == view]
    return matches[:GRID_COLUMNS]


def save_grid(pipe: object, split: object, settings: Settings, path: Path) -> None:
    """Rows: caption kind × view. Left: generated (seeds 0-3); right: real."""
    label_width = 230
    rows = [(kind, view) for kind in CAPTION_KINDS for view in ("AP", "PA")]
    width = label_width + GRID_TILE * GRID_COLUMNS * 2 + 16
    grid = Image.new("L", (width, 24 + GRID_TILE * len(rows)), color=255)
    draw = ImageDraw.Draw(grid)
    draw.text((label_width, 6), "generated (mini-cxr, 64x64, shown 2x)", fill=0)
    draw.text(
        (label_width + GRID_TILE * GRID_COLUMNS + 16, 6), "real (public-cxr)", fill=0
    )
    for row, (kind, view) in enumerate(rows):
        top = 24 + row * GRID_TILE
        draw.text((6, top + GRID_TILE // 2 - 6), f"{view}: {kind}", fill=0)
        prompt = CAPTION_KINDS[kind].format(view=view)
        images = generate(pipe, params_for(prompt, 0, GRID_COLUMNS, settings)).images
        real = [load_gray(r.path) for r in real_examples(split, kind, view)]
        for column, image in enumerate(images):
            paste(grid, image, label_width + column * GRID_TILE, top)
        for column, image in enumerate(real):
            left = label_width + GRID_TILE * (GRID_COLUMNS + column) + 16
            paste(grid, image, left, top)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, optimize=True)


def paste(grid: Image.Image, image: Image.Image, left: int, top: int) -> None:
    tile = image.resize((GRID_TILE, GRID_TILE), Image.Resampling.BICUBIC)
    grid.paste(tile, (left, top))


def save_samples(generated: dict, out: Path) -> None:
    for name, images in generated.items():
        sheet = Image.new("L", (RESOLUTION * 20, RESOLUTION * 10))
        for index, image in enumerate(images[:200]):
            sheet.paste(image, ((index % 20) * RESOLUTION, (index // 20) * RESOLUTION))
        sheet.save(out / f"{name}_samples.png")


if __name__ == "__main__":
    main()
