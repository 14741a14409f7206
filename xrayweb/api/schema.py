"""The OpenAPI schema (drf-spectacular), with the error responses every operation can
give written into it, so clients and schemathesis know their shape; each path
parameter bounded as its URL's regex bounds it; and blank optional query parameters
allowed, as the API reads them as not given."""

from __future__ import annotations

import re

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import analyze_named_regex_pattern

from xrayweb.api.serializers import Errors

ERRORS = {
    "400": "A bad value: each error names its field and the value",
    "401": "No token or session, or a revoked or expired token",
    "403": "Not allowed (staff only, or missing CSRF token)",
    "404": "Not found, or not yours",
    "409": "A retry while the first request with this Idempotency-Key runs",
    "413": "The request body is over the size limit",
    "429": "Over the request rate limit; Retry-After says when to try again",
    "503": "The database cannot be reached; Retry-After says when to try again",
}
ALWAYS = ("400", "401", "403", "429", "503")
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
DIGITS = re.compile(r"\[0-9\]\{1,([0-9]+)\}")  # e.g. [0-9]{1,18}, an id in a bigint
ANY_SEGMENT = "[^/.]+"  # DRF's default lookup: the view itself refuses a bad value


class ApiSchema(AutoSchema):
    """drf-spectacular's AutoSchema, plus the API's error responses."""

    def _get_response_bodies(self, direction: str = "response") -> dict:
        responses = super()._get_response_bodies(direction)
        codes = list(ALWAYS)
        if self.method in WRITE_METHODS:
            codes += ["409", "413"]
        if "{" in self.path:
            codes.append("404")
        for code in sorted(set(codes)):
            if code not in responses:
                responses[code] = self._get_response_for_code(Errors, code)
                responses[code]["description"] = ERRORS[code]
        return responses

    def _get_parameters(self) -> list[dict]:
        parameters = super()._get_parameters()
        patterns = analyze_named_regex_pattern(self.path_regex)
        if "pk" in patterns:  # the router's group, named id in the schema
            patterns["id"] = patterns.pop("pk")
        for parameter in parameters:
            if parameter["in"] == "query" and not parameter.get("required"):
                # The filters are the web's forms: a blank field means not given.
                parameter["allowEmptyValue"] = True
            if parameter["in"] == "path" and parameter["name"] in patterns:
                parameter["schema"] = _bounded(
                    parameter["schema"], patterns[parameter["name"]]
                )
        return parameters


def _bounded(schema: dict, pattern: str) -> dict:
    """``schema``, accepting only what the URL's ``pattern`` matches: a path that
    does not match is no route at all, so the schema must not offer it."""
    digits = DIGITS.fullmatch(pattern)
    if schema.get("type") == "integer" and digits:
        return {**schema, "minimum": 0, "maximum": 10 ** int(digits[1]) - 1}
    if schema.get("type") == "string" and pattern != ANY_SEGMENT:
        return {**schema, "pattern": f"^{pattern}$"}
    return schema


class ApiTokenScheme(OpenApiAuthenticationExtension):
    """How the schema describes ApiTokenAuthentication (registered on import)."""

    target_class = "xrayweb.api.auth.ApiTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Token <key>` or `Bearer <key>`",
        }
