"""GET /healthz: whether this process reaches the database, the broker and storage.

For load balancers and container health checks: no login, no session, nothing read
beyond the three probes. 200 when all three answer, else 503; either way the JSON
names each part, ``"ok"`` or what failed. A failing probe never becomes a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

logger = logging.getLogger(__name__)

OK = "ok"
UNREACHABLE = "unreachable: {error}"
UNUSABLE = "unusable: {error}"
BROKER_TIMEOUT_S = 2
PROBE_KEY = "healthz/probe"
ERROR_MAX_CHARS = 300


def database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def broker() -> None:
    """A Redis ping over a fresh connection of the Celery app, 2 s at most.

    Establishing a Redis channel pings the server. The pooled connections are left
    alone: a probe must not hand a half-open connection to the next send.
    """
    from worker.app import app

    timeouts = {"socket_timeout": BROKER_TIMEOUT_S}
    timeouts["socket_connect_timeout"] = BROKER_TIMEOUT_S
    with app.connection_for_write(transport_options=timeouts) as conn:
        conn.ensure_connection(max_retries=0, timeout=BROKER_TIMEOUT_S)


def storage() -> None:
    """Write a probe file and delete it.

    A read alone proves too little: FileSystemStorage.exists() answers False, not an
    error, when MEDIA_ROOT is a file or unwritable, and S3's HEAD answers 404 for a
    bucket that does not exist. The platform's work is writing files.
    """
    name = default_storage.save(PROBE_KEY, ContentFile(b"ok"))
    default_storage.delete(name)


CHECKS: dict[str, tuple[Callable[[], None], str]] = {
    "database": (database, UNREACHABLE),
    "broker": (broker, UNREACHABLE),
    "storage": (storage, UNUSABLE),
}


def outcome(name: str) -> str:
    check, failure = CHECKS[name]
    try:
        check()
    except Exception as error:
        text = " ".join(str(error).split())[:ERROR_MAX_CHARS] or type(error).__name__
        logger.warning("health check %s failed: %s", name, text)
        return failure.format(error=text)
    return OK


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    results = {name: outcome(name) for name in CHECKS}
    healthy = all(value == OK for value in results.values())
    return JsonResponse(results, status=200 if healthy else 503)
