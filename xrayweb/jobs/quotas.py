"""Per-user limits on generation: queued jobs, a per-request cost cap, a daily budget.

Cost is counted in pixel-steps: steps × width × height × images, which tracks GPU
time across sizes (the UNet's work per step grows with the latent's area).
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import BigIntegerField, F, Sum
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
    from xrayweb.generations.models import GenerationRequest

    cost = request_cost(steps=steps, width=width, height=height, images=images)
    cap = settings.XRAY_MAX_REQUEST_PIXEL_STEPS
    if cost > cap:
        detail = f"{width}×{height} px × {steps} steps × {images} images"
        raise QuotaExceeded(
            TOO_COSTLY.format(cost=millions(cost), detail=detail, limit=millions(cap))
        )
    max_queued, daily = limits_of(user)
    mine = GenerationRequest.objects.filter(user=user)
    active = mine.filter(status__in=[Status.QUEUED, Status.RUNNING]).count()
    if active >= max_queued:
        raise QuotaExceeded(TOO_MANY_QUEUED.format(count=active, limit=max_queued))
    used = _used_today(mine)
    if used + cost > daily:
        raise QuotaExceeded(
            OVER_BUDGET.format(
                cost=millions(cost), used=millions(used), limit=millions(daily)
            )
        )


def _used_today(requests) -> int:
    """Pixel-steps of the last 24 hours, less requests cancelled before they ran."""
    since = timezone.now() - timedelta(days=1)
    charged = requests.filter(created_at__gte=since).exclude(
        status=Status.CANCELLED, started_at__isnull=True
    )
    total = charged.aggregate(
        # bigint first: steps × width × height overflows the smallint columns.
        cost=Sum(
            Cast("steps", BigIntegerField())
            * F("width")
            * F("height")
            * F("num_images")
        )
    )["cost"]
    return int(total or 0)
