"""Content negotiation that never refuses: a view answers in the format asked for
when it has one (the schema: YAML or JSON), else in its first format (JSON for the
API; PNG downloads return their file directly)."""

from __future__ import annotations

from django.http import Http404
from rest_framework import exceptions
from rest_framework.negotiation import DefaultContentNegotiation


class JsonAlways(DefaultContentNegotiation):
    """DRF's negotiation by Accept header and ``?format=``, except that a format the
    view lacks falls back to its first renderer: an Accept header asking for
    something else does not turn an answer or an error into a 406 (or a 404)."""

    def select_parser(self, request, parsers):
        content_type = request.content_type.split(";")[0].strip().lower()
        for parser in parsers:
            if parser.media_type == content_type:
                return parser
        return None

    def select_renderer(self, request, renderers, format_suffix=None):
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except (exceptions.NotAcceptable, Http404):
            return renderers[0], renderers[0].media_type
