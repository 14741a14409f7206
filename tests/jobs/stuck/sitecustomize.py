"""Loaded (through PYTHONPATH) only by a test's worker: a job of more than 100 steps
gets stuck at its first step, like one stuck in native code, with the soft time
limit's signal ignored, so only the hard limit can end it. Shorter jobs run."""

import signal
import time

from celery.signals import task_prerun

STUCK_AFTER_STEPS = 100


@task_prerun.connect
def get_long_jobs_stuck(**_: object) -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    from xrayweb.generations import runner

    original = runner.ProgressWriter.__call__
    if getattr(original, "stuck", False):
        return

    def stuck(self: runner.ProgressWriter, step: int, total: int) -> bool:
        while total > STUCK_AFTER_STEPS:
            time.sleep(1)
        return original(self, step, total)

    stuck.stuck = True
    runner.ProgressWriter.__call__ = stuck
