"""Refuse query strings that no page can use, before any view or admin sees them."""

from __future__ import annotations

from collections.abc import Callable

from django.core.exceptions import BadRequest
from django.http import HttpRequest, HttpResponse

NUL_IN_QUERY = "{name}: must not contain a NUL character (\\x00)"


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
