"""API tokens (hashed at rest, through django-rest-knox) and stored create results
for the Idempotency-Key header."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from knox.models import AbstractAuthToken
from knox.settings import CONSTANTS


class ApiToken(AbstractAuthToken):
    """A named per-user token. Only knox's SHA-512 digest of the key is stored, with
    the key's first characters for lookup; the key itself is shown once."""

    # A plain id to list and revoke a token by: knox's digest would otherwise be the
    # primary key, and it has no business in URLs and logs.
    id = models.BigAutoField(primary_key=True)
    digest = models.CharField(max_length=CONSTANTS.DIGEST_LENGTH, unique=True)
    name = models.CharField(max_length=100, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name or 'token'} {self.id} of {self.user}"


class IdempotentRequest(models.Model):
    """The first response to a create sent with an Idempotency-Key, replayed to a
    retry with the same key and body instead of creating a second job."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(
        max_length=64, help_text="sha256 of method, path, body"
    )
    status_code = models.PositiveSmallIntegerField()
    body = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="one_result_per_key")
        ]

    def __str__(self) -> str:
        return f"{self.key} of {self.user}"
