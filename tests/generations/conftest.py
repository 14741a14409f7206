"""The generation world: the tiny model version, a case with a real-looking image,
and a real Celery worker process consuming real Redis."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from django.conf import settings as django_settings
from django.core.files.base import ContentFile
from PIL import Image

from tests.conftest import PROJECT_ROOT
from xrayweb.cases.models import Case, CaseImage, Source, Split, View

WORKER_READY_TIMEOUT_S = 180


def chest_like_png(seed: int = 0, size: int = 256) -> bytes:
    """A smooth synthetic radiograph-like image: dark lungs, bright mediastinum."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    body = np.exp(-(((x - 0.5) / 0.45) ** 4 + ((y - 0.55) / 0.5) ** 4))
    lungs = np.exp(-(((np.abs(x - 0.5) - 0.2) / 0.12) ** 2 + ((y - 0.5) / 0.25) ** 2))
    pixels = 0.85 * body - 0.5 * lungs + 0.03 * rng.standard_normal((size, size))
    gray = np.clip(pixels * 255, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(gray, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def case_with_image(db) -> Case:
    case = Case.objects.create(
        uid="CXR9001",
        source=Source.OPENI,
        findings="The heart is normal in size. The lungs are clear.",
        impression="No acute cardiopulmonary disease.",
        prompt="No acute cardiopulmonary disease.",
        prompt_full="No acute cardiopulmonary disease.",
        mesh_major=["normal"],
        mesh_text="normal",
        split=Split.TEST,
    )
    image = CaseImage(
        case=case,
        image_id="CXR9001_IM-0001-1001",
        view=View.FRONTAL,
        view_position="PA",
        width=256,
        height=256,
    )
    image.derivative.save("CXR9001_IM-0001-1001.png", ContentFile(chest_like_png()))
    return case


def form_data(version, **overrides) -> dict:
    """What the generate form posts: valid values for every field, then overrides."""
    data = {
        "prompt": "Heart size normal.",
        "negative_prompt": "",
        "model_version": version.pk,
        "seed": "5",
        "steps": "4",
        "guidance_scale": "7.5",
        "scheduler": "dpmpp",
        "width": "256",
        "height": "256",
        "num_images": "1",
        "lora_scale": "1.0",
    }
    return {**data, **overrides}


def database_url() -> str:
    """The URL of the database the tests run in, for a worker in another process."""
    db = django_settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    host, port = db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
    return f"postgres://{db.get('USER') or 'postgres'}@{host}:{port}/{db['NAME']}"


@pytest.fixture(scope="session")
def worker_media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-media")


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, django_db_blocker, worker_media_root: Path):
    """A real `celery worker` process on the `gpu` and `cpu` queues of a real Redis."""
    broker = django_settings.CELERY_BROKER_URL
    redis.Redis.from_url(broker).flushdb()  # no stale messages from earlier runs
    log = worker_media_root / "worker.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "XRAY_MEDIA_ROOT": str(worker_media_root),
        "XRAY_PROGRESS_INTERVAL_S": "0",
        "CELERY_BROKER_URL": broker,
        # It reports itself once (removed below) and not again during the session:
        # its list of loadable models cannot see versions made inside a test's
        # transaction, and the web would refuse them. Presence has its own tests.
        "XRAY_WORKER_REPORT_S": "86400",
    }
    command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker"]
    command += ["-Q", "gpu,train,cpu,control", "-c", "1", "--loglevel", "INFO"]
    command += ["--without-mingle", "--without-gossip", "-n", f"test-{os.getpid()}@%h"]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for_ready(process, log)
        with django_db_blocker.unblock():
            forget_presence(f"test-{os.getpid()}@")
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def forget_presence(name_prefix: str) -> None:
    from xrayweb.jobs.models import WorkerPresence

    rows = WorkerPresence.objects.filter(name__startswith=name_prefix)
    deadline = time.monotonic() + 30
    while not rows.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    rows.delete()


def wait_for_ready(process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{log.read_text()}")
        if "ready." in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise RuntimeError(
        f"worker not ready in {WORKER_READY_TIMEOUT_S} s:\n{log.read_text()}"
    )


@pytest.fixture
def worker(celery_worker_process, settings, worker_media_root: Path):
    """Use the session's worker; this test's web side shares its media folder."""
    settings.MEDIA_ROOT = worker_media_root
    return celery_worker_process


def wait_for_status(request_id: int, statuses: set[str], timeout: float = 120) -> str:
    from xrayweb.generations.models import GenerationRequest

    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = GenerationRequest.objects.get(pk=request_id).status
        if status in statuses:
            return status
        time.sleep(0.2)
    raise AssertionError(f"request {request_id} still {status!r} after {timeout} s")
