"""Error pages that need no database, and the 400 that names bad query parameters.

The three templates are standalone (no base.html, no context processors): base.html
reads ``user``, which loads the session from the database, and these pages must
render while the database is down.
"""

from __future__ import annotations

import sys

import psycopg
from django import db, forms
from django.core.exceptions import BadRequest
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseServerError,
    JsonResponse,
)
from django.template.loader import render_to_string
from django.views.defaults import page_not_found

DATABASE_DOWN_ERRORS = (
    db.OperationalError,
    db.InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)
RETRY_AFTER_S = 30
API_PREFIX = "/api/"
DATABASE_DOWN = f"The database cannot be reached; try again in {RETRY_AFTER_S} s."


def cleaned_query(form: forms.Form) -> dict:
    """The form's cleaned data; else BadRequest naming every bad field.

    Meant for query strings, which come from links and crafted URLs rather than a
    form someone fills in, so a bad value is answered with a 400, not a form page.
    """
    if form.is_valid():
        return form.cleaned_data
    problems = [f"{name}: {' '.join(errors)}" for name, errors in form.errors.items()]
    raise BadRequest("; ".join(problems))


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler400: the message of our own BadRequest; nothing of other errors."""
    message = str(exception) if isinstance(exception, BadRequest) else ""
    if request.path.startswith(API_PREFIX):
        return _api_error(400, message or "Bad request.", "bad_request")
    return HttpResponseBadRequest(render_to_string("400.html", {"message": message}))


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler404: under /api/, the API's JSON error (a path no route matches, such
    as an id with a dot in it, is a 404 like any missing object); elsewhere Django's
    own page."""
    if request.path.startswith(API_PREFIX):
        return _api_error(404, "Not found.", "not_found")
    return page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: a 503 with Retry-After while the database is unreachable.

    Django calls this inside its ``except`` block, so ``sys.exc_info()`` still holds
    the exception. Touches no database and renders no context processor.
    """
    down = database_unreachable(sys.exc_info()[1])
    if request.path.startswith(API_PREFIX):
        if down:
            response = _api_error(503, DATABASE_DOWN, "database_unreachable")
            response["Retry-After"] = str(RETRY_AFTER_S)
            return response
        return _api_error(500, "Internal server error.", "server_error")
    if down:
        response = HttpResponse(render_to_string("503.html"), status=503)
        response["Retry-After"] = str(RETRY_AFTER_S)
        return response
    return HttpResponseServerError(render_to_string("500.html"))


def _api_error(status: int, message: str, code: str) -> JsonResponse:
    """An error of the API (/api/) in its JSON shape; see xrayweb/api/errors.py."""
    error = {"field": None, "message": message, "code": code}
    return JsonResponse({"errors": [error]}, status=status)


def database_unreachable(exception: BaseException | None) -> bool:
    """Whether ``exception``, or one it was raised from, is a connection error."""
    seen: set[int] = set()
    while exception is not None and id(exception) not in seen:
        if isinstance(exception, DATABASE_DOWN_ERRORS):
            return True
        seen.add(id(exception))
        exception = exception.__cause__ or exception.__context__
    return False
