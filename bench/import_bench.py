"""IU X-ray import speed: the genuine reports archive into PostgreSQL, and image
throughput (images/s, validation and 256² derivative included) on generated films.

    .venv/bin/python bench/import_bench.py [--images 60]

Runs in a throwaway database (`xrayweb_bench`, created and dropped here) on the
server in DATABASE_URL (default: PostgreSQL on 127.0.0.1). Targets from issue 4:
reports ≤ 10 s, images ≥ 40/s on this machine's 2 cores.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
os.environ.setdefault("SECRET_KEY", "bench")
os.environ.setdefault("XRAY_DEBUG", "1")
os.environ["DJANGO_SETTINGS_MODULE"] = "xrayweb.settings"
REPORTS = ROOT.parent / "shared" / "data" / "openi" / "NLMCXR_reports.tgz"
FILM_SIZE = (2048, 2496)  # width, height of a typical Open-i film


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=Path, default=REPORTS)
    parser.add_argument("--images", type=int, default=60)
    args = parser.parse_args()

    import django
    from django.conf import settings

    django.setup()
    settings.DATABASES["default"]["TEST"]["NAME"] = "xrayweb_bench"
    settings.MEDIA_ROOT = tempfile.mkdtemp(prefix="xray-import-bench-")
    from django.db import connection

    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        run(args)
    finally:
        connection.creation.destroy_test_db("xrayweb_bench", verbosity=0)


def run(args: argparse.Namespace) -> None:
    from xrayweb.cases import services

    services.clip_tokenizer()  # loaded once per process, outside the timings
    first = timed_import(services.ImportSources(reports=args.reports))
    again = timed_import(services.ImportSources(reports=args.reports))
    archive = films_archive(Path(settings_media_root()) / "films.tgz", args.images)
    films = timed_import(services.ImportSources(images=archive))
    rate = films.images_created / films.seconds
    print(
        f"reports archive: {first.cases_created} cases in {first.seconds:.2f} s "
        "(target <= 10 s)"
    )
    print(
        f"re-import: {again.cases_unchanged} unchanged, {again.cases_created} created "
        f"in {again.seconds:.2f} s"
    )
    print(
        f"images: {films.images_created} films {FILM_SIZE[0]}x{FILM_SIZE[1]} in "
        f"{films.seconds:.2f} s = {rate:.1f} images/s (target >= 40); "
        f"skipped {films.skipped_total}"
    )
    for skipped in films.skipped[:5]:
        print(f"  skipped {skipped['item']}: {skipped['reason']}")


def settings_media_root() -> str:
    from django.conf import settings

    return str(settings.MEDIA_ROOT)


def timed_import(sources):
    from xrayweb.cases import services

    started = time.monotonic()
    report = services.case_import(sources=sources)
    report.seconds = time.monotonic() - started
    return report


def films_archive(path: Path, count: int) -> Path:
    """Radiograph-sized PNGs (smooth field + grain, ~2-3 MB each) named as Open-i's."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 255, (78, 64), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize(FILM_SIZE, Image.BICUBIC))
    with tarfile.open(path, "w:gz", compresslevel=1) as archive:
        for uid in range(1, count + 1):
            grain = rng.integers(-6, 6, base.shape)
            pixels = (base.astype(np.int16) + grain).clip(0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            member = tarfile.TarInfo(f"CXR{uid}_IM-{uid:04d}-1001.png")
            member.size = buffer.tell()
            buffer.seek(0)
            archive.addfile(member, buffer)
    return path


if __name__ == "__main__":
    main()
