"""Real processes for fault tests: a private Redis server, Celery workers per queue,
a beat process, all in their own process groups so a test can SIGKILL them whole.

Each test gets its own Redis server (so a FLUSHALL touches nothing else), its own
queue names, and test-sized lease, heartbeat and reconcile settings (about a second).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import requests
from django.conf import settings as django_settings

from tests.conftest import PROJECT_ROOT
from tests.generations.conftest import database_url

READY_TIMEOUT_S = 120
LEASE_S = 2
TEST_SETTINGS = {
    "XRAY_JOB_LEASE_S": LEASE_S,
    "XRAY_JOB_HEARTBEAT_S": 0.5,
    "XRAY_RECONCILE_INTERVAL_S": 1,
    "XRAY_RECONCILE_AFTER_S": 1,
    "XRAY_PROGRESS_INTERVAL_S": 0,
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(check: Callable[[], object], timeout: float, what: str) -> object:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Platform:
    """The worker side of the platform, started and killed by the test."""

    folder: Path
    env: dict[str, str]
    prefix: str
    broker: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def queue(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.broker)

    def start_worker(self, queue: str, index: int = 1, **env: str) -> subprocess.Popen:
        """A prefork worker of concurrency 1 on ``queue``; ``index`` > 1 starts
        another one beside it (its log and process are ``worker-<queue>-<index>``)."""
        name = f"worker-{queue}" if index == 1 else f"worker-{queue}-{index}"
        command = ["worker", "-Q", self.queue(queue), "-c", "1", "--pool", "prefork"]
        command += ["-n", f"{self.prefix}{queue}{index}@%h", "--loglevel", "INFO"]
        command += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
        process = self._start(name, command, env)
        self.wait_for_log(name, "ready.", READY_TIMEOUT_S)
        return process

    def start_web(self, workers: int = 2, **env: str) -> str:
        """gunicorn serving the platform on a free port; its base URL."""
        port = free_port()
        command = [sys.executable, "-m", "gunicorn", "xrayweb.wsgi", "-w", str(workers)]
        command += ["-b", f"127.0.0.1:{port}", "--access-logfile", "-"]
        self._start("web", command, env, module=None)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(url), READY_TIMEOUT_S, "gunicorn to answer")
        return url

    def start_beat(self) -> subprocess.Popen:
        schedule = self.folder / "beat-schedule"
        return self._start("beat", ["beat", "-s", str(schedule), "-l", "INFO"], {})

    def _start(
        self, name: str, args: list[str], env: dict, module: str | None = "celery"
    ) -> subprocess.Popen:
        log = self.folder / f"{name}.log"
        command = [sys.executable, "-m", "celery", "-A", "worker.app", *args]
        with log.open("ab") as out:
            process = subprocess.Popen(
                command if module else args,
                cwd=PROJECT_ROOT,
                env={**self.env, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, children included
            )
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_log(self, name: str, text: str, timeout: float) -> None:
        def seen() -> bool:
            if self.processes[name].poll() is not None:
                raise AssertionError(f"{name} exited:\n{self.log(name)[-3000:]}")
            return text in self.log(name)

        wait_until(seen, timeout, f"{text!r} in the log of {name}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (the worker and its pool children)."""
        process = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        process.wait(timeout=30)

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.kill(name)


@pytest.fixture
def platform(
    transactional_db, settings, tmp_path: Path, tiny_model_dir: Path
) -> Iterator[Platform]:
    """A private Redis, and this process configured to dispatch to it."""
    from worker.app import app

    port = free_port()
    redis_server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    broker = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(broker)
    wait_until(lambda: _pings(client), 10, "the private Redis")
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    media = tmp_path / "media"
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "XRAY_MEDIA_ROOT": str(media),
        "XRAY_WORK_DIR": str(tmp_path / "worker-work"),
        "XRAY_MODEL_CACHE": str(tmp_path / "worker-model-cache"),
        "CELERY_BROKER_URL": broker,
        "XRAY_QUEUE_PREFIX": prefix,
        **{name: str(value) for name, value in TEST_SETTINGS.items()},
    }
    for name, value in TEST_SETTINGS.items():
        setattr(settings, name, value)
    settings.MEDIA_ROOT = media
    settings.XRAY_QUEUE_PREFIX = prefix
    settings.CELERY_TASK_ROUTES = {
        pattern: {"queue": f"{prefix}{route['queue']}"}
        for pattern, route in django_settings.CELERY_TASK_ROUTES.items()
    }
    previous = _use_broker(app, broker)
    world = Platform(folder=tmp_path, env=env, prefix=prefix, broker=broker)
    try:
        yield world
    finally:
        world.stop_all()
        _use_broker(app, previous)
        os.killpg(redis_server.pid, signal.SIGKILL)
        redis_server.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        requests.get(f"{url}/login/", timeout=30)
    except requests.RequestException:
        return False
    return True


def login(url: str, username: str, password: str) -> requests.Session:
    """A browser-like session logged in through the login form (with its CSRF)."""
    session = requests.Session()
    session.get(f"{url}/login/", timeout=10)
    token = session.cookies["csrftoken"]
    response = session.post(
        f"{url}/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": token},
        headers={"Referer": f"{url}/login/"},
        timeout=10,
    )
    assert response.url.rstrip("/") != f"{url}/login", response.text[:500]
    return session


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def _use_broker(app, url: str) -> str:
    """Point this process's Celery app at ``url``, dropping pooled connections."""
    from kombu import pools

    previous = app.conf.broker_url
    app.conf.broker_url = app.conf.broker_read_url = app.conf.broker_write_url = url
    # Drop the pools rather than close them: kombu's global producer pools may
    # still hold the old ones, and a closed pool fails every later send.
    app._pool = None
    app.amqp._producer_pool = None
    pools.reset()
    return previous
