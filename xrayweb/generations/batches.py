"""Batches on a generation worker: a worker that claimed a request claims the queued
requests that can share its pipeline call, in fair-share order, through the job
lifecycle's claim (each its own attempt, lease, heartbeat and fenced writes).

Batches form where the work is dispatched, from rows in the database: no broker
message is held back. A companion that had a message already sent finds it claimed
when the message arrives, and that delivery does nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.db.models import Q

from xrayweb.generations.models import GenerationRequest
from xrayweb.jobs import dispatch
from xrayweb.jobs.models import Status
from xrayweb.jobs.runtime import Attempt

logger = logging.getLogger(__name__)

# The fields one pipeline call shares (generator.batching.SHARED_FIELDS), plus the
# model; prompts, negative prompts, seeds and image counts may differ.
SHARED_FIELDS = (
    "model_version_id",
    "lora_scale",
    "width",
    "height",
    "steps",
    "scheduler",
    "guidance_scale",
    "deep_cache_interval",
    "token_merging",
    "placement_requested",
)


def compatible_with(request: GenerationRequest, room: int) -> Q:
    """Queued requests that may join ``request``'s pipeline call, ``room`` images
    being left in it."""
    shared = {name: getattr(request, name) for name in SHARED_FIELDS}
    return Q(
        **shared,
        num_images__lte=room,
        status=Status.QUEUED,
        cancel_requested_at__isnull=True,
    ) & ~Q(pk=request.pk)


def companion_candidates(request: GenerationRequest, room: int) -> list[int]:
    """Ids of compatible queued requests in the order they would run: those the
    dispatcher already sent (oldest sending first), then the waiting ones in the
    dispatcher's fair-share order."""
    compatible = compatible_with(request, room)
    sent = GenerationRequest.objects.filter(compatible, enqueued_at__isnull=False)
    first = list(sent.order_by("enqueued_at", "pk").values_list("pk", flat=True))
    waiting = dispatch.fair_order([GenerationRequest], limit=room, where=compatible)
    return first[:room] + [job.pk for job in waiting]


def claim_companions(request: GenerationRequest, batch_images: int) -> list[Attempt]:
    """Claim compatible queued requests until the batch holds ``batch_images``
    images; each claim is the lifecycle's conditional UPDATE, so a request another
    worker took (or a user cancelled) meanwhile is skipped."""
    room = batch_images - request.num_images
    if room <= 0:
        return []
    candidates = companion_candidates(request, room)
    sizes = dict(
        GenerationRequest.objects.filter(pk__in=candidates).values_list(
            "pk", "num_images"
        )
    )
    claimed = []
    for pk in candidates:
        if sizes.get(pk, room + 1) > room:
            continue
        attempt = Attempt.claim(GenerationRequest, pk)
        if attempt is not None:
            claimed.append(attempt)
            room -= sizes[pk]
        if room <= 0:
            break
    return claimed


@dataclass
class Member:
    """One request of a running batch: its attempt, its row, and whether it left
    the batch (cancelled, or another attempt took the job)."""

    attempt: Attempt
    request: GenerationRequest
    dropped: bool = field(default=False)


class BatchProgress:
    """Per-step callback for a batch: each member's progress and lease; a member
    whose cancel was asked for leaves the batch at once (its attempt ends
    cancelled, the others go on). False stops the pipeline once none is left."""

    def __init__(self, members: list[Member]) -> None:
        self.members = members

    def __call__(self, step: int, total: int) -> bool:
        for member in self.live:
            going_on = member.attempt.progress(
                force=step == total, progress_step=step, progress_total=total
            )
            if not going_on:
                member.dropped = True
                member.attempt.stop()  # cancelled; a superseded attempt writes nothing
                logger.info("%s left its batch at step %d", member.attempt.label, step)
        return bool(self.live)

    @property
    def live(self) -> list[Member]:
        return [member for member in self.members if not member.dropped]
