"""Per-user limits on generation: queued jobs, a per-request cost cap, a daily budget.

Cost is counted in pixel-steps: steps × width × height × images, which tracks GPU
time across sizes (the UNet's work per step grows with the latent's area).

A synthetic dataset counts as one queued job, whatever its size; the per-request
cap does not apply to it, the daily budget does. Its whole cost is charged when its
first chunk starts (``started_at``); until then a new dataset also reserves the cost
of the owner's datasets that wait to start, so two cannot spend one budget.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import BigIntegerField, Count, F, Q, Sum
from django.db.models.functions import Cast
from django.utils import timezone

from xrayweb.jobs.models import Status, UserQuota

TOO_COSTLY = (
    "This request costs {cost} pixel-steps ({detail}); the limit per request is "
    "{limit}. Use fewer steps, images or a smaller size."
)
TOO_MANY_QUEUED = (
    "You have {count} requests queued or running; the limit is {limit}. Wait for "
    "some to finish or cancel them."
)
OVER_BUDGET = (
    "This request costs {cost} pixel-steps, and you have used {used} of your "
    "{limit} for the last 24 hours."
)


ACTIVE = (Status.QUEUED, Status.RUNNING)
COST_FIELDS = ("params", "prompts_total", "images_per_prompt")


class QuotaExceeded(ValueError):
    """A request over a limit; the message names the cost and the limit."""


def millions(value: int) -> str:
    return f"{value / 1e6:,.1f} million"


def request_cost(*, steps: int, width: int, height: int, images: int) -> int:
    return steps * width * height * images


def limits_of(user: AbstractBaseUser) -> tuple[int, int]:
    """(max queued jobs, daily pixel-steps) for ``user``: their quota or defaults."""
    quota = UserQuota.objects.filter(user=user).first()
    queued = settings.XRAY_QUOTA_MAX_QUEUED
    daily = settings.XRAY_QUOTA_DAILY_PIXEL_STEPS
    if quota is not None and quota.max_queued_jobs is not None:
        queued = quota.max_queued_jobs
    if quota is not None and quota.daily_pixel_steps is not None:
        daily = quota.daily_pixel_steps
    return queued, daily


def generation_quota_check(
    *, user: AbstractBaseUser, steps: int, width: int, height: int, images: int
) -> None:
    """Raise QuotaExceeded for a request over the cap, the queue limit or the
    budget. The caller holds a lock on the user's row, so two submits at once
    cannot both pass on the same remaining budget."""

    cost = request_cost(steps=steps, width=width, height=height, images=images)
    cap = settings.XRAY_MAX_REQUEST_PIXEL_STEPS
    if cost > cap:
        detail = f"{width}×{height} px × {steps} steps × {images} images"
        raise QuotaExceeded(
            TOO_COSTLY.format(cost=millions(cost), detail=detail, limit=millions(cap))
        )
    _within_limits(user, cost, datasets_reserved=False)


def dataset_quota_check(*, user: AbstractBaseUser, cost: int) -> None:
    """Raise QuotaExceeded for a dataset over the queue limit (it counts as one job)
    or the daily budget (its cost plus what is used and reserved). The caller holds
    a lock on the user's row."""
    _within_limits(user, cost, datasets_reserved=True)


def _within_limits(
    user: AbstractBaseUser, cost: int, *, datasets_reserved: bool
) -> None:
    """Three reads: the user's limits, their requests' count and cost, their
    datasets' count and cost (a submit runs this under a lock on the user)."""
    max_queued, daily = limits_of(user)
    requests_active, requests_used = _requests_usage(user)
    datasets_active, datasets_used = _datasets_usage(user, datasets_reserved)
    active = requests_active + datasets_active
    if active >= max_queued:
        raise QuotaExceeded(TOO_MANY_QUEUED.format(count=active, limit=max_queued))
    used = requests_used + datasets_used
    if used + cost > daily:
        raise QuotaExceeded(
            OVER_BUDGET.format(
                cost=millions(cost), used=millions(used), limit=millions(daily)
            )
        )


def _requests_usage(user: AbstractBaseUser) -> tuple[int, int]:
    """The user's generation requests queued or running, and the pixel-steps of
    the last 24 hours (less requests cancelled before they ran), in one query."""
    from xrayweb.generations.models import GenerationRequest

    since = timezone.now() - timedelta(days=1)
    charged = Q(created_at__gte=since) & ~Q(
        status=Status.CANCELLED, started_at__isnull=True
    )
    totals = GenerationRequest.objects.filter(user=user).aggregate(
        active=Count("pk", filter=Q(status__in=ACTIVE)),
        # bigint first: steps × width × height overflows the smallint columns.
        used=Sum(
            Cast("steps", BigIntegerField())
            * F("width")
            * F("height")
            * F("num_images"),
            filter=charged,
        ),
    )
    return totals["active"], int(totals["used"] or 0)


def _datasets_usage(user: AbstractBaseUser, reserved: bool) -> tuple[int, int]:
    """The user's datasets queued or running, and the pixel-steps of those that
    started in the last 24 hours (with ``reserved``, also of those still waiting to
    start), in one query."""
    from xrayweb.datasets.models import Dataset

    since = timezone.now() - timedelta(days=1)
    rows = Dataset.objects.filter(
        Q(status__in=ACTIVE) | Q(started_at__gte=since), created_by=user
    ).only("status", "started_at", *COST_FIELDS)
    active, used = 0, 0
    for dataset in rows:
        waiting = dataset.started_at is None
        active += dataset.status in ACTIVE
        if (not waiting and dataset.started_at >= since) or (reserved and waiting):
            used += dataset.cost
    return active, used
