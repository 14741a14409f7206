"""Token authentication: knox's hashed tokens, sent as ``Token <key>`` or
``Bearer <key>``; browser sessions (with CSRF) use DRF's SessionAuthentication."""

from __future__ import annotations

import re

from knox.auth import TokenAuthentication
from rest_framework import exceptions
from rest_framework.authentication import get_authorization_header
from rest_framework.request import Request

from xrayweb.api import services

SCHEMES = (b"token", b"bearer")
# Printable ASCII: a NUL byte would reach PostgreSQL in knox's lookup and fail there.
KEY_BYTES = re.compile(rb"[\x21-\x7e]+")
BAD_HEADER = (
    "Invalid Authorization header: send 'Token <key>' or 'Bearer <key>' with the "
    "key shown when the token was created."
)
INVALID = "Invalid token: it was revoked, it expired, or it never existed."


class ApiTokenAuthentication(TokenAuthentication):
    """knox's check of the key against its stored digest (expired tokens are
    deleted as they are met), under either scheme name; records the token's use."""

    def authenticate(self, request: Request) -> tuple | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() not in SCHEMES:
            return None  # no token: another authenticator, or anonymous
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed(BAD_HEADER)
        if not KEY_BYTES.fullmatch(parts[1]):
            raise exceptions.AuthenticationFailed(INVALID)
        try:
            user, token = self.authenticate_credentials(parts[1])
        except exceptions.AuthenticationFailed:
            raise exceptions.AuthenticationFailed(INVALID) from None
        services.api_token_used(token)
        return user, token

    def authenticate_header(self, request: Request) -> str:
        return "Token"
