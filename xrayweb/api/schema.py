"""The OpenAPI schema (drf-spectacular), with the error responses every operation can
give written into it, so clients and schemathesis know their shape."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema

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
