"""Loaded (through PYTHONPATH) only by a test's worker: its pool children ignore the
soft time limit's signal, like a job stuck in native code, so the hard limit acts."""

import signal

from celery.signals import task_prerun


@task_prerun.connect
def ignore_soft_time_limits(**_: object) -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
