"""The worker-side request class for job tasks: a hard time limit kills the child
process, and this runs in the parent to end the job it was running as failed, with
the limit named, instead of leaving it running until its lease runs out."""

from __future__ import annotations

import logging
import socket

from celery.worker.request import Request

logger = logging.getLogger(__name__)


class JobRequest(Request):
    def on_timeout(self, soft: bool, timeout: float) -> None:
        super().on_timeout(soft, timeout)
        if soft or not self.args:
            return
        from xrayweb.jobs.lifecycle import killed_by_time_limit

        worker = f"{socket.gethostname()}:{self.worker_pid}"
        try:
            killed_by_time_limit(
                task_name=self.name, pk=int(self.args[0]), worker=worker, limit=timeout
            )
        except Exception:  # the lease recovers the job if this write cannot happen
            logger.exception(
                "could not fail %s[%s] after its hard limit", self.name, self.id
            )
