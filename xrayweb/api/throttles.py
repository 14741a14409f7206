"""Request limits per user and per token, for reads and for writes, counted in the
cache that every web process shares (Redis).

A user's limit counts all their requests (browser and every token together); a
token's limit counts that token alone, so one runaway script cannot use up the
user's whole allowance. Staff can raise a user's limits (UserQuota). A cache that
cannot be reached lets the request through rather than failing it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle

from xrayweb.jobs.models import UserQuota

if TYPE_CHECKING:  # rest_framework.views imports this module through its settings
    from rest_framework.request import Request
    from rest_framework.views import APIView

logger = logging.getLogger(__name__)

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class _ApiThrottle(SimpleRateThrottle):
    """One bucket: ``kind`` (reads or writes) per ``who`` (user or token)."""

    kind: str  # "reads" or "writes"
    who: str  # "user" or "token"

    def __init__(self) -> None:  # the rate is read per request, not per class
        self.rate = None

    def allow_request(self, request: Request, view: APIView) -> bool:
        if not request.user or not request.user.is_authenticated:
            return True
        if (request.method in SAFE_METHODS) != (self.kind == "reads"):
            return True
        if self.who == "token" and request.auth is None:
            return True
        self.rate = self._rate_for(request)
        self.num_requests, self.duration = self.parse_rate(self.rate)
        try:
            return super().allow_request(request, view)
        except Exception:  # the cache is down: count nothing, refuse nothing
            logger.warning("API throttle cache unreachable; request let through")
            return True

    def get_cache_key(self, request: Request, view: APIView) -> str:
        ident = request.auth.pk if self.who == "token" else request.user.pk
        return f"throttle:{self.kind}:{self.who}:{ident}"

    def _rate_for(self, request: Request) -> str:
        if not hasattr(request, "xray_quota"):  # one read for all four throttles
            request.xray_quota = UserQuota.objects.filter(user=request.user).first()
        quota = request.xray_quota
        per_minute = None
        if quota is not None:
            per_minute = getattr(quota, f"api_{self.kind}_per_minute")
        if per_minute is not None:
            return f"{per_minute}/min"
        return settings.XRAY_API_RATES[f"{self.who}_{self.kind}"]


class UserReads(_ApiThrottle):
    kind, who = "reads", "user"


class UserWrites(_ApiThrottle):
    kind, who = "writes", "user"


class TokenReads(_ApiThrottle):
    kind, who = "reads", "token"


class TokenWrites(_ApiThrottle):
    kind, who = "writes", "token"
