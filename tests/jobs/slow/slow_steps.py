"""Each generation step of a test's worker takes 50 ms more, so a 150-step job
outlasts a time limit of a few seconds on any CPU: the tiny model ran 150 steps at
512² inside 2 s on an idle host."""

import time

from celery.signals import task_prerun

STEP_DELAY_S = 0.05


@task_prerun.connect
def slow_down_generation_steps(**_: object) -> None:
    from xrayweb.generations import runner

    original = runner.ProgressWriter.__call__
    if getattr(original, "slowed", False):
        return

    def slowed(self: runner.ProgressWriter, step: int, total: int) -> bool:
        time.sleep(STEP_DELAY_S)  # a soft limit's signal interrupts it, as it should
        return original(self, step, total)

    slowed.slowed = True
    runner.ProgressWriter.__call__ = slowed
