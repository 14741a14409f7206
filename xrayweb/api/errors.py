"""Every API error as JSON: ``{"errors": [{"field", "message", "code"}, ...]}``.

``field`` names the bad input (a body field, a query parameter, a header) or is
null for an error about the request as a whole. The messages are the web forms' own,
so an error reads the same in the browser and in a script.
"""

from __future__ import annotations

from collections.abc import Callable

from django import forms
from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions, status
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from xrayweb.errors import (
    API_PREFIX,
    DATABASE_DOWN,
    DATABASE_DOWN_ERRORS,
    RETRY_AFTER_S,
)

NON_FIELD = ("non_field_errors", "__all__")
TOO_LARGE = "The request body is {size} bytes; the limit is {limit} bytes."


class QuotaRefused(exceptions.APIException):
    """A request over the user's quota or the cost cap (the form's message)."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "quota_exceeded"


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


def errors_body(detail: object, field: str | None = None) -> list[dict]:
    """DRF's error detail (a string, list or dict of them) as a flat list."""
    if isinstance(detail, dict):
        found = []
        for name, inner in detail.items():
            found += errors_body(inner, None if name in NON_FIELD else name)
        return found
    if isinstance(detail, list):
        return [error for item in detail for error in errors_body(item, field)]
    code = getattr(detail, "code", None) or "invalid"
    return [{"field": field, "message": str(detail), "code": code}]


def form_invalid(form: forms.Form) -> exceptions.ValidationError:
    """The form's errors, by field, as the API's 400."""
    detail = {
        name: [error["message"] for error in errors]
        for name, errors in form.errors.get_json_data().items()
    }
    return exceptions.ValidationError(detail)


def field_error(field: str | None, message: str) -> exceptions.ValidationError:
    return exceptions.ValidationError({field or "non_field_errors": [message]})


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF's handler, with Django's 404 and 403 and an unreachable database mapped
    to API errors, and every body in the one error shape, as JSON (the schema view
    answers YAML, but not its errors)."""
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    elif isinstance(exc, DATABASE_DOWN_ERRORS):
        exc = exceptions.APIException(DATABASE_DOWN)
        exc.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    response.data = {"errors": errors_body(exc.detail)}
    request = context.get("request")
    if request is not None:  # DRF renders the response with the request's renderer
        request.accepted_renderer = JSONRenderer()
        request.accepted_media_type = JSONRenderer.media_type
    if response.status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
        response["Retry-After"] = str(RETRY_AFTER_S)
    return response


class ApiBodyLimit:
    """413 for an API request whose body is over XRAY_API_MAX_BODY_BYTES, before
    anything reads it (DRF's JSON parser would read a body of any size)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(API_PREFIX):
            size = _content_length(request)
            limit = settings.XRAY_API_MAX_BODY_BYTES
            if size > limit:
                message = TOO_LARGE.format(size=size, limit=limit)
                error = {"field": None, "message": message, "code": "too_large"}
                return JsonResponse({"errors": [error]}, status=413)
        return self.get_response(request)


def _content_length(request: HttpRequest) -> int:
    try:
        return max(int(request.META.get("CONTENT_LENGTH") or 0), 0)
    except ValueError:
        return 0
