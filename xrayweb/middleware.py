"""Middleware: refuse query strings no page can use and uploads over the limit
before any view sees them; keep streamed files out of caches; a stored file that is
gone answers 404."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import BadRequest
from django.http import FileResponse, Http404, HttpRequest, HttpResponse

logger = logging.getLogger(__name__)

NUL_IN_QUERY = "{name}: must not contain a NUL character (\\x00)"
UPLOAD_TOO_LARGE = (
    "Uploads are limited to {limit} MiB (XRAY_UPLOAD_MAX_BYTES); this one is "
    "{size} MiB. Put larger files on the server and import them by path."
)
FILE_GONE = "This file is no longer stored."


class RejectNulInQuery:
    """A 400 naming the parameter whose name or value holds a NUL byte.

    PostgreSQL text cannot hold NUL, so such a value reaching a filter (the admin's
    list filters included) would end in a database error. Form fields already refuse
    NUL with a form error; this covers every query string.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        for name, values in request.GET.lists():
            if "\x00" in name or any("\x00" in value for value in values):
                shown = name.replace("\x00", "\\x00")
                raise BadRequest(NUL_IN_QUERY.format(name=shown))
        return self.get_response(request)


class BoundedUploads:
    """413 for an upload (a multipart body) longer than XRAY_UPLOAD_MAX_BYTES,
    judged by its Content-Length before any byte is read or spooled to disk. A body
    without Content-Length is read as empty by Django, so it cannot slip past."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.META.get("CONTENT_TYPE", "").startswith("multipart/"):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                raise BadRequest("Content-Length must be an integer") from None
            limit = settings.XRAY_UPLOAD_MAX_BYTES
            if length > limit:
                message = UPLOAD_TOO_LARGE.format(
                    limit=limit // 2**20, size=round(length / 2**20, 1)
                )
                return HttpResponse(message, status=413, content_type="text/plain")
        return self.get_response(request)


class PrivateFiles:
    """Every file a view streams (images, plots, exports) is someone's own: it is
    served ``no-store``, so a shared browser keeps no copy after logout. A file its
    row names but storage lost answers 404; the details go to the log."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if isinstance(response, FileResponse):
            response["Cache-Control"] = "no-store"
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        if isinstance(exception, FileNotFoundError):
            logger.warning("%s: stored file missing: %s", request.path, exception)
            raise Http404(FILE_GONE)
