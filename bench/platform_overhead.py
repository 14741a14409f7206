"""Platform overhead: whole-stack throughput against direct generator calls, and
enqueue-to-start latency with an idle worker. One run, one worker, the tiny model.

    .venv/bin/python bench/platform_overhead.py [--jobs 20] [--latency-jobs 20]
        [--profile]

``--profile`` runs the worker and the web server (single-threaded) under cProfile
and prints where each job's time goes: HTTP, broker, claim, generation, PNG
encoding, metrics, storage and database writes. Profiling slows both, so its ratio
is not the figure to quote.

The stack under test: an HTTP POST to the generate view (gunicorn, as deployed), the
job in Redis, one `celery worker --pool solo`, PostgreSQL (DATABASE_URL) or SQLite,
the PNG, the difference map and SSIM/PSNR written through Django storage. The direct
baseline calls generator.sampling.generate in this process on the same pipeline
settings.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = Path(tempfile.mkdtemp(prefix="xray-bench-"))
os.environ.setdefault("DATABASE_URL", f"sqlite:///{WORK / 'bench.sqlite3'}")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/12")
os.environ.update(
    # Production settings (DEBUG off: no query log, no debug cursors), served over
    # http on loopback, with a throwaway key.
    SECRET_KEY=secrets.token_urlsafe(64),
    XRAY_DEBUG="0",
    XRAY_HTTPS="0",
    XRAY_ALLOW_SQLITE="1",
    XRAY_MEDIA_ROOT=str(WORK / "media"),
    XRAY_TINY_MODEL_DIR=str(WORK / "tiny-sd"),
    HF_HUB_OFFLINE="1",
    DJANGO_SETTINGS_MODULE="xrayweb.settings",
)
PORT = 8765
PASSWORD = "bench-pass-123"
# Polling the database costs CPU that the worker needs on a 2-core machine; the
# stack's time comes from the rows' timestamps, not from when a poll saw them.
POLL_S = 0.2


def main() -> None:
    args = parse_args()
    print(f"load average at start: {loadavg()}")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    version, case = make_world()
    direct = DirectRunner(version, case, args.steps)
    web, worker = start_stack(args.profile)
    try:
        session = login()
        wait_done([submit(session, version, case, 0, args.steps)])  # worker warm-up
        direct_s = stack_s = 0.0
        # Alternate the two in rounds, so a change in machine load hits both alike.
        for round_index in range(args.rounds):
            seeds = range(round_index * args.jobs, (round_index + 1) * args.jobs)
            direct_s += direct.run(seeds)
            stack_s += time_stack(session, version, case, seeds, args.steps)
        latencies = measure_latency(session, version, case, args.latency_jobs)
    finally:
        for process in (web, worker):
            # SIGINT: both exit through Python, so cProfile writes its file.
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
    report(args, direct_s, stack_s, latencies)
    if args.profile:
        jobs = 1 + args.jobs * args.rounds + args.latency_jobs
        print("\n".join(profile_report(WORK, jobs)))


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10, help="jobs per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-jobs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="cProfile both sides")
    return parser.parse_args()


def make_world():
    from django.contrib.auth import get_user_model
    from django.core.files.base import ContentFile

    from tests.generations.conftest import chest_like_png
    from xrayweb.cases.models import Case, CaseImage
    from xrayweb.generations.models import ModelKind, ModelVersion
    from xrayweb.generations.runner import ensure_tiny_model

    tiny = Path(os.environ["XRAY_TINY_MODEL_DIR"])
    ensure_tiny_model(tiny)
    get_user_model().objects.create_user("bench", password=PASSWORD)
    case = Case.objects.create(uid="CXR1", source="openi", prompt="No acute disease.")
    image = CaseImage(
        case=case, image_id="CXR1_IM-1", view="frontal", width=256, height=256
    )
    image.derivative.save("CXR1_IM-1.png", ContentFile(chest_like_png()))
    version = ModelVersion.objects.create(
        name="tiny-untrained", kind=ModelKind.TINY, source=str(tiny)
    )
    return version, case


class DirectRunner:
    """The same work without the platform: generate, then score against the case."""

    def __init__(self, version, case, steps: int) -> None:
        from PIL import Image

        from generator.sampling import GenerationParams, generate
        from xrayweb.generations.runner import pipeline_for

        self.pipe = pipeline_for(version, 1.0)
        self.prompt, self.steps = case.prompt, steps
        self.reference = Image.open(case.frontal_image().derivative.path).convert("L")
        generate(self.pipe, GenerationParams(prompt=self.prompt, steps=steps))

    def run(self, seeds: range) -> float:
        from generator.metrics import compare
        from generator.sampling import GenerationParams, generate

        started = time.perf_counter()
        for seed in seeds:
            params = GenerationParams(prompt=self.prompt, seed=seed, steps=self.steps)
            compare(generate(self.pipe, params).images[0], self.reference)
        return time.perf_counter() - started


def start_stack(profile: bool = False) -> tuple[subprocess.Popen, subprocess.Popen]:
    import redis

    redis.Redis.from_url(os.environ["CELERY_BROKER_URL"]).flushdb()
    log = open(WORK / "worker.log", "wb")  # noqa: SIM115 - lives as long as the worker
    worker_python, web_python = [sys.executable], [sys.executable]
    if profile:
        worker_python += ["-m", "cProfile", "-o", str(WORK / "worker.prof")]
        web_python += ["-m", "cProfile", "-o", str(WORK / "web.prof")]
    worker = subprocess.Popen(
        [
            *worker_python,
            "-m",
            "celery",
            "-A",
            "worker.app",
            "worker",
            "-Q",
            "gpu",
            "--pool",
            "solo",
            "--without-mingle",
            "--without-gossip",
            "--loglevel",
            "WARNING",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    web = subprocess.Popen(
        web_command(web_python, profile),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return web, worker


def web_command(python: list[str], profile: bool) -> list[str]:
    """The web server as deployed (gunicorn, one synchronous worker: the
    Dockerfile's server); under --profile, runserver in one thread, since
    cProfile follows only the process and thread it starts in."""
    if profile:
        server = ["manage.py", "runserver", f"127.0.0.1:{PORT}", "--noreload"]
        return [*python, *server, "--nothreading"]
    server = ["-m", "gunicorn", "xrayweb.wsgi", "-w", "1", "--timeout", "60"]
    return [*python, *server, "-b", f"127.0.0.1:{PORT}"]


def login():
    import requests

    session = requests.Session()
    base = f"http://127.0.0.1:{PORT}"
    for _ in range(600):
        try:
            page = session.get(f"{base}/login/", timeout=30)  # the first loads Django
            break
        except requests.ConnectionError:
            time.sleep(0.1)
    token = csrf(page.text)
    session.post(
        f"{base}/login/",
        data={"username": "bench", "password": PASSWORD, "csrfmiddlewaretoken": token},
        headers={"Referer": f"{base}/login/"},
    ).raise_for_status()
    session.token = csrf(session.get(f"{base}/").text)
    return session


def csrf(html: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


def submit(session, version, case, seed: int, steps: int) -> int:
    base = f"http://127.0.0.1:{PORT}"
    response = session.post(
        f"{base}/",
        data={
            "csrfmiddlewaretoken": session.token,
            "prompt": "",
            "case": case.pk,
            "model_version": version.pk,
            "seed": seed,
            "steps": steps,
            "guidance_scale": 7.5,
            "scheduler": "dpmpp",
            "width": 256,
            "height": 256,
            "num_images": 1,
            "lora_scale": 1.0,
            "negative_prompt": "",
        },
        headers={"Referer": f"{base}/"},
        allow_redirects=False,
    )
    assert response.status_code == 302, response.text[:2000]
    return int(response.headers["Location"].rstrip("/").rsplit("/", 1)[1])


def wait_done(request_ids: list[int], timeout: float = 600) -> None:
    from xrayweb.generations.models import GenerationRequest
    from xrayweb.jobs.models import Status

    deadline = time.monotonic() + timeout
    pending = set(request_ids)
    while pending and time.monotonic() < deadline:
        done = GenerationRequest.objects.filter(
            pk__in=pending, status__in=[Status.SUCCEEDED, Status.FAILED]
        ).values_list("pk", "status", "error")
        for pk, status, error in done:
            if status == Status.FAILED:
                raise RuntimeError(f"request {pk} failed: {error}")
            pending.discard(pk)
        time.sleep(POLL_S)
    if pending:
        raise RuntimeError(f"requests {sorted(pending)} did not finish in {timeout} s")


def time_stack(session, version, case, seeds: range, steps: int) -> float:
    """From the first submit to the last job's stored finish (the rows' own
    timestamps, on this host's clock), so the bench's polling interval adds
    nothing to the figure."""
    from django.db.models import Max
    from django.utils import timezone

    from xrayweb.generations.models import GenerationRequest

    started = timezone.now()
    ids = [submit(session, version, case, seed, steps) for seed in seeds]
    wait_done(ids)
    rows = GenerationRequest.objects.filter(pk__in=ids)
    return (rows.aggregate(end=Max("finished_at"))["end"] - started).total_seconds()


def measure_latency(session, version, case, jobs: int) -> list[float]:
    """Enqueue (message sent) to start (claimed by the worker), one job at a time."""
    from xrayweb.generations.models import GenerationRequest

    latencies = []
    for seed in range(jobs):
        request_id = submit(session, version, case, seed, 1)
        wait_done([request_id])
        row = GenerationRequest.objects.get(pk=request_id)
        latencies.append((row.started_at - row.enqueued_at).total_seconds() * 1000)
        time.sleep(0.2)  # let the worker go idle on its blocking Redis read
    return latencies


def report(args, direct_s: float, stack_s: float, latencies: list[float]) -> None:
    jobs = args.jobs * args.rounds
    direct_rate, stack_rate = jobs / direct_s * 60, jobs / stack_s * 60
    p95 = statistics.quantiles(latencies, n=20)[18]
    database = os.environ["DATABASE_URL"].split(":", 1)[0]
    lines = [
        f"platform overhead: tiny model, 256², {args.steps} steps, {database}",
        f"direct generator calls: {direct_rate:.1f} jobs/min "
        f"({jobs} jobs in {direct_s:.1f} s)",
        f"whole stack (HTTP, Redis, worker, DB, PNG, metrics): {stack_rate:.1f} "
        f"jobs/min ({jobs} jobs in {stack_s:.1f} s)",
        f"throughput ratio stack/direct: {stack_rate / direct_rate:.3f} "
        "(target >= 0.90, issue 16)",
        f"enqueue-to-start latency, idle worker, {len(latencies)} jobs: "
        f"p50 {statistics.median(latencies):.1f} ms, p95 {p95:.1f} ms "
        "(target p50 <= 50 ms)",
        f"load average at the end: {loadavg()}",
    ]
    print("\n".join(lines))


# Where a job's time goes: (label, file the function is in, function), each line's
# figure the function's cumulative time per job; nested lines are part of the line
# above them.
WORKER_PARTS = [
    ("celery: receive, trace, ack (task total)", "celery/app/trace.py", "trace_task"),
    ("  the task (run_generation)", "worker/tasks.py", "run_generation"),
    ("    claim (conditional UPDATE + attempt)", "jobs/lifecycle.py", "claim"),
    ("    read the row", "generations/runner.py", "_fetch"),
    ("    pipeline_for (cache, adapter)", "generations/runner.py", "pipeline_for"),
    ("    generate (text, UNet, VAE)", "generator/sampling.py", "generate"),
    ("      progress writes, lease, previews", "generations/runner.py", "__call__"),
    ("    store: read the case image", "generations/runner.py", "_open_reference"),
    ("    store: PNG encoding", "generations/runner.py", "_png"),
    ("    store: SSIM and PSNR", "generator/metrics.py", "compare"),
    ("    store: difference map", "generator/metrics.py", "difference_map"),
    (
        "    store: files + rows + finish",
        "generations/services.py",
        "generation_request_succeed",
    ),
    ("      storage writes", "generations/services.py", "_image_row"),
    ("      finish (fenced UPDATE)", "jobs/lifecycle.py", "finish"),
    ("      dispatch the next job", "jobs/dispatch.py", "dispatch"),
    ("  heartbeat thread start/stop", "jobs/runtime.py", "__exit__"),
]
WEB_PARTS = [
    ("HTTP request (WSGI handler)", "django/core/handlers/wsgi.py", "__call__"),
    ("  generate view", "generations/views.py", "generate"),
    ("    form validation", "django/forms/forms.py", "full_clean"),
    (
        "    create: quota + insert",
        "generations/services.py",
        "generation_request_create",
    ),
    ("    dispatch to Redis", "jobs/dispatch.py", "dispatch"),
    (
        "  sessions + auth middleware",
        "django/contrib/sessions/middleware.py",
        "process_response",
    ),
]


def profile_report(folder: Path, jobs: int) -> list[str]:
    """Per job, the cumulative milliseconds of each part in each process."""
    import pstats

    lines = [f"profile (cProfile, per job, {jobs} jobs; profiling slows both sides):"]
    for name, parts in (("worker", WORKER_PARTS), ("web", WEB_PARTS)):
        stats = pstats.Stats(str(folder / f"{name}.prof")).stats
        lines.append(f"{name}:")
        for label, path, function in parts:
            found = [
                (calls, cumulative)
                for (file, _, func), (_, calls, _, cumulative, _) in stats.items()
                if file.endswith(path) and func == function
            ]
            calls = sum(c for c, _ in found)
            cumulative = sum(t for _, t in found)
            lines.append(
                f"  {label:<44} {cumulative / jobs * 1000:7.1f} ms  ({calls} calls)"
            )
    return lines


if __name__ == "__main__":
    main()
