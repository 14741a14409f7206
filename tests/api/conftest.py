"""The API's small world: a DRF client, tokens for the named users, loose limits.

Throttle counts live in the shared Redis cache; they are keyed by user and token
id, which never repeat within a test database, so tests cannot count each other's
requests. Limits are raised here except where a test sets its own.
"""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from xrayweb.api import services


@pytest.fixture(autouse=True)
def loose_limits(settings) -> None:
    settings.XRAY_API_RATES = {
        "user_reads": "100000/min",
        "user_writes": "100000/min",
        "token_reads": "100000/min",
        "token_writes": "100000/min",
    }
    settings.XRAY_QUOTA_MAX_QUEUED = 1000


@pytest.fixture
def api() -> APIClient:
    """An anonymous client; ``as_user`` gives one with a token."""
    return APIClient()


def token_client(user, *, scheme: str = "Token", **token_args) -> APIClient:
    """A client that sends a new token of ``user`` on every request."""
    key = services.api_token_create(user=user, **token_args).key
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{scheme} {key}")
    client.key = key
    return client


@pytest.fixture
def alice_api(alice) -> APIClient:
    return token_client(alice)


@pytest.fixture
def bob_api(bob) -> APIClient:
    return token_client(bob)


@pytest.fixture
def staff_api(staff) -> APIClient:
    return token_client(staff)
