"""Scale-out on this machine: one GPU-queue worker against two, over S3 storage.

    .venv/bin/python bench/scale_out.py [--jobs N] [--steps S] [--size PX]

The whole stack runs on loopback, owned by this script: a PostgreSQL cluster made
with initdb (bench/chaos.py's), a redis-server, SeaweedFS's S3 API (tests/s3.py's),
and Celery workers (prefork, one child, one torch thread each) whose media, model
cache and work folders are separate empty folders, as on hosts of their own. Jobs are
the untrained tiny SD-shaped model at real compute (no sleeps, no padding).

Throughput is read from the database: jobs / (last finished - first started) of each
batch, after a warm-up job per worker (pipeline load) that is not counted. The
storage share is each job's ``timings.storage_s`` (reading the reference and writing
its PNGs through django-storages' S3 backend) over its run time.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chaos import (  # noqa: E402
    PREFIX,
    Postgres,
    RedisServer,
    cpu_description,
    django_env,
    free_port,
    make_world,
    submit,
    wait_until,
)
from tests.s3 import start_s3_server  # noqa: E402

TARGET_RATIO = 1.6
WARM_UP_JOBS = 6  # per worker, not counted: pipeline load and first-step warm-up
READY_TIMEOUT_S = 180


def start_worker(
    folder: Path, env: dict[str, str], name: str, queues: str = f"{PREFIX}gpu"
) -> subprocess.Popen:
    """A worker (of the gpu queue unless ``queues`` says otherwise) with its own
    empty folders, as on a host of its own."""
    host = folder / name
    own = {
        "XRAY_MEDIA_ROOT": str(host / "media"),
        "XRAY_MODEL_CACHE": str(host / "cache"),
        "XRAY_WORK_DIR": str(host / "work"),
    }
    log = folder / f"{name}.log"
    command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker"]
    command += ["-Q", queues, "-c", "1", "--pool", "prefork"]
    command += ["-n", f"{name}@%h", "--loglevel", "INFO"]
    command += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **env, **own},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{log.read_text()[-3000:]}")
        return "ready." in log.read_text(errors="replace")

    if not wait_until(ready, READY_TIMEOUT_S, poll=0.1):
        raise RuntimeError(f"{name} was not ready in {READY_TIMEOUT_S} s")
    return process


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def batch(version, count: int, steps: int, size: int, seed: int) -> list[int]:
    return [
        submit(version, seed=seed + i, steps=steps, size=size) for i in range(count)
    ]


def finished(pks: list[int], timeout: float) -> list:
    from xrayweb.generations.models import GenerationRequest
    from xrayweb.jobs.models import TERMINAL_STATUSES

    jobs = GenerationRequest.objects.filter(pk__in=pks)

    def done() -> bool:
        return jobs.filter(status__in=TERMINAL_STATUSES).count() == len(pks)

    if not wait_until(done, timeout, poll=0.2):
        raise RuntimeError(f"{len(pks)} jobs did not end in {timeout} s")
    return list(jobs)


def measure(version, workers: int, jobs: int, steps: int, size: int, seed: int):
    """Jobs per minute, storage share, and the count per worker, for one batch."""
    warm = finished(batch(version, workers * WARM_UP_JOBS, steps, size, seed), 600)
    failed = [job.error for job in warm if job.status != "succeeded"]
    if failed:
        raise RuntimeError(f"warm-up failed: {failed[0]}")
    done = finished(batch(version, jobs, steps, size, seed + 1000), 1800)
    bad = [job for job in done if job.status != "succeeded"]
    if bad:
        raise RuntimeError(f"{len(bad)} job(s) failed, e.g. {bad[0].error}")
    first = min(job.started_at for job in done)
    last = max(job.finished_at for job in done)
    span = (last - first).total_seconds()
    run_s = sum((job.finished_at - job.started_at).total_seconds() for job in done)
    storage_s = sum(job.timings.get("storage_s", 0.0) for job in done)
    per_worker: dict[str, int] = {}
    for job in done:
        per_worker[job.worker] = per_worker.get(job.worker, 0) + 1
    return 60 * jobs / span, storage_s / run_s, run_s / jobs, per_worker


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=40, help="jobs per measured batch")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="xray-scale-"))
    load = os.getloadavg()[0]
    print(
        f"bench/scale_out.py {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(f"CPU: {cpu_description()}; load average at start {load:.2f}")
    print(
        f"jobs: tiny SD-shaped model, {args.size}² × {args.steps} steps, "
        f"{args.jobs} per batch; one torch thread per worker; S3: SeaweedFS"
    )
    pg, broker, s3 = Postgres(), RedisServer(), None
    processes: list[subprocess.Popen] = []
    try:
        pg.create()
        (folder / "s3").mkdir()
        s3 = start_s3_server(folder / "s3", [free_port() for _ in range(10)])
        bucket = s3.new_bucket()
        env = {
            **django_env(folder, pg.url, broker.url),
            **s3.settings(bucket),
            "XRAY_QUEUE_SLOTS": "gpu=2,train=1,cpu=1",
            "XRAY_TORCH_THREADS": "1",
        }
        os.environ.update(env)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v", "0"],
            cwd=ROOT,
            check=True,
            env={**os.environ},
        )
        import django

        django.setup()
        version = make_world(folder, users=0)

        processes.append(start_worker(folder, env, "host-a"))
        one = measure(version, 1, args.jobs, args.steps, args.size, seed=1)
        processes.append(start_worker(folder, env, "host-b"))
        two = measure(version, 2, args.jobs, args.steps, args.size, seed=5000)
    finally:
        for process in processes:
            stop(process)
        if s3 is not None:
            s3.stop()
        broker.stop()
        pg.destroy()
        shutil.rmtree(folder, ignore_errors=True)

    for label, result in (("1 worker ", one), ("2 workers", two)):
        rate, share, seconds, per_worker = result
        counts = ", ".join(str(n) for n in sorted(per_worker.values(), reverse=True))
        print(
            f"{label}: {rate:6.1f} jobs/min, {seconds:.2f} s per job, "
            f"storage {100 * share:.1f} % of job time (jobs per worker: {counts})"
        )
    ratio = two[0] / one[0]
    verdict = "meets" if ratio >= TARGET_RATIO else "misses"
    print(f"ratio 2/1: {ratio:.2f}x ({verdict} the {TARGET_RATIO}x target)")
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
