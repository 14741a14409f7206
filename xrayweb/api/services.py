"""API tokens (create, list, revoke, mark used) and Idempotency-Key replays."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from xrayweb.api.models import ApiToken, IdempotentRequest

MAX_EXPIRY_DAYS = 3650
BAD_EXPIRY = "expires_days must be a whole number from 1 to {max}, got {value!r}"
BAD_NAME = "name must be at most 100 characters, got {count}"
NO_SUCH_TOKEN = "You have no token {id}."
# Last use is written at most this often, so a busy script does not write every call.
LAST_USED_EVERY = timedelta(minutes=1)
IDEMPOTENCY_TTL = timedelta(hours=24)
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, no spaces
BAD_IDEMPOTENCY_KEY = (
    "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces, "
    "got {value!r}"
)
KEY_REUSED = (
    "Idempotency-Key {key!r} was already used for a different request; send a new "
    "key for a new request."
)


@dataclass(frozen=True)
class NewToken:
    """A token just made: its row, and its key (not stored; shown once)."""

    token: ApiToken
    key: str


def api_token_create(
    *, user: AbstractBaseUser, name: str = "", expires_days: int | None = None
) -> NewToken:
    """A new token for ``user``; it expires after ``expires_days`` (None: never).
    ValueError names a bad name or expiry."""
    if len(name) > 100:
        raise ValueError(BAD_NAME.format(count=len(name)))
    expiry = None
    if expires_days is not None:
        if isinstance(expires_days, bool) or not 1 <= expires_days <= MAX_EXPIRY_DAYS:
            raise ValueError(BAD_EXPIRY.format(max=MAX_EXPIRY_DAYS, value=expires_days))
        expiry = timedelta(days=expires_days)
    token, key = ApiToken.objects.create(user=user, expiry=expiry, name=name.strip())
    return NewToken(token=token, key=key)


def api_tokens_of(user: AbstractBaseUser) -> QuerySet[ApiToken]:
    """The user's tokens that still work (not expired), newest first."""
    now = timezone.now()
    tokens = ApiToken.objects.filter(user=user)
    return tokens.exclude(expiry__lt=now)


def api_token_revoke(*, user: AbstractBaseUser, token_id: int) -> None:
    """Delete one of the user's tokens: a request with it gets 401 from then on.
    LookupError when the user has no such token (another user's included)."""
    deleted, _ = ApiToken.objects.filter(user=user, pk=token_id).delete()
    if not deleted:
        raise LookupError(NO_SUCH_TOKEN.format(id=token_id))


def api_token_used(token: ApiToken) -> None:
    """Note that ``token`` was just used, at most once a minute."""
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_EVERY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now


@dataclass(frozen=True)
class Replay:
    """A stored response to a create sent again with the same Idempotency-Key."""

    status_code: int
    body: dict


def idempotency_key_check(key: str) -> None:
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise ValueError(BAD_IDEMPOTENCY_KEY.format(value=key[:300]))


def request_fingerprint(*, method: str, path: str, body: object) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{method} {path} {canonical}".encode()).hexdigest()


def idempotent_create(
    *,
    user: AbstractBaseUser,
    key: str,
    fingerprint: str,
    create: Callable[[], tuple[int, dict]],
) -> tuple[int, dict, bool]:
    """Run ``create`` once per (user, key): ``(status, body, replayed)``.

    The key's row is inserted in the same transaction as the job, so a retry that
    arrives while the first request runs waits on the row's unique index and then
    replays its committed result. A create that fails (status ≥ 400, or an
    exception) stores nothing, so the retry runs it again. ValueError: the key was
    used for another request (a different method, path or body).
    """
    idempotency_key_check(key)
    IdempotentRequest.objects.filter(
        user=user, created_at__lt=timezone.now() - IDEMPOTENCY_TTL
    ).delete()
    with transaction.atomic():
        try:
            with transaction.atomic():
                row = IdempotentRequest.objects.create(
                    user=user, key=key, fingerprint=fingerprint, status_code=0
                )
        except IntegrityError:
            stored = IdempotentRequest.objects.get(user=user, key=key)
            if stored.fingerprint != fingerprint:
                raise ValueError(KEY_REUSED.format(key=key)) from None
            return stored.status_code, stored.body, True
        status, body = create()
        if status >= 400:
            transaction.set_rollback(True)
            return status, body, False
        row.status_code, row.body = status, body
        row.save(update_fields=["status_code", "body"])
    return status, body, False
