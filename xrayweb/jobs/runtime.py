"""A claimed job inside a worker process: its attempt, a heartbeat thread that
renews the lease through phases with no progress, throttled progress writes that
carry the cancel flag back, and database writes that survive a dropped connection."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection

from xrayweb.jobs import lifecycle
from xrayweb.jobs.models import Job, Status

logger = logging.getLogger(__name__)

T = TypeVar("T")
DB_RETRIES = 6
DB_RETRY_DELAY_S = 0.5


def worker_name() -> str:
    """Host and process, so a hard-limit kill can be tied to the attempt it ended."""
    return f"{socket.gethostname()}:{os.getpid()}"


def retrying(write: Callable[[], T]) -> T:
    """Run a database write, reconnecting when the server dropped the connection.

    Only for writes that are safe to repeat: fenced, conditional UPDATEs, or whole
    transactions that roll back on failure.
    """
    for attempt in range(DB_RETRIES):
        try:
            return write()
        except (OperationalError, InterfaceError):
            if attempt == DB_RETRIES - 1 or connection.in_atomic_block:
                raise
            logger.warning("database connection lost; retrying the write")
            connection.close()
            time.sleep(DB_RETRY_DELAY_S * (attempt + 1))
    raise AssertionError("unreachable")


class Attempt:
    """One claimed attempt of a job, used as a context manager around its work."""

    def __init__(
        self, model: type[Job], pk: int, number: int, time_limit_s: float = 0
    ) -> None:
        self.model, self.pk, self.number = model, pk, number
        self.cancel_requested = False
        self.lost = False
        # The claim wrote the lease and the start: the interval counts from it, so a
        # job shorter than one interval writes no progress before it ends.
        self._last_progress = time.monotonic()
        self._deadline = self._last_progress + time_limit_s if time_limit_s else None
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._beat_loop, name=f"heartbeat-{model.__name__}-{pk}", daemon=True
        )

    @classmethod
    def claim(
        cls, model: type[Job], pk: int, time_limit_s: float = 0
    ) -> Attempt | None:
        """Claim the job; ``time_limit_s`` (0: none) is the task's soft time limit,
        which ``progress`` also enforces."""
        number = retrying(lambda: lifecycle.claim(model, pk, worker_name()))
        if number is None:
            logger.info("%s %s not claimed: taken or ended", model.__name__, pk)
            return None
        return cls(model, pk, number, time_limit_s)

    def __enter__(self) -> Attempt:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    @property
    def should_stop(self) -> bool:
        return self.lost or self.cancel_requested

    def _beat_loop(self) -> None:
        try:
            while not self._done.wait(settings.XRAY_JOB_HEARTBEAT_S):
                self.beat()
        finally:
            connection.close()  # this thread's own connection

    def beat(self, **fields: object) -> None:
        """Renew the lease (writing ``fields``); note a cancel or a lost lease."""
        try:
            beat = lifecycle.heartbeat(self.model, self.pk, self.number, **fields)
        except DatabaseError:
            logger.warning("heartbeat of %s %s failed", self.model.__name__, self.pk)
            connection.close()
            return
        self.lost = self.lost or not beat.held
        self.cancel_requested = self.cancel_requested or beat.cancel_requested

    def progress(self, *, force: bool = False, **fields: object) -> bool:
        """Write progress at most every XRAY_PROGRESS_INTERVAL_S. False: stop now
        (cancel was asked for, or another attempt holds the job).

        Past the time limit it raises SoftTimeLimitExceeded itself. The pool's
        signal raises it once, wherever the job happens to be, and library code
        that catches every exception (an optional import, a cache call) can
        swallow it; the next step stops the job then, counted from the claim.
        """
        now = time.monotonic()
        if self._deadline is not None and now >= self._deadline:
            raise SoftTimeLimitExceeded(f"{self.label} ran past its time limit")
        if force or now - self._last_progress >= settings.XRAY_PROGRESS_INTERVAL_S:
            self._last_progress = now
            self.beat(**fields)
        return not self.should_stop

    def finish(self, status: Status, **fields: object) -> bool:
        return retrying(
            lambda: lifecycle.finish(self.model, self.pk, self.number, status, **fields)
        )

    def succeed(self, **fields: object) -> bool:
        return self.finish(Status.SUCCEEDED, **fields)

    def stop(self, error: str = "") -> bool:
        """End early: cancelled if cancel was asked for, else failed with ``error``."""
        return retrying(
            lambda: lifecycle.stop(self.model, self.pk, self.number, error=error)
        )

    def fail(self, exc: BaseException) -> bool:
        """End early because of ``exc``: the user reads a readable sentence, the log
        gets the exception and its traceback (lifecycle.failure_message)."""
        return self.stop(self.failure_message(exc))

    def failure_message(self, exc: BaseException) -> str:
        return lifecycle.failure_message(exc, job=self.label)

    @property
    def label(self) -> str:
        return lifecycle.job_label(self.model, self.pk, self.number)

    def fenced(self):
        return lifecycle.fenced(self.model, self.pk, self.number)
