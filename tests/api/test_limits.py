"""Limits: request rates (429 with Retry-After) per user and per token, reads apart
from writes, raised by a UserQuota; Idempotency-Key replays; the body size limit;
and the generation quota and validation messages, which read as the web's."""

from __future__ import annotations

import threading
import time

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import connection, transaction
from rest_framework.test import APIClient

from tests.api.conftest import token_client
from tests.generations.conftest import form_data
from xrayweb.api import errors, services
from xrayweb.api.models import ApiToken, IdempotentRequest
from xrayweb.generations.forms import NOT_A_NUMBER
from xrayweb.generations.models import GenerationRequest
from xrayweb.jobs.models import UserQuota
from xrayweb.jobs.quotas import TOO_MANY_QUEUED

READ = "/api/v1/models/"
TOKENS = "/api/v1/tokens/"
GENERATIONS = "/api/v1/generations/"
KINDS = ("reads", "writes")


def rates(settings, **given: str) -> None:
    """Set some of XRAY_API_RATES (the throttles read them on every request)."""
    settings.XRAY_API_RATES = {**settings.XRAY_API_RATES, **given}


def fresh_counts(*users) -> None:
    """Forget the counts of ``users`` and their tokens. Ids start again in a new
    test database, and an earlier run's counts may still be within their minute."""
    keys = []
    for user in users:
        keys += [f"throttle:{kind}:user:{user.pk}" for kind in KINDS]
        for pk in ApiToken.objects.filter(user=user).values_list("pk", flat=True):
            keys += [f"throttle:{kind}:token:{pk}" for kind in KINDS]
    cache.delete_many(keys)


def session_client(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def statuses(client: APIClient, count: int, url: str = READ) -> list[int]:
    return [client.get(url).status_code for _ in range(count)]


def make_token(client: APIClient):
    return client.post(TOKENS, {"name": "n"}, format="json")


def assert_throttled(response) -> None:
    """A 429 in the API's error shape, whose message and Retry-After agree."""
    assert response.status_code == 429
    wait = int(response["Retry-After"])
    assert 1 <= wait <= 60
    unit = "second" if wait == 1 else "seconds"
    message = f"Request was throttled. Expected available in {wait} {unit}."
    assert response.json() == {
        "errors": [{"field": None, "message": message, "code": "throttled"}]
    }


# Rates -----------------------------------------------------------------------------


def test_it_answers_429_with_retry_after_past_the_user_read_limit(settings, alice):
    client = token_client(alice)
    fresh_counts(alice)
    rates(settings, user_reads="3/min")

    assert statuses(client, 3) == [200, 200, 200]
    assert_throttled(client.get(READ))


def test_it_counts_a_tokens_reads_for_that_token_alone(settings, alice):
    first, second = token_client(alice), token_client(alice)
    fresh_counts(alice)
    rates(settings, token_reads="2/min")

    assert statuses(first, 2) == [200, 200]
    assert_throttled(first.get(READ))
    assert statuses(second, 2) == [200, 200]
    assert session_client(alice).get(READ).status_code == 200  # no token: no limit


def test_it_counts_every_token_and_the_browser_in_the_user_limit(settings, alice):
    first, second = token_client(alice), token_client(alice)
    browser = session_client(alice)
    fresh_counts(alice)
    rates(settings, user_reads="3/min")

    assert statuses(first, 2) + statuses(second, 1) == [200, 200, 200]
    assert_throttled(second.get(READ))
    assert_throttled(first.get(READ))
    assert_throttled(browser.get(READ))


def test_it_counts_one_users_requests_apart_from_anothers(settings, alice, bob):
    alices, bobs = token_client(alice), token_client(bob)
    fresh_counts(alice, bob)
    rates(settings, user_reads="2/min")

    assert statuses(alices, 2) == [200, 200]
    assert_throttled(alices.get(READ))
    assert statuses(bobs, 2) == [200, 200]


def test_it_counts_writes_apart_from_reads(settings, alice):
    client = token_client(alice)
    fresh_counts(alice)
    rates(settings, user_reads="1/min", user_writes="2/min")

    assert statuses(client, 1) == [200]
    assert_throttled(client.get(READ))
    assert make_token(client).status_code == 201  # reads used up, writes not
    assert make_token(client).status_code == 201
    assert_throttled(make_token(client))
    assert ApiToken.objects.filter(user=alice).count() == 3


def test_it_counts_reads_apart_from_writes(settings, alice):
    client = token_client(alice)
    fresh_counts(alice)
    rates(settings, user_writes="1/min", token_writes="1/min")

    assert make_token(client).status_code == 201
    assert_throttled(make_token(client))
    assert statuses(client, 3) == [200, 200, 200]
    assert ApiToken.objects.filter(user=alice).count() == 2


def test_it_counts_a_tokens_writes_for_that_token_alone(settings, alice):
    first, second = token_client(alice), token_client(alice)
    fresh_counts(alice)
    rates(settings, token_writes="1/min")

    assert make_token(first).status_code == 201
    assert_throttled(make_token(first))
    assert make_token(second).status_code == 201


def test_it_raises_a_users_limit_with_a_user_quota(settings, alice, bob):
    alices, bobs = token_client(alice), token_client(bob)
    UserQuota.objects.create(user=alice, api_reads_per_minute=5)
    fresh_counts(alice, bob)
    rates(settings, user_reads="2/min", token_reads="2/min")

    assert statuses(alices, 5) == [200] * 5
    assert_throttled(alices.get(READ))
    assert statuses(bobs, 2) == [200, 200]
    assert_throttled(bobs.get(READ))  # no quota: the default limit


def test_it_lowers_a_users_write_limit_with_a_user_quota(settings, alice):
    client = token_client(alice)
    UserQuota.objects.create(user=alice, api_writes_per_minute=1)
    fresh_counts(alice)

    assert make_token(client).status_code == 201
    assert_throttled(make_token(client))
    assert client.get(READ).status_code == 200  # reads keep the default


# Idempotency-Key -------------------------------------------------------------------


def generation_body(version, **overrides) -> dict:
    body = {
        "prompt": "Heart size normal.",
        "model_version": version.pk,
        "seed": 5,
        "steps": 4,
        "scheduler": "dpmpp",
    }
    return {**body, **overrides}


def post_generation(client: APIClient, body: dict, key: str | None = None):
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post(GENERATIONS, body, format="json", headers=headers)


def test_it_replays_a_retry_with_the_same_key_and_body(alice, alice_api, tiny_version):
    body = generation_body(tiny_version)

    first = post_generation(alice_api, body, key="retry-1")
    again = post_generation(alice_api, body, key="retry-1")

    assert first.status_code == again.status_code == 201
    assert "Idempotent-Replayed" not in first
    assert again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.json() == first.json()
    assert list(GenerationRequest.objects.values_list("pk", flat=True)) == [
        first.json()["id"]
    ]
    assert IdempotentRequest.objects.filter(user=alice, key="retry-1").count() == 1


def test_it_creates_again_with_a_new_key(alice_api, tiny_version):
    body = generation_body(tiny_version)

    first = post_generation(alice_api, body, key="a-1")
    second = post_generation(alice_api, body, key="a-2")
    plain = post_generation(alice_api, body)

    ids = {first.json()["id"], second.json()["id"], plain.json()["id"]}
    assert len(ids) == 3
    assert GenerationRequest.objects.count() == 3


def test_it_keeps_one_users_keys_apart_from_anothers(alice_api, bob_api, tiny_version):
    body = generation_body(tiny_version)

    alices = post_generation(alice_api, body, key="shared-key")
    bobs = post_generation(bob_api, body, key="shared-key")

    assert alices.status_code == bobs.status_code == 201
    assert "Idempotent-Replayed" not in bobs
    assert alices.json()["id"] != bobs.json()["id"]
    assert GenerationRequest.objects.count() == 2


def test_it_refuses_the_same_key_with_a_different_body(alice_api, tiny_version):
    post_generation(alice_api, generation_body(tiny_version), key="k-1")

    response = post_generation(alice_api, generation_body(tiny_version, seed=6), "k-1")

    assert response.status_code == 400
    assert response.json()["errors"] == [
        {
            "field": "Idempotency-Key",
            "message": services.KEY_REUSED.format(key="k-1"),
            "code": "invalid",
        }
    ]
    assert GenerationRequest.objects.count() == 1


def test_it_stores_nothing_for_a_create_that_fails_validation(alice_api, tiny_version):
    bad = post_generation(alice_api, generation_body(tiny_version, steps="abc"), "v-1")

    assert bad.status_code == 400
    assert [e["field"] for e in bad.json()["errors"]] == ["steps"]
    assert not IdempotentRequest.objects.exists()
    assert not GenerationRequest.objects.exists()
    fixed = post_generation(alice_api, generation_body(tiny_version), key="v-1")
    assert fixed.status_code == 201
    assert "Idempotent-Replayed" not in fixed
    assert list(GenerationRequest.objects.values_list("pk", flat=True)) == [
        fixed.json()["id"]
    ]


@pytest.mark.parametrize(
    "key",
    ["has spaces", "x" * 300, "tab\there", "é-accent", ""],
    ids=["spaces", "300-chars", "tab", "non-ascii", "empty"],
)
def test_it_refuses_a_bad_idempotency_key(alice_api, tiny_version, key):
    response = post_generation(alice_api, generation_body(tiny_version), key=key)

    assert response.status_code == 400
    assert response.json()["errors"] == [
        {
            "field": "Idempotency-Key",
            "message": services.BAD_IDEMPOTENCY_KEY.format(value=key),
            "code": "invalid",
        }
    ]
    assert not GenerationRequest.objects.exists()
    assert not IdempotentRequest.objects.exists()


def test_it_takes_a_key_of_255_printable_characters(alice_api, tiny_version):
    key = "~" * 255

    response = post_generation(alice_api, generation_body(tiny_version), key=key)

    assert response.status_code == 201
    assert IdempotentRequest.objects.get().key == key


def test_it_replays_a_rerun_sent_again_with_the_same_key(alice_api, tiny_version):
    original = post_generation(alice_api, generation_body(tiny_version)).json()
    url = f"{GENERATIONS}{original['id']}/rerun/"
    headers = {"Idempotency-Key": "rerun-1"}

    first = alice_api.post(url, headers=headers)
    again = alice_api.post(url, headers=headers)

    assert first.status_code == again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"] != original["id"]
    assert GenerationRequest.objects.count() == 2


def waiting_on_locks(pids: list[int]) -> int:
    """How many of the backends ``pids`` wait for a lock (pg_locks is live, not a
    snapshot, so it can be polled inside a transaction)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(DISTINCT pid) FROM pg_locks"
            " WHERE NOT granted AND pid = ANY(%s)",
            [pids],
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_it_creates_one_row_for_two_concurrent_posts_with_one_key(
    transactional_db, alice, tiny_version
):
    """Both requests are held inside the database at once (Alice's row is locked
    until both wait), so the second meets the first's uncommitted key."""
    key = services.api_token_create(user=alice).key
    body = generation_body(tiny_version)
    pids, responses = [], []

    def post() -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pids.append(cursor.fetchone()[0])
            responses.append(post_generation(client, body, key="race-1"))
        finally:
            connection.close()

    threads = [threading.Thread(target=post) for _ in range(2)]
    with transaction.atomic():
        get_user_model().objects.select_for_update().get(pk=alice.pk)
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if len(pids) == 2 and waiting_on_locks(pids) == 2:
                break
            time.sleep(0.05)
        both_waited = len(pids) == 2 and waiting_on_locks(pids) == 2
    for thread in threads:
        thread.join(timeout=60)

    assert both_waited
    assert [r.status_code for r in responses] == [201, 201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sorted(r.get("Idempotent-Replayed", "") for r in responses) == [
        "",
        "true",
    ]
    assert GenerationRequest.objects.count() == 1
    assert IdempotentRequest.objects.count() == 1


# Body size -------------------------------------------------------------------------


def test_it_answers_413_json_for_a_body_over_the_limit(
    settings, alice_api, tiny_version
):
    settings.XRAY_API_MAX_BODY_BYTES = 200
    body = generation_body(tiny_version, prompt="x" * 300)

    response = post_generation(alice_api, body)

    assert response.status_code == 413
    size = int(response.wsgi_request.META["CONTENT_LENGTH"])
    assert size > 300
    assert response.json() == {
        "errors": [
            {
                "field": None,
                "message": errors.TOO_LARGE.format(size=size, limit=200),
                "code": "too_large",
            }
        ]
    }
    assert not GenerationRequest.objects.exists()


def test_it_takes_a_body_within_the_limit(settings, alice_api, tiny_version):
    settings.XRAY_API_MAX_BODY_BYTES = 200

    response = post_generation(alice_api, generation_body(tiny_version))

    assert response.status_code == 201
    assert GenerationRequest.objects.count() == 1


def test_it_refuses_a_large_body_before_authenticating(settings, api, db):
    settings.XRAY_API_MAX_BODY_BYTES = 10

    response = api.post(TOKENS, {"name": "x" * 50}, format="json")

    assert response.status_code == 413
    assert response.json()["errors"][0]["code"] == "too_large"


# The web's quota and validation messages -------------------------------------------


def test_it_refuses_a_create_over_the_queue_quota_with_the_webs_message(
    settings, client, alice, alice_api, tiny_version
):
    settings.XRAY_QUOTA_MAX_QUEUED = 1
    assert post_generation(alice_api, generation_body(tiny_version)).status_code == 201

    response = post_generation(alice_api, generation_body(tiny_version))
    client.force_login(alice)
    page = client.post("/", form_data(tiny_version))

    message = TOO_MANY_QUEUED.format(count=1, limit=1)
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": None, "message": message, "code": "quota_exceeded"}
    ]
    assert page.status_code == 200
    assert page.context["form"].non_field_errors() == [message]
    assert GenerationRequest.objects.count() == 1


def test_it_refuses_a_rerun_over_the_queue_quota(settings, alice_api, tiny_version):
    settings.XRAY_QUOTA_MAX_QUEUED = 1
    original = post_generation(alice_api, generation_body(tiny_version)).json()

    response = alice_api.post(f"{GENERATIONS}{original['id']}/rerun/")

    assert response.status_code == 400
    assert response.json()["errors"][0]["message"] == TOO_MANY_QUEUED.format(
        count=1, limit=1
    )
    assert GenerationRequest.objects.count() == 1


def test_it_names_a_bad_steps_value_as_the_web_form_does(
    client, alice, alice_api, tiny_version
):
    response = post_generation(alice_api, generation_body(tiny_version, steps="abc"))
    client.force_login(alice)
    page = client.post("/", form_data(tiny_version, steps="abc"))

    expected = NOT_A_NUMBER.format(name="steps", kind="whole number", value="abc")
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "steps", "message": expected, "code": "invalid"}
    ]
    assert page.status_code == 200
    assert page.context["form"].errors["steps"] == [expected]
    assert not GenerationRequest.objects.exists()
