"""Periodic work for every job kind, run from beat on the `control` queue: recover
jobs whose worker stopped, re-send messages the broker lost, dispatch, and sweep
files that no row points to."""

from __future__ import annotations

import logging

from django.conf import settings

from xrayweb.jobs import dispatch, files, lifecycle

logger = logging.getLogger(__name__)


def reconcile() -> int:
    """Recover, re-send and dispatch every queue; how many jobs were sent."""
    for model in dispatch.job_models():
        lifecycle.recover(model)
        model.settle()
    sent = 0
    for queue in dispatch.queues():
        dispatch.resend_lost(queue)
        sent += dispatch.dispatch(queue)
    return sent


def orphans_sweep() -> int:
    """Delete stored job files that no row names; how many were deleted."""
    deleted = 0
    for model in dispatch.job_models():
        prefix = model.files_prefix
        if prefix:
            referenced = set(model.referenced_files())
            deleted += len(
                files.orphans_delete(prefix, referenced, settings.XRAY_ORPHAN_MIN_AGE_S)
            )
    if deleted:
        logger.info("deleted %d orphan files", deleted)
    return deleted
