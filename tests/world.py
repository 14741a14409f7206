"""The shared world's plain helpers: a real-looking radiograph, the test database's
URL for worker processes, waiting for a worker and for a job, a gunicorn to talk
to over HTTP. The fixtures that use them are in tests/conftest.py."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import requests
from django.conf import settings as django_settings
from PIL import Image

WORKER_READY_TIMEOUT_S = 180
# A web server as in production (DEBUG off, its own error pages), but over plain
# http on loopback: no redirect to https, cookies that a requests.Session sends back.
PRODUCTION_OVER_HTTP = {
    "XRAY_DEBUG": "0",
    "XRAY_HTTPS": "0",
    "XRAY_ALLOW_SQLITE": "1",
    "SECRET_KEY": "gunicorn-under-test-" + "k3y-" * 10,
}


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


def database_url() -> str:
    """The URL of the database the tests run in, for a worker in another process."""
    db = django_settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    host, port = db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
    return f"postgres://{db.get('USER') or 'postgres'}@{host}:{port}/{db['NAME']}"


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


@contextlib.contextmanager
def gunicorn(env: dict[str, str], workers: int = 2) -> Iterator[str]:
    """gunicorn serving the platform on a free loopback port with ``env`` added to
    this process's environment; yields its base URL and stops it afterwards. Its
    log is printed if it fails to answer."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "gunicorn", "xrayweb.wsgi", "-w", str(workers)]
    command += ["-b", f"127.0.0.1:{port}", "--timeout", "60", "--access-logfile", "-"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command,
            cwd=Path(__file__).resolve().parent.parent,
            env={**os.environ, **PRODUCTION_OVER_HTTP, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, workers included
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_for_web(process, url, log)
            yield url
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def _wait_for_web(process: subprocess.Popen, url: str, log) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            requests.get(f"{url}/healthz", timeout=30)
            return
        except requests.RequestException:
            time.sleep(0.1)
    log.seek(0)
    raise RuntimeError(f"gunicorn did not answer:\n{log.read().decode()[-3000:]}")
