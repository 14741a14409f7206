"""Content negotiation that never refuses: the API answers JSON (and PNG downloads
return their file), whatever the Accept header asks for."""

from __future__ import annotations

from rest_framework.negotiation import BaseContentNegotiation


class JsonAlways(BaseContentNegotiation):
    """Every response is JSON, except the PNG downloads, which return their file
    directly; an Accept header asking for something else does not turn an error
    into a 406."""

    def select_parser(self, request, parsers):
        content_type = request.content_type.split(";")[0].strip().lower()
        for parser in parsers:
            if parser.media_type == content_type:
                return parser
        return None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type
