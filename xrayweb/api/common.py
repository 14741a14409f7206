"""What every viewset shares: pagination, query-string checks, Idempotency-Key."""

from __future__ import annotations

from collections.abc import Callable

from django import forms
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import exceptions
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response

from xrayweb.api import services
from xrayweb.api.errors import field_error

BAD_CURSOR = (
    "must be a cursor from a previous page's next or previous link, got {value!r}"
)
IDEMPOTENCY_HEADER = "Idempotency-Key"

IDEMPOTENCY_PARAMETER = OpenApiParameter(
    IDEMPOTENCY_HEADER,
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="Any unique string: a retry with the same key and body returns "
    "the first response instead of creating a second job (kept 24 hours)",
)


class NewestFirst(CursorPagination):
    """Cursor pages, newest first: a page costs the same however deep it is, and
    rows created meanwhile never shift a page."""

    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200

    def decode_cursor(self, request: Request):
        try:
            return super().decode_cursor(request)
        except exceptions.NotFound:
            value = request.query_params.get(self.cursor_query_param, "")
            raise field_error("cursor", BAD_CURSOR.format(value=value[:100])) from None

    def get_page_size(self, request: Request) -> int:
        text = request.query_params.get(self.page_size_query_param)
        if not text:  # blank, as every optional query parameter: not given
            return self.page_size
        if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 10**6:
            message = f"must be a whole number from 1 to {self.max_page_size}"
            raise field_error("page_size", f"{message}, got {text[:100]!r}")
        return min(int(text), self.max_page_size)


class ByUid(NewestFirst):
    ordering = ("uid",)


def cleaned_query(form: forms.Form) -> dict:
    """The query string's values; else a 400 naming each bad parameter."""
    if form.is_valid():
        return form.cleaned_data
    detail = {name: list(errors) for name, errors in form.errors.items()}
    raise exceptions.ValidationError(detail)


def idempotent(request: Request, create: Callable[[], Response]) -> Response:
    """``create()``, once per Idempotency-Key when the request sends one."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return create()
    fingerprint = services.request_fingerprint(
        method=request.method, path=request.path, body=request.data
    )

    def run() -> tuple[int, dict]:
        response = create()
        return response.status_code, response.data

    try:
        status, body, replayed = services.idempotent_create(
            user=request.user, key=key, fingerprint=fingerprint, create=run
        )
    except ValueError as exc:
        raise field_error(IDEMPOTENCY_HEADER, str(exc)) from None
    response = Response(body, status=status)
    if replayed:
        response["Idempotent-Replayed"] = "true"
    return response
