"""A 200-image synthetic dataset with the shipped mini model, through the platform.

    .venv/bin/python bench/datasets.py [--prompts 50] [--per-prompt 4]

Prints, from one run on this machine:

- images per minute through the dataset job (a real Celery worker process, real
  Redis and PostgreSQL) against direct generation of the same images with
  generator.sampling in this process (same model, placement, one torch thread,
  same prompts and derived seeds), and their ratio (the issue's target: >= 0.9).
  Direct generation runs before and after the platform run; the ratio uses their
  mean. The dataset's time is submit to succeeded (dispatch and every write
  included), its chunks' time first start to last finish;
- export MB/s: ZIP bytes over the export job's run time, without and with DICOM;
- the report job through the worker, with the training features not yet cached
  (cold) and cached (warm), and memorization-check seconds per 1,000 generated
  images against the mini model's 1,003 training images (public-cxr): features,
  nearest neighbour and SSIM of each generated image, with the cached training
  features.

The stack is this script's own: a PostgreSQL cluster made with initdb and a
redis-server on free loopback ports (bench/chaos.py's), never the shared ones.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chaos import (  # noqa: E402
    PREFIX,
    Postgres,
    RedisServer,
    cpu_description,
    django_env,
    wait_until,
)
from bench.scale_out import start_worker, stop  # noqa: E402

TARGET_RATIO = 0.9
PUBLIC_CXR = ROOT.parent / "shared" / "data" / "public-cxr"
MINI = ROOT / "models" / "mini-cxr"
PARAMS = {"steps": 20, "guidance_scale": 3.0, "scheduler": "dpmpp"}
PARAMS |= {"width": 64, "height": 64}
JOB_SEED = 2026


def captions(count: int) -> list[str]:
    """Distinct public-cxr captions, in file order."""
    with (PUBLIC_CXR / "labels.csv").open(newline="") as handle:
        texts = dict.fromkeys(row["text"] for row in csv.DictReader(handle))
    return list(texts)[:count]


def dataset_run(owner, version, prompts: list[str], per_prompt: int, timeout: float):
    """Create a dataset and wait for it; the row once it ended."""
    from xrayweb.datasets import services
    from xrayweb.datasets.models import Dataset, PromptSource
    from xrayweb.datasets.sources import Prompt
    from xrayweb.jobs.models import TERMINAL_STATUSES

    dataset = services.dataset_create(
        user=owner,
        name=f"bench {len(prompts)}x{per_prompt}",
        model_version=version,
        params=PARAMS,
        seed=JOB_SEED,
        images_per_prompt=per_prompt,
        prompts=[Prompt(text) for text in prompts],
        source=PromptSource.TYPED,
    )
    rows = Dataset.objects.filter(pk=dataset.pk, status__in=TERMINAL_STATUSES)
    if not wait_until(rows.exists, timeout, poll=0.05):
        raise RuntimeError(f"dataset {dataset.pk} did not end in {timeout} s")
    return Dataset.objects.get(pk=dataset.pk)


def direct(prompts: list[str], per_prompt: int) -> tuple[float, list]:
    """Seconds to generate the same images in this process, and the images."""
    import torch

    from generator.cache import cached_pipeline
    from generator.loading import pick_placement
    from generator.sampling import GenerationParams, generate
    from xrayweb.datasets.services import prompt_seed

    torch.set_num_threads(1)
    pipe = cached_pipeline(str(MINI), None, pick_placement(None, None, False))
    generate(pipe, GenerationParams(prompt=prompts[0], num_images=1, **PARAMS))
    started = time.perf_counter()
    images = []
    for index, prompt in enumerate(prompts):
        params = GenerationParams(
            prompt=prompt,
            seed=prompt_seed(JOB_SEED, index),
            num_images=per_prompt,
            **PARAMS,
        )
        images += generate(pipe, params).images
    return time.perf_counter() - started, images


def export_rate(dataset, owner, dicom: bool, timeout: float) -> tuple[float, float]:
    """MB/s of one export (ZIP bytes / the job's run time), and its MB."""
    from xrayweb.datasets import services
    from xrayweb.datasets.models import DatasetExport
    from xrayweb.jobs.models import TERMINAL_STATUSES

    export = services.dataset_export_create(dataset=dataset, user=owner, dicom=dicom)
    done = DatasetExport.objects.filter(pk=export.pk, status__in=TERMINAL_STATUSES)
    if not wait_until(done.exists, timeout, poll=0.05):
        raise RuntimeError(f"export {export.pk} did not end in {timeout} s")
    row = DatasetExport.objects.get(pk=export.pk)
    if row.status != "succeeded":
        raise RuntimeError(f"export failed: {row.error}")
    megabytes = row.size_bytes / 1e6
    return megabytes / row.run_seconds, megabytes


def memorization_timing(dataset, version) -> dict:
    """Seconds per 1,000 generated images of the check itself (features, nearest
    training image, pair SSIM), with the training features the report job cached."""
    import io

    import numpy as np
    import torch
    from django.core.files.storage import default_storage

    from generator import memorization
    from generator.evaluation import open_gray
    from generator.metrics import inception_helper
    from xrayweb.datasets import services, training_sets
    from xrayweb.datasets.models import DatasetImage
    from xrayweb.jobs.files import opener

    torch.set_num_threads(1)
    size = (PARAMS["width"], PARAMS["height"])
    training_set, reason = training_sets.training_set_of(version)
    if training_set is None:
        raise RuntimeError(reason)
    key = services.features_key(
        version=version, identity=training_set.identity, size=size
    )
    with default_storage.open(key, "rb") as handle:
        training = np.load(io.BytesIO(handle.read()))
    helper = inception_helper()
    keys = DatasetImage.objects.filter(prompt__dataset=dataset).values_list(
        "image", flat=True
    )
    sources = [opener(key) for key in keys]
    started = time.perf_counter()
    generated = memorization.features(helper, (open_gray(s) for s in sources), size)
    found = memorization.nearest(
        generated - training.mean(0), training - training.mean(0)
    )
    for source, i in zip(sources, found.index, strict=True):
        memorization.pair_ssim(
            open_gray(source), open_gray(training_set.training[i].source), size
        )
    per_image = (time.perf_counter() - started) / len(sources)
    return {
        "training_images": len(training),
        "per_1000_s": 1000 * per_image,
        "images": len(sources),
    }


def report_run(dataset, owner, timeout: float):
    from xrayweb.datasets import services
    from xrayweb.datasets.models import DatasetReport
    from xrayweb.jobs.models import TERMINAL_STATUSES

    report = services.dataset_report_create(dataset=dataset, user=owner)
    done = DatasetReport.objects.filter(pk=report.pk, status__in=TERMINAL_STATUSES)
    if not wait_until(done.exists, timeout, poll=0.2):
        raise RuntimeError(f"report {report.pk} did not end in {timeout} s")
    row = DatasetReport.objects.get(pk=report.pk)
    if row.status != "succeeded":
        raise RuntimeError(f"report failed: {row.error}")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--per-prompt", type=int, default=4)
    args = parser.parse_args()
    if not (PUBLIC_CXR / "labels.csv").is_file():
        print(f"{PUBLIC_CXR} is absent: the bench needs ../shared beside the clone")
        return 2
    prompts = captions(args.prompts)
    total = len(prompts) * args.per_prompt

    print(f"bench/datasets.py {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"CPU: {cpu_description()}; load average at start {os.getloadavg()[0]:.2f}")
    print(
        f"dataset: {len(prompts)} prompts x {args.per_prompt} = {total} images, "
        f"mini-cxr, {PARAMS}; one torch thread in the worker and in direct runs"
    )
    folder = Path(tempfile.mkdtemp(prefix="xray-datasets-bench-"))
    pg, broker = Postgres(), RedisServer()
    worker = None
    try:
        pg.create()
        env = {
            **django_env(folder, pg.url, broker.url),
            # The worker's own media folder (bench.scale_out.start_worker's), so
            # this process reads the PNGs it wrote.
            "XRAY_MEDIA_ROOT": str(folder / "w" / "media"),
            "XRAY_MINI_MODEL_DIR": str(MINI),
            "XRAY_PUBLIC_CXR_DIR": str(PUBLIC_CXR),
            # The platform's defaults, not chaos.py's fault-hunting short leases.
            "XRAY_PROGRESS_INTERVAL_S": "0.5",
            "XRAY_JOB_LEASE_S": "60",
            "XRAY_JOB_HEARTBEAT_S": "15",
            "XRAY_RECONCILE_INTERVAL_S": "60",
            "XRAY_RECONCILE_AFTER_S": "30",
            "XRAY_DATASET_MAX_IMAGES": "100000",
        }
        os.environ.update(env)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True
        )
        import django

        django.setup()
        from django.contrib.auth.models import User

        from xrayweb.generations.models import ModelKind, ModelVersion

        owner = User.objects.create_user("bench")
        version = ModelVersion.objects.create(
            name="mini-cxr", kind=ModelKind.MINI, source=str(MINI)
        )
        env["XRAY_QUEUE_SLOTS"] = "gpu=1,train=1,cpu=1"
        queues = ",".join(f"{PREFIX}{q}" for q in ("gpu", "cpu", "train"))
        worker = start_worker(folder, env, "w", queues)

        # 1. Direct generation, the platform, direct again.
        first_s, images = direct(prompts, args.per_prompt)
        dataset_run(owner, version, prompts[:1], 1, 300)  # the worker loads the model
        started = time.perf_counter()
        dataset = dataset_run(owner, version, prompts, args.per_prompt, 3600)
        platform_s = time.perf_counter() - started
        if dataset.status != "succeeded":
            raise RuntimeError(f"dataset failed: {dataset.error}")
        second_s, _ = direct(prompts, args.per_prompt)
        chunks = dataset.chunks.all()
        chunk_span = (
            max(c.finished_at for c in chunks) - min(c.started_at for c in chunks)
        ).total_seconds()
        same = _same_pixels(dataset, images)

        # 2. Exports; 3. the memorization check; 4. the report job.
        zip_rate, zip_mb = export_rate(dataset, owner, dicom=False, timeout=600)
        dicom_rate, dicom_mb = export_rate(dataset, owner, dicom=True, timeout=600)
        cold = report_run(dataset, owner, 3600)
        warm = report_run(dataset, owner, 3600)
        memo = memorization_timing(dataset, version)
    finally:
        if worker is not None:
            stop(worker)
        broker.stop()
        pg.destroy()
        shutil.rmtree(folder, ignore_errors=True)

    direct_s = (first_s + second_s) / 2
    platform_rate, direct_rate = 60 * total / platform_s, 60 * total / direct_s
    ratio = platform_rate / direct_rate
    print(
        f"direct generation: {60 * total / first_s:.1f} and "
        f"{60 * total / second_s:.1f} images/min (before, after); mean "
        f"{direct_rate:.1f}"
    )
    print(
        f"dataset job: {platform_rate:.1f} images/min submit to succeeded "
        f"({platform_s:.1f} s; chunks' span {chunk_span:.1f} s, "
        f"{60 * total / chunk_span:.1f} images/min)"
    )
    print(f"pixel-identical to direct generation: {same} of {total} images")
    verdict = "meets" if ratio >= TARGET_RATIO else "misses"
    print(f"ratio dataset/direct: {ratio:.3f} ({verdict} the {TARGET_RATIO} target)")
    print(f"export: {zip_rate:.1f} MB/s ({zip_mb:.2f} MB ZIP)")
    print(f"export with DICOM: {dicom_rate:.1f} MB/s ({dicom_mb:.2f} MB ZIP)")
    print(
        f"memorization check: {memo['per_1000_s']:.1f} s per 1,000 generated images "
        f"against {memo['training_images']} training images (features, nearest, "
        f"SSIM; measured on {memo['images']}, one torch thread, training features "
        f"from the cache); the training features once: about "
        f"{cold.run_seconds - warm.run_seconds:.0f} s (cold report minus warm)"
    )
    for label, row in (("cold", cold), ("warm", warm)):
        memo_row = row.results["memorization"]
        print(
            f"report job ({label} feature cache): {row.run_seconds:.1f} s; "
            f"flagged {memo_row['flagged_count']} of {total}; threshold "
            f"{memo_row['threshold']['value']:.4f} ({memo_row['threshold']['rule']}); "
            f"mean MS-SSIM {row.results['diversity']['mean_msssim']:.3f}"
        )
    return 0 if ratio >= TARGET_RATIO else 1


def _same_pixels(dataset, images: list) -> int:
    import numpy as np
    from django.core.files.storage import default_storage
    from PIL import Image

    from xrayweb.datasets.models import DatasetImage

    rows = DatasetImage.objects.filter(prompt__dataset=dataset).order_by(
        "prompt__index", "index"
    )
    same = 0
    for row, image in zip(rows, images, strict=True):
        with default_storage.open(row.image, "rb") as handle:
            stored = np.asarray(Image.open(handle).convert("L"))
        same += bool(np.array_equal(stored, np.asarray(image.convert("L"))))
    return same


if __name__ == "__main__":
    sys.exit(main())
