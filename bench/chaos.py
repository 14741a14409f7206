"""Chaos and load on this machine: faults injected into a real platform, what they
lost and duplicated, and page latencies under 50 concurrent browsers.

    .venv/bin/python bench/chaos.py [--quick] [--only R1,R2,R3,R4,R5,L,H] [--keep]

Everything runs against processes this script starts and owns: a PostgreSQL cluster
made with ``initdb`` in a temporary folder on a free port, a redis-server on a free
port, Celery workers (prefork, one child) for the ``gpu`` and ``control`` queues,
beat, and gunicorn. The machine's shared PostgreSQL (5432) and Redis (6379) are never
touched. Jobs run the untrained tiny SD-shaped model, so they take well under a second.

Each fault line is counted from the database rows and the PNG files on disk, not from
the script's own bookkeeping: a job is *lost* when it did not end in the status it
should have (or a stored image's file is missing), *duplicated* when it has more image
rows than it asked for or more PNG files under ``generations/<id>/`` than rows (files
of a superseded attempt left behind count). Re-executions (``attempt`` > 1) are
reported apart: a job run twice but stored once is recovery, not duplication.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_BIN = Path(os.environ.get("XRAY_PG_BIN", "/usr/lib/postgresql/15/bin"))
TOKENIZER_DIR = Path(
    os.environ.get("XRAY_CLIP_TOKENIZER", ROOT.parent / "shared/models/clip-tokenizer")
)
SHARED_PORTS = {5432, 6379}
PREFIX = "chaos-"
PASSWORD = "chaos-pass-123"
# Short lease and reconcile periods, so each recovery takes seconds, not minutes.
JOB_SETTINGS = {
    "XRAY_JOB_LEASE_S": "4",
    "XRAY_JOB_HEARTBEAT_S": "1",
    "XRAY_RECONCILE_INTERVAL_S": "2",
    "XRAY_RECONCILE_AFTER_S": "2",
    "XRAY_PROGRESS_INTERVAL_S": "0.1",
}
SOFT_LIMIT_S, HARD_LIMIT_S = 4, 10
WEB_WORKERS, WEB_THREADS = 3, 4
READY_TIMEOUT_S = 120
JOBS_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 30
MAX_POLLS = 120  # status polls per submitted job (1 to 3 s apart)
MAX_ROUNDS = 200  # submit-poll-history rounds per client
PAGES = ["login POST", "generate GET", "generate POST", "status", "history"]
TARGET_PAGE_P95_MS = 500
TARGET_HISTORY_P95_MS = 100
# Loaded by the hard-limit worker only (PYTHONPATH): its pool child ignores the soft
# limit's signal, like a job stuck in native code, so the hard limit has to act.
IGNORE_SOFT_LIMIT = '''"""chaos.py: the child ignores SIGUSR1 (the soft time limit)."""
import signal

from celery.signals import task_prerun


@task_prerun.connect
def ignore_soft_time_limits(**_):
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
'''


@dataclass(frozen=True)
class Sizes:
    kill_jobs: int
    kills: int
    flush_jobs: int
    restart_jobs: int
    restart_clients: int
    limit_others: int
    cancel_jobs: int
    load_clients: int
    load_s: int
    history_rows: int
    history_samples: int


FULL = Sizes(30, 3, 20, 20, 10, 5, 10, 50, 60, 100_000, 20)
QUICK = Sizes(10, 1, 8, 8, 5, 3, 10, 10, 15, 10_000, 10)


# --- small helpers -------------------------------------------------------------------


def free_port() -> int:
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in SHARED_PORTS:
            return port


def wait_until(check: Callable[[], object], timeout: float, poll: float = 0.05) -> bool:
    """Poll ``check`` until it is truthy; False when ``timeout`` ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(poll)
    return False


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def cpu_description() -> str:
    """Model name, microarchitecture (AMD families) and the widest SIMD extension."""
    text = Path("/proc/cpuinfo").read_text()

    def first(key: str) -> str:
        found = re.search(rf"^{key}\s*:\s*(.*)$", text, re.MULTILINE)
        return found.group(1).strip() if found else ""

    flags = set(first("flags").split())
    family, model = int(first("cpu family") or 0), int(first("model") or 0)
    simd = next(
        (
            name
            for flag, name in [
                ("amx_bf16", "AMX-BF16"),
                ("avx512_bf16", "AVX512-BF16"),
                ("avx512f", "AVX512"),
                ("avx2", "AVX2"),
            ]
            if flag in flags
        ),
        "SSE",
    )
    arch = amd_generation(family, model) if first("vendor_id") == "AuthenticAMD" else ""
    detail = ", ".join(part for part in (arch, simd) if part)
    return (
        f"{first('model name')} ({detail}), family {family} model {model}, "
        f"{os.cpu_count()} cores"
    )


def amd_generation(family: int, model: int) -> str:
    if family == 26:
        return "Zen 5"
    if family == 25:
        zen4 = 0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or 0xA0 <= model <= 0xAF
        return "Zen 4" if zen4 else "Zen 3"
    if family == 23:
        return "Zen 2" if model >= 0x30 else "Zen/Zen+"
    return ""


# --- the processes this script owns ------------------------------------------------


class Postgres:
    """A private cluster: initdb in a temporary folder, its own port and socket.

    initdb refuses to run as root; then the cluster belongs to the `postgres` user.
    """

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="xray-chaos-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/xray"

    def _run(self, *args: str, timeout: float = 120) -> None:
        command = list(args)
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        # stdout to a file: pg_ctl's postmaster inherits it and would hold a pipe open.
        with (self.folder / "pg_ctl.out").open("ab") as out:
            subprocess.run(command, check=True, stdout=out, stderr=out, timeout=timeout)

    def create(self) -> None:
        self._run(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            "-c max_connections=200"
        )
        self._run(*self._ctl("start"), "-o", options)
        self._run(
            str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
            "-U", "postgres", "xray",
        )  # fmt: skip

    def _ctl(self, action: str, *extra: str) -> list[str]:
        pg_ctl = str(PG_BIN / "pg_ctl")
        data, log = str(self.data), str(self.log)
        return [pg_ctl, "-D", data, "-l", log, "-w", "-t", "60", *extra, action]

    def postmaster_pid(self) -> int:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return -1

    def restart(self) -> None:
        self._run(*self._ctl("restart", "-m", "fast"))

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self._run(*self._ctl("stop", "-m", "immediate"), timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


class RedisServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        self.process = subprocess.Popen(
            [*command, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.client = redis.Redis.from_url(self.url)
        if not wait_until(self._pings, 10):
            raise RuntimeError(f"redis-server on port {self.port} did not answer")

    def _pings(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.ConnectionError:
            return False

    def queue_length(self, queue: str) -> int:
        return int(self.client.llen(queue))

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@dataclass
class Stack:
    """Workers, beat and gunicorn, each in its own process group (killed whole)."""

    folder: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    url: str = ""

    def start_worker(self, queue: str, **env: str) -> None:
        name = f"worker-{queue}"
        log = self.folder / f"{name}.log"
        seen = log.stat().st_size if log.exists() else 0
        command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker"]
        command += ["-Q", f"{PREFIX}{queue}", "-c", "1", "--pool", "prefork"]
        command += ["-n", f"{PREFIX}{queue}@%h", "--loglevel", "INFO"]
        command += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
        process = self._start(name, command, env)

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{self.log_tail(name)}")
            return "ready." in log.read_text(errors="replace")[seen:]

        if not wait_until(ready, READY_TIMEOUT_S, poll=0.1):
            raise RuntimeError(f"{name} not ready in {READY_TIMEOUT_S} s")

    def start_beat(self) -> None:
        schedule = str(self.folder / "beat-schedule")
        command = [sys.executable, "-m", "celery", "-A", "worker.app", "beat"]
        self._start("beat", [*command, "-s", schedule, "-l", "INFO"], {})

    def start_web(self) -> str:
        port = free_port()
        command = [sys.executable, "-m", "gunicorn", "xrayweb.wsgi"]
        command += ["-w", str(WEB_WORKERS), "--threads", str(WEB_THREADS)]
        command += ["-k", "gthread", "-b", f"127.0.0.1:{port}", "--timeout", "60"]
        self._start("web", command, {"XRAY_LOG_LEVEL": "WARNING"})
        self.url = f"http://127.0.0.1:{port}"
        if not wait_until(self._web_answers, READY_TIMEOUT_S, poll=0.2):
            raise RuntimeError(f"gunicorn did not answer:\n{self.log_tail('web')}")
        return self.url

    def _web_answers(self) -> bool:
        try:
            return requests.get(f"{self.url}/login/", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def _start(self, name: str, command: list[str], env: dict) -> subprocess.Popen:
        with (self.folder / f"{name}.log").open("ab") as out:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**self.env, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, pool children too
            )
        self.processes[name] = process
        return process

    def log_tail(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.kill(name)


# --- Django side: the world, submits, and the counts ----------------------------------


def django_env(folder: Path, database_url: str, broker: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker,
        "XRAY_QUEUE_PREFIX": PREFIX,
        "XRAY_MEDIA_ROOT": str(folder / "media"),
        "XRAY_TINY_MODEL_DIR": str(folder / "tiny-sd"),
        "XRAY_MINI_MODEL_DIR": str(folder / "no-mini-model"),
        "XRAY_BASE_MODEL": "",
        "XRAY_VAR_DIR": str(folder / "var"),
        "XRAY_STORAGE": "local",
        "XRAY_MODEL_CACHE": str(folder / "model-cache"),
        "XRAY_TORCH_THREADS": "1",
        "XRAY_QUOTA_MAX_QUEUED": "100000",
        "XRAY_JOB_SOFT_LIMIT_S": "1800",
        "XRAY_JOB_HARD_LIMIT_S": "1900",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "XRAY_DEBUG": "0",
        "XRAY_HTTPS": "0",  # loopback http
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "DJANGO_SETTINGS_MODULE": "xrayweb.settings",
        **JOB_SETTINGS,
    }


def db_retry(read: Callable[[], object], timeout: float = 60) -> object:
    """Run a read, reconnecting while the database restarts."""
    from django.db import InterfaceError, OperationalError, connection

    deadline = time.monotonic() + timeout
    while True:
        try:
            return read()
        except (OperationalError, InterfaceError):
            connection.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def make_world(folder: Path, users: int):
    """The tiny model as a model version, and named users with a shared password."""
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import User

    from generator.tiny import build_tiny_pipeline, load_clip_tokenizer
    from xrayweb.generations.models import ModelKind, ModelVersion

    tiny = folder / "tiny-sd"
    pipe = build_tiny_pipeline(seed=0, tokenizer=load_clip_tokenizer(TOKENIZER_DIR))
    pipe.save_pretrained(str(tiny))
    version = ModelVersion.objects.create(
        name="tiny-untrained", kind=ModelKind.TINY, source=str(tiny)
    )
    hashed = make_password(PASSWORD)  # one hash: 1M PBKDF2 rounds each would take long
    names = ["faults", "historian", *(f"client{i:02d}" for i in range(users))]
    User.objects.bulk_create([User(username=name, password=hashed) for name in names])
    return version


def user(name: str):
    from django.contrib.auth.models import User

    return User.objects.get(username=name)


def submit(version, *, seed: int, steps: int, size: int = 64, owner: str = "faults"):
    from generator.sampling import GenerationParams
    from xrayweb.generations import services

    params = GenerationParams(
        prompt="Clear lungs.", seed=seed, steps=steps, width=size, height=size
    )
    return services.generation_request_create(
        user=user(owner), params=params, model_version=version
    ).pk


def rows(pks: list[int]) -> dict[int, dict]:
    from xrayweb.generations.models import GenerationRequest

    def read() -> dict[int, dict]:
        fields = ("pk", "status", "attempt", "num_images", "error", "progress_step")
        found = GenerationRequest.objects.filter(pk__in=pks).values(*fields)
        return {row["pk"]: row for row in found}

    return db_retry(read)


def ended(pks: list[int]) -> int:
    from xrayweb.jobs.models import TERMINAL_STATUSES

    return sum(row["status"] in TERMINAL_STATUSES for row in rows(pks).values())


def wait_ended(pks: list[int], timeout: float = JOBS_TIMEOUT_S) -> bool:
    return wait_until(lambda: ended(pks) == len(pks), timeout, poll=0.2)


def running(pks: list[int], *, min_step: int = 2, skip: set[int] = frozenset()):
    """A job of ``pks`` running past ``min_step``: (pk, attempt), or None."""
    for row in rows(pks).values():
        past = row["status"] == "running" and row["progress_step"] >= min_step
        if past and row["pk"] not in skip:
            return row["pk"], row["attempt"]
    return None


@dataclass
class Outcome:
    """Counted from rows and files: jobs not ended as expected, jobs stored twice."""

    jobs: int
    lost: list[int]
    duplicated: list[int]
    reexecuted: int
    details: list[str]

    def text(self) -> str:
        return (
            f"lost {len(self.lost)}, duplicated {len(self.duplicated)}, "
            f"re-executed {self.reexecuted} (attempt > 1)"
        )


def outcome(expected: dict[int, str]) -> Outcome:
    """Compare each job's status with ``expected`` and its stored images and PNG files
    with what it asked for (nothing for a job that should not succeed)."""
    from django.conf import settings

    from xrayweb.generations.models import GenerationImage

    found = rows(list(expected))
    images: dict[int, list[str]] = defaultdict(list)
    for request_id, name in db_retry(
        lambda: list(
            GenerationImage.objects.filter(request_id__in=list(expected)).values_list(
                "request_id", "image"
            )
        )
    ):
        images[request_id].append(name)
    media = Path(settings.MEDIA_ROOT)
    result = Outcome(len(expected), [], [], 0, [])
    for pk, status in expected.items():
        row = found.get(pk)
        stored = images[pk]
        files = sorted((media / "generations" / str(pk)).rglob("*.png"))
        missing = [name for name in stored if not (media / name).is_file()]
        wanted = row["num_images"] if row and status == "succeeded" else 0
        if row is None or row["status"] != status or missing or len(stored) < wanted:
            result.lost.append(pk)
        if len(stored) > wanted or len(files) > len(stored) - len(missing):
            result.duplicated.append(pk)
        if row is not None:
            result.reexecuted += max(row["attempt"] - 1, 0)
        if pk in result.lost or pk in result.duplicated:
            state = f"{row['status']}, attempt {row['attempt']}" if row else "no row"
            error = f", error {row['error']!r}" if row and row["error"] else ""
            result.details.append(
                f"    job {pk}: expected {status}, {state}{error}, "
                f"{len(stored)} image rows ({len(missing)} without file), "
                f"{len(files)} PNG files"
            )
    return result


def orphan_files() -> list[str]:
    """PNG files under generations/ that no image row names."""
    from django.conf import settings

    from xrayweb.generations.models import GenerationImage

    media = Path(settings.MEDIA_ROOT)
    named = set(GenerationImage.objects.values_list("image", flat=True))
    on_disk = {
        str(path.relative_to(media)) for path in (media / "generations").rglob("*.png")
    }
    return sorted(on_disk - named)


# --- browsers ------------------------------------------------------------------------


class Stats:
    """Latencies and status codes per page, shared by client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.codes: dict[str, Counter] = defaultdict(Counter)
        self.submitted: list[int] = []
        self.form_errors = 0

    def record(self, page: str, seconds: float, code: int | str) -> None:
        with self.lock:
            self.codes[page][code] += 1
            if isinstance(code, int):
                self.seconds[page].append(seconds)

    def requests(self) -> int:
        return sum(sum(codes.values()) for codes in self.codes.values())

    def errors(self) -> Counter:
        """Responses other than 200 and 302, and connection errors, by code."""
        total: Counter = Counter()
        for codes in self.codes.values():
            for code, count in codes.items():
                if code not in (200, 302):
                    total[code] += count
        return total

    def server_errors(self) -> int:
        """5xx responses; a connection error is no response and is counted apart."""
        return sum(
            count
            for code, count in self.errors().items()
            if isinstance(code, int) and code >= 500
        )

    def connection_errors(self) -> int:
        return sum(
            count for code, count in self.errors().items() if not isinstance(code, int)
        )

    def errors_text(self) -> str:
        errors = self.errors()
        if not errors:
            return "none"
        return ", ".join(
            f"{code} x{count} ({self._pages_with(code)})"
            for code, count in sorted(errors.items(), key=lambda item: str(item[0]))
        )

    def _pages_with(self, code: int | str) -> str:
        return ", ".join(page for page, codes in self.codes.items() if codes[code])

    def page_line(self, page: str) -> str:
        values = self.seconds.get(page, [])
        if not values:
            return f"{page}: no responses"
        p50, p95, p99 = (percentile(values, q) for q in (50, 95, 99))
        return (
            f"{page}: n {len(values)}, p50 {ms(p50)} ms, p95 {ms(p95)} ms, "
            f"p99 {ms(p99)} ms"
        )

    def p95(self, page: str) -> float | None:
        values = self.seconds.get(page)
        return percentile(values, 95) if values else None


def timed(stats: Stats, page: str, call: Callable, *args, **kwargs):
    started = time.perf_counter()
    try:
        response = call(*args, timeout=REQUEST_TIMEOUT_S, **kwargs)
    except requests.RequestException as exc:
        stats.record(page, time.perf_counter() - started, type(exc).__name__)
        return None
    stats.record(page, time.perf_counter() - started, response.status_code)
    return response


def browser_login(url: str, username: str, stats: Stats) -> requests.Session | None:
    """Log in through the login form with its CSRF token, like a browser."""
    session = requests.Session()
    timed(stats, "login GET", session.get, f"{url}/login/")
    token = session.cookies.get("csrftoken", "")
    form = {"username": username, "password": PASSWORD, "csrfmiddlewaretoken": token}
    response = timed(
        stats, "login POST", session.post, f"{url}/login/", data=form,
        allow_redirects=False,
    )  # fmt: skip
    return session if response is not None and response.status_code == 302 else None


def generation_form(version_pk: int) -> dict[str, str]:
    return {
        "prompt": "Clear lungs. No pleural effusion.",
        "negative_prompt": "",
        "case": "",
        "model_version": str(version_pk),
        "seed": "",
        "steps": "4",
        "guidance_scale": "7.5",
        "scheduler": "dpmpp",
        "width": "64",
        "height": "64",
        "num_images": "1",
        "lora_scale": "1.0",
    }


def browse(
    session: requests.Session, url: str, form: dict, stats: Stats, deadline: float
) -> None:
    """Submit through the form, poll the status fragment until the job ends (as
    static/xrayweb.js does), open the history; again until ``deadline``."""
    for _ in range(MAX_ROUNDS):
        if time.monotonic() >= deadline:
            return
        timed(stats, "generate GET", session.get, f"{url}/")
        data = {**form, "csrfmiddlewaretoken": session.cookies.get("csrftoken", "")}
        response = timed(
            stats, "generate POST", session.post, f"{url}/", data=data,
            allow_redirects=False,
        )  # fmt: skip
        found = re.search(r"/requests/(\d+)/$", _location(response))
        if found:
            pk = int(found.group(1))
            with stats.lock:
                stats.submitted.append(pk)
            timed(stats, "detail", session.get, f"{url}/requests/{pk}/")
            _poll(session, f"{url}/requests/{pk}/status/", stats, deadline)
        elif response is not None and response.status_code == 200:
            with stats.lock:
                stats.form_errors += 1
        timed(stats, "history", session.get, f"{url}/history/")
        if not found:
            time.sleep(1)


def _location(response) -> str:
    if response is None or response.status_code != 302:
        return ""
    return response.headers.get("Location", "")


def _poll(session, status_url: str, stats: Stats, deadline: float) -> None:
    """Poll as static/xrayweb.js does: after the delay the last fragment's
    data-poll-after asks for (a second at first)."""
    delay = 1.0
    for _ in range(MAX_POLLS):
        time.sleep(delay)
        if time.monotonic() >= deadline:
            return
        response = timed(stats, "status", session.get, status_url)
        ok = response is not None and response.status_code == 200
        if ok and "data-terminal" in response.text:
            return
        found = re.search(r'data-poll-after="(\d+)"', response.text if ok else "")
        delay = int(found.group(1)) / 1000 if found else 1.0


def run_browsers(
    url: str, names: list[str], form: dict, seconds: float, stats: Stats
) -> tuple[list[threading.Thread], float]:
    """Log every user in at once, then start one browsing thread each; the threads
    and the monotonic time they stop."""
    sessions: list[requests.Session | None] = [None] * len(names)

    def log_in(index: int) -> None:
        sessions[index] = browser_login(url, names[index], stats)

    logins = [threading.Thread(target=log_in, args=(i,)) for i in range(len(names))]
    for thread in logins:
        thread.start()
    for thread in logins:
        thread.join(timeout=REQUEST_TIMEOUT_S * 3)
    deadline = time.monotonic() + seconds
    threads = [
        threading.Thread(target=browse, args=(s, url, form, stats, deadline))
        for s in sessions
        if s is not None
    ]
    # Spread over one poll period, as independent browsers would be, rather than all
    # released in the same millisecond.
    for thread in threads:
        thread.start()
        time.sleep(1 / len(threads))
    return threads, deadline


def join_all(threads: list[threading.Thread], deadline: float) -> None:
    for thread in threads:
        thread.join(timeout=max(1.0, deadline - time.monotonic() + REQUEST_TIMEOUT_S))


# --- where the CPU went --------------------------------------------------------------


def cpu_ticks() -> dict[int, tuple[int, int, int]]:
    """Every process: (session id, parent id, user + system clock ticks)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])
        found[int(entry.name)] = (int(fields[3]), int(fields[1]), ticks)
    return found


def cpu_split(stack: Stack, pg: Postgres, before: dict, after: dict) -> str:
    """CPU seconds between two snapshots, by owner: each stack process group, the
    private cluster, this script, and everything else on the machine."""
    hz = os.sysconf("SC_CLK_TCK")
    groups = {process.pid: name for name, process in stack.processes.items()}
    postmaster = pg.postmaster_pid()
    spent: Counter = Counter()
    for pid, (sid, ppid, ticks) in after.items():
        used = ticks - before.get(pid, (sid, ppid, 0))[2]
        if sid in groups:
            owner = groups[sid]
        elif postmaster in (pid, ppid):
            owner = "postgres"
        elif pid == os.getpid():
            owner = "bench"
        else:
            owner = "rest of the machine"
        spent[owner] += used / hz
    return ", ".join(f"{name} {seconds:.0f}" for name, seconds in spent.most_common())


# --- the faults ----------------------------------------------------------------------


@dataclass
class Bench:
    stack: Stack
    broker: RedisServer
    pg: Postgres
    version: object
    sizes: Sizes
    failures: list[str] = field(default_factory=list)
    seed: int = 0

    def next_seed(self) -> int:
        self.seed += 1
        return self.seed

    def jobs(self, count: int, *, steps: int, size: int = 64) -> list[int]:
        return [
            submit(self.version, seed=self.next_seed(), steps=steps, size=size)
            for _ in range(count)
        ]

    def report(self, line: str, result: Outcome, extra: list[str] = ()) -> None:
        print(line, flush=True)
        for detail in [*result.details, *extra]:
            print(detail, flush=True)
        if result.lost or result.duplicated:
            self.failures.append(line.split(":")[0])

    def restart_worker(self, **env: str) -> None:
        if "worker-gpu" in self.stack.processes:
            self.stack.kill("worker-gpu", signal.SIGTERM)
        self.stack.start_worker("gpu", **env)


def fault_kill(bench: Bench) -> None:
    """R1: SIGKILL the gpu worker (parent and child) mid-job, several times."""
    n, kills = bench.sizes.kill_jobs, bench.sizes.kills
    pks = bench.jobs(n, steps=40)
    started = time.monotonic()
    back: list[float] = []
    killed: set[int] = set()
    last_kill = started
    for k in range(kills):
        wait_until(lambda k=k: ended(pks) >= k * n // (kills + 1), 120, poll=0.2)
        victim = None

        def find(killed=killed) -> bool:
            nonlocal victim
            victim = running(pks, skip=killed)
            return victim is not None

        if not wait_until(find, 120):
            print(f"R1 kill {k + 1}: no job of the batch was running", flush=True)
            break
        pk, attempt = victim
        bench.stack.kill("worker-gpu")
        last_kill = time.monotonic()
        killed.add(pk)
        bench.stack.start_worker("gpu")

        def again(pk=pk, attempt=attempt) -> bool:
            row = rows([pk])[pk]
            return row["attempt"] > attempt or row["status"] != "running"

        wait_until(again, 120, poll=0.1)
        back.append(time.monotonic() - last_kill)
    done = wait_ended(pks)
    drained = time.monotonic() - last_kill
    result = outcome(dict.fromkeys(pks, "succeeded"))
    worst = max(back) if back else float("nan")
    line = (
        f"R1 worker SIGKILL x{len(killed)} during {n} jobs: {result.text()}, "
        f"recovered in {worst:.1f} s (kill to the killed job claimed again, worst; "
        f"worker restart included), all ended {drained:.0f} s after the last kill"
    )
    bench.report(line, result, [] if done else ["    not every job ended in time"])


def fault_flush(bench: Bench) -> None:
    """R2: FLUSHALL the broker while jobs wait in it and in the database."""
    n = bench.sizes.flush_jobs
    pks = bench.jobs(n, steps=20)
    queue = f"{PREFIX}gpu"
    wait_until(lambda: ended(pks) >= 2 and bench.broker.queue_length(queue) > 0, 120)
    in_broker = bench.broker.queue_length(queue)
    before = ended(pks)
    bench.broker.client.flushall()
    flushed = time.monotonic()
    wait_until(lambda: ended(pks) > before + 1, 120, poll=0.1)
    resumed = time.monotonic() - flushed
    done = wait_ended(pks)
    drained = time.monotonic() - flushed
    result = outcome(dict.fromkeys(pks, "succeeded"))
    line = (
        f"R2 broker FLUSHALL with {n - before} of {n} jobs not ended "
        f"({in_broker} in Redis): {result.text()}, recovered in {resumed:.1f} s (flush "
        f"to the next job done after the one running), all ended {drained:.0f} s "
        "after the flush"
    )
    bench.report(line, result, [] if done else ["    not every job ended in time"])


def fault_restart(bench: Bench) -> None:
    """R3: pg_ctl restart with jobs running and browsers submitting and polling."""
    n, clients = bench.sizes.restart_jobs, bench.sizes.restart_clients
    pks = bench.jobs(n, steps=150)
    stats = Stats()
    names = [f"client{i:02d}" for i in range(clients)]
    form = generation_form(bench.version.pk)
    threads, deadline = run_browsers(bench.stack.url, names, form, 30, stats)
    wait_until(lambda: running(pks) is not None, 60)
    time.sleep(5)
    before = Counter(stats.errors())
    at_restart = Counter(row["status"] for row in rows(pks + stats.submitted).values())
    restart_began = time.monotonic()
    bench.pg.restart()
    restart_s = time.monotonic() - restart_began
    first_ok = _first_history_ok(bench.stack.url, restart_began)
    join_all(threads, deadline)
    submitted = list(stats.submitted)
    done = wait_ended(pks + submitted)
    expected = dict.fromkeys(pks + submitted, "succeeded")
    result = outcome(expected)
    unredirected = _rows_without_redirect(names, submitted)
    during = stats.errors() - before
    line = (
        f"R3 PostgreSQL restart (pg_ctl -m fast, {restart_s:.1f} s) with jobs "
        f"running ({at_restart['running']} running, {at_restart['queued']} queued), "
        f"{len(threads)} browsers: {result.text()} over {n} + "
        f"{len(submitted)} web jobs, {unredirected} rows without a redirect; web "
        f"{stats.requests()} requests, errors {stats.errors_text()} "
        f"({sum(during.values())} after the restart began); recovered in "
        f"{first_ok:.1f} s (restart to the first history 200)"
    )
    bench.report(line, result, [] if done else ["    not every job ended in time"])
    if unredirected:
        bench.failures.append("R3 rows without a redirect")


def _first_history_ok(url: str, since: float) -> float:
    """Seconds from ``since`` until a fresh login and history page answer 200."""
    stats = Stats()

    def ok() -> bool:
        session = browser_login(url, "faults", stats)
        if session is None:
            return False
        response = timed(stats, "history", session.get, f"{url}/history/")
        return response is not None and response.status_code == 200

    wait_until(ok, 120, poll=0.2)
    return time.monotonic() - since


def _rows_without_redirect(names: list[str], submitted: list[int]) -> int:
    """Requests of the browser users that no POST answered with a redirect to."""
    from xrayweb.generations.models import GenerationRequest

    mine = GenerationRequest.objects.filter(user__username__in=names)
    return db_retry(lambda: mine.exclude(pk__in=submitted).count())


def fault_hard_limit(bench: Bench) -> None:
    """R4: a job past a small hard limit ends failed naming it; the next ones run."""
    from xrayweb.jobs.lifecycle import TIME_LIMIT

    stuck = bench.stack.folder / "stuck"
    stuck.mkdir(exist_ok=True)
    (stuck / "sitecustomize.py").write_text(IGNORE_SOFT_LIMIT)
    limits = {
        "XRAY_JOB_SOFT_LIMIT_S": str(SOFT_LIMIT_S),
        "XRAY_JOB_HARD_LIMIT_S": str(HARD_LIMIT_S),
        "PYTHONPATH": str(stuck),
    }
    bench.restart_worker(**limits)
    long = submit(bench.version, seed=bench.next_seed(), steps=150, size=512)
    others = bench.jobs(bench.sizes.limit_others, steps=4)
    done = wait_ended([long, *others], 120)
    bench.restart_worker()
    row = rows([long])[long]
    result = outcome({long: "failed", **dict.fromkeys(others, "succeeded")})
    message = TIME_LIMIT.format(limit=HARD_LIMIT_S)
    named = row["error"] == message
    if not named and long not in result.lost:
        result.lost.append(long)
    line = (
        f"R4 hard limit {HARD_LIMIT_S} s (soft {SOFT_LIMIT_S} s ignored by the "
        f"child): job {row['status']}, attempt {row['attempt']}, error "
        f"{row['error']!r} ({'names' if named else 'does NOT name'} the limit); "
        f"with {len(others)} jobs after it: {result.text()}"
    )
    bench.report(line, result, [] if done else ["    not every job ended in time"])


def fault_cancel(bench: Bench) -> None:
    """R5: cancel running and queued jobs at once through the web's cancel form."""
    count = bench.sizes.cancel_jobs
    pks = bench.jobs(2 * count, steps=100)
    victim = None

    def find() -> bool:
        nonlocal victim
        victim = running(pks)
        return victim is not None

    wait_until(find, 120)
    queued = [pk for pk, row in rows(pks).items() if row["status"] == "queued"]
    # The running job, then every other queued job from the back of the queue.
    chosen = ([victim[0]] if victim else []) + sorted(queued, reverse=True)[::2]
    chosen = chosen[:count]
    stats = Stats()
    session = browser_login(bench.stack.url, "faults", stats)
    gate = threading.Barrier(len(chosen))

    def cancel(pk: int) -> None:
        browser = requests.Session()
        browser.cookies.update(session.cookies)
        data = {"csrfmiddlewaretoken": browser.cookies.get("csrftoken", "")}
        gate.wait(timeout=30)
        timed(
            stats, "cancel POST", browser.post,
            f"{bench.stack.url}/requests/{pk}/cancel/", data=data,
            allow_redirects=False,
        )  # fmt: skip

    threads = [threading.Thread(target=cancel, args=(pk,)) for pk in chosen]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=REQUEST_TIMEOUT_S * 2)
    wait_until(lambda: ended(chosen) == len(chosen), 60, poll=0.1)
    confirmed = time.monotonic() - started
    done = wait_ended(pks)
    expected = {pk: "cancelled" if pk in chosen else "succeeded" for pk in pks}
    result = outcome(expected)
    was_running = sum(pk == (victim or (None,))[0] for pk in chosen)
    line = (
        f"R5 cancel storm: {len(chosen)} jobs ({was_running} running) cancelled at "
        f"once among {len(pks)}: {result.text()}; cancel POSTs "
        f"{dict(stats.codes['cancel POST'])}; all cancelled {confirmed:.1f} s after "
        f"the storm; {len(pks) - len(chosen)} others expected to succeed"
    )
    bench.report(line, result, [] if done else ["    not every job ended in time"])


# --- load and history ----------------------------------------------------------------


def load(bench: Bench) -> None:
    """L: concurrent logged-in browsers for a fixed time; latencies per page."""
    sizes = bench.sizes
    names = [f"client{i:02d}" for i in range(sizes.load_clients)]
    stats = Stats()
    form = generation_form(bench.version.pk)
    began = time.monotonic()
    threads, deadline = run_browsers(bench.stack.url, names, form, sizes.load_s, stats)
    logged_in_s = time.monotonic() - began
    ticks = cpu_ticks()
    time.sleep(sizes.load_s / 2)
    try:
        probe = mid_load_probe()
    except Exception as exc:  # a diagnostic; its failure must not end the bench
        probe = f"probe failed: {type(exc).__name__}: {exc}"
    join_all(threads, deadline)
    cpu = cpu_split(bench.stack, bench.pg, ticks, cpu_ticks())
    submitted = list(stats.submitted)
    done = wait_ended(submitted, 180)
    result = outcome(dict.fromkeys(submitted, "succeeded"))
    print(
        f"L load: {len(threads)} of {len(names)} users logged in ({logged_in_s:.0f} s "
        f"for all logins at once), then {sizes.load_s} s of browsing on gunicorn "
        f"({WEB_WORKERS} workers x {WEB_THREADS} threads): {stats.requests()} "
        f"requests, errors {stats.errors_text()}, {stats.form_errors} form errors; "
        f"{len(submitted)} jobs submitted: {result.text()}",
        flush=True,
    )
    for detail in result.details[:20] + ([] if done else ["    jobs still running"]):
        print(detail)
    for page in [*PAGES, "detail"]:
        print(f"L   {stats.page_line(page)}", flush=True)
    cores = os.cpu_count()
    print(f"L   CPU seconds while browsing ({sizes.load_s} s x {cores} cores): {cpu}")
    print(f"L   at half time: {probe}", flush=True)
    if stats.server_errors():
        bench.failures.append("L 5xx")
    if stats.connection_errors():
        bench.failures.append("L connection errors (no response; not a 5xx)")
    if result.lost or result.duplicated:
        bench.failures.append("L jobs")
    for page in PAGES[1:]:
        p95 = stats.p95(page)
        if p95 is None or p95 * 1000 > TARGET_PAGE_P95_MS:
            bench.failures.append(f"L {page} p95")


def mid_load_probe() -> str:
    """Queries behind one status poll of a waiting job and one dispatch, measured in
    this process against the same database while the load runs."""
    from django.db import connection, transaction
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from xrayweb.generations.models import GenerationRequest
    from xrayweb.jobs import dispatch

    waiting = GenerationRequest.objects.filter(status="queued", enqueued_at=None)
    owners = waiting.values("user").distinct().count()
    job = waiting.select_related("user").order_by("-created_at").first()
    if job is None:
        return f"{owners} users with a job waiting"
    client = Client()
    client.force_login(job.user)
    client.get(f"/requests/{job.pk}/status/")  # warm-up: imports, templates
    with CaptureQueriesContext(connection) as status:
        started = time.perf_counter()
        client.get(f"/requests/{job.pk}/status/")
        status_ms = (time.perf_counter() - started) * 1000
    queue = f"{PREFIX}gpu"
    # Under the dispatch lock, as dispatch() runs it: without it, a dispatcher that
    # sends an owner's last waiting job between fair_order's two reads makes it fail.
    with transaction.atomic(), CaptureQueriesContext(connection) as order:
        started = time.perf_counter()
        dispatch.DispatchLock.objects.filter(queue=queue).update(
            dispatched_at=timezone.now()
        )
        dispatch.fair_order(dispatch.models_on(queue), limit=2)
        order_ms = (time.perf_counter() - started) * 1000
    return (
        f"{owners} users with a job waiting in the database; the status fragment of "
        f"one runs {len(status)} queries ({status_ms:.0f} ms), the dispatcher's fair "
        f"order {len(order)} queries ({order_ms:.0f} ms)"
    )


def history(bench: Bench) -> None:
    """H: the history of a user with many rows, as a table and as a gallery: first
    and deep page, a rare status, a prompt search."""
    from django.db import connection

    rows_wanted = bench.sizes.history_rows
    started = time.monotonic()
    insert_history(bench.version, rows_wanted)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    inserted_s = time.monotonic() - started
    stats = Stats()
    session = browser_login(bench.stack.url, "historian", stats)
    table = f"{bench.stack.url}/history/table/"
    gallery = f"{bench.stack.url}/history/"
    search = f"?prompt=lungs{SEARCHED}"
    pages = {}
    for kind, base in zip(KINDS, (table, gallery), strict=True):
        pages |= {
            f"{kind} first page": base,
            f"{kind} deep page (80 % deep)": deep_url(base, 0.8),
            f"{kind} first page, status=failed (2 % of rows)": f"{base}?status=failed",
            f"{kind} prompt search, 1 % of rows match": f"{base}{search}",
        }
    samples = bench.sizes.history_samples
    for name, url in pages.items():
        for _ in range(2):  # warm-up
            session.get(url, timeout=REQUEST_TIMEOUT_S)
        for _ in range(samples):
            timed(stats, name, session.get, url)
    print(
        f"H history with {rows_wanted:,} rows of one user (inserted in "
        f"{inserted_s:.0f} s), {samples} requests each after 2 warm-up ones",
        flush=True,
    )
    for name, url in pages.items():
        count, sql_ms = query_count(url)
        print(
            f"H   {stats.page_line(name)}; {count} queries, {sql_ms:.0f} ms in SQL",
            flush=True,
        )
        p95 = stats.p95(name)
        if p95 is None or p95 * 1000 > TARGET_HISTORY_P95_MS:
            bench.failures.append(f"H {name} p95")
        if set(stats.codes[name]) - {200}:
            bench.failures.append(f"H {name} errors")
    for page in ("first page", "deep page (80 % deep)"):
        table_p95, gallery_p95 = (stats.p95(f"{kind} {page}") for kind in KINDS)
        if table_p95 and gallery_p95:
            print(f"H   gallery / table p95, {page}: {gallery_p95 / table_p95:.2f}")


KINDS = ("table", "gallery")
SEARCHED = " x"  # ends one prompt in 100 of the history, for the prompt search


def history_prompt(i: int) -> str:
    return f"History row {i}: clear lungs{SEARCHED if i % 100 == 7 else ''}."


def insert_history(version, count: int, batch: int = 5000) -> None:
    """``count`` requests of one user, each succeeded one with an image row (the
    gallery's thumbnails; their files are not written: the page only links them).
    One prompt in 100 ends "lungs x", for the prompt search."""
    from django.utils import timezone

    from xrayweb.generations.models import GenerationImage, GenerationRequest

    owner = user("historian")
    now = timezone.now()
    for start in range(0, count, batch):
        made = GenerationRequest.objects.bulk_create(
            [
                GenerationRequest(
                    user=owner,
                    model_version=version,
                    prompt=history_prompt(i),
                    seed=i,
                    steps=4,
                    guidance_scale=7.5,
                    scheduler="dpmpp",
                    width=64,
                    height=64,
                    status="failed" if i % 50 == 0 else "succeeded",
                    attempt=1,
                    created_at=now - datetime.timedelta(seconds=count - i),
                    finished_at=now - datetime.timedelta(seconds=count - i),
                )
                for i in range(start, min(start + batch, count))
            ]
        )
        GenerationImage.objects.bulk_create(
            GenerationImage(
                request=row, index=0, seed=row.seed, image=f"bench/{row.pk}.png"
            )
            for row in made
            if row.status == "succeeded"
        )


def deep_url(base: str, depth: float) -> str:
    """The history page that starts about ``depth`` of the way into the rows, as an
    "older" link would name it (a keyset cursor)."""
    from xrayweb.generations.models import GenerationRequest
    from xrayweb.generations.selectors import HistoryCursor

    mine = GenerationRequest.objects.filter(user=user("historian"))
    offset = int(mine.count() * depth)
    row = mine.order_by("-created_at", "-id")[offset]
    return f"{base}?before={HistoryCursor.of(row)}"


def query_count(url: str) -> tuple[int, float]:
    """Queries the page runs, and their total time, through Django's test client in
    this process (the same database)."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    client.force_login(user("historian"))
    path = url.split("://", 1)[1].split("/", 1)[1]
    with CaptureQueriesContext(connection) as captured:
        client.get(f"/{path}")
    return len(captured), sum(float(q["time"]) for q in captured) * 1000


# --- main ----------------------------------------------------------------------------


STEPS = {
    "R1": fault_kill,
    "R2": fault_flush,
    "R3": fault_restart,
    "R4": fault_hard_limit,
    "R5": fault_cancel,
    "L": load,
    "H": history,
}


def main() -> int:
    args = parse_args()
    # The bench logs its users in many times in-process: django-axes' audit line for
    # each belongs in a server's log, not between the bench's figures.
    logging.getLogger("axes").setLevel(logging.WARNING)
    sizes = QUICK if args.quick else FULL
    only = [name.strip() for name in args.only.split(",")] if args.only else list(STEPS)
    began = time.monotonic()
    print_header(args, sizes)
    folder = Path(tempfile.mkdtemp(prefix="xray-chaos-"))
    pg = Postgres()
    broker = None
    stack = None
    try:
        pg.create()
        broker = RedisServer()
        env = django_env(folder, pg.url, broker.url)
        os.environ.update(env)
        (folder / "var" / "staticfiles").mkdir(parents=True)
        migrate(env)
        import django

        django.setup()
        version = make_world(folder, max(sizes.load_clients, sizes.restart_clients))
        stack = Stack(folder=folder, env={**os.environ, **env})
        stack.start_worker("control")
        stack.start_beat()
        stack.start_worker("gpu")
        stack.start_web()
        setup_s = time.monotonic() - began
        print(
            f"platform: PostgreSQL 15 on port {pg.port}, redis-server on port "
            f"{broker.port}, folder {folder}; set up in {setup_s:.0f} s",
            flush=True,
        )
        bench = Bench(stack=stack, broker=broker, pg=pg, version=version, sizes=sizes)
        for name in only:
            STEPS[name](bench)
        orphans = db_retry(orphan_files)
        print(f"files without an image row under generations/: {len(orphans)}")
        if orphans:
            bench.failures.append("orphan files")
        print_summary(bench, time.monotonic() - began)
        return 1 if bench.failures else 0
    finally:
        if stack is not None:
            stack.stop_all()
        if broker is not None:
            broker.stop()
        pg.destroy()
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer jobs, short load")
    parser.add_argument("--only", default="", help="comma list of R1..R5, L, H")
    parser.add_argument("--keep", action="store_true", help="keep logs and media")
    return parser.parse_args()


def print_header(args: argparse.Namespace, sizes: Sizes) -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load1, load5, load15 = os.getloadavg()
    mode = "quick" if args.quick else "full"
    print(f"bench/chaos.py {now} ({mode})", flush=True)
    print(f"CPU: {cpu_description()}")
    print(f"load average at start: {load1:.2f} {load5:.2f} {load15:.2f}")
    settings_text = ", ".join(f"{k}={v}" for k, v in JOB_SETTINGS.items())
    nice = os.environ.get("XRAY_WORKER_NICE", "10 (the default)")
    print(
        f"job settings: {settings_text}; tiny model, 1 torch thread per worker, "
        f"jobs at nice {nice}"
    )


def migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--verbosity", "0"],
        cwd=ROOT,
        env={**os.environ, **env},
        check=True,
        timeout=300,
    )


def print_summary(bench: Bench, wall_s: float) -> None:
    if bench.failures:
        print(f"targets missed: {', '.join(bench.failures)}")
    else:
        print("every target met")
    print(f"bench wall time: {wall_s:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
