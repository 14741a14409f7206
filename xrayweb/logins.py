"""Login protection (django-axes): the address failures are counted by, the lockout
message, and the check that keeps a locked-out account from making API tokens.

Failed logins are counted per username and per client address, on every form that
logs in (the login page, the admin's); past XRAY_LOGIN_FAILURES either is refused
for XRAY_LOGIN_LOCKOUT_MIN minutes. An administrator unlocks at once by deleting the
row in Admin → Axes → Access attempts.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest

TOKENS_LOCKED = (
    "No API token can be made while logins to {username!r} or from this address "
    "are locked out after too many failed attempts. Wait {minutes} minutes or ask "
    "an administrator to unlock it."
)


def client_ip(request: HttpRequest) -> str:
    """The client's address: behind a trusted TLS proxy the one the proxy appended
    to X-Forwarded-For (a client can forge every earlier entry), else the peer's."""
    if settings.XRAY_BEHIND_TLS_PROXY:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded.strip():
            return forwarded.split(",")[-1].strip()
    return request.META.get("REMOTE_ADDR", "")


def tokens_locked_reason(request: HttpRequest, user: AbstractBaseUser) -> str | None:
    """Why ``user`` may not make a token from this request now, or None."""
    from axes.handlers.proxy import AxesProxyHandler

    username = user.get_username()
    if not settings.AXES_ENABLED or AxesProxyHandler.is_allowed(
        request, {"username": username}
    ):
        return None
    return TOKENS_LOCKED.format(username=username, minutes=lockout_minutes())


def lockout_minutes() -> int:
    return round(settings.AXES_COOLOFF_TIME.total_seconds() / 60)
