"""API tokens: made once, stored as a digest, sent as Token or Bearer, revoked,
expired, refused when malformed, made by manage.py, managed on /tokens/, and never
written to a log."""

from __future__ import annotations

import logging
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from knox.crypto import hash_token
from rest_framework.test import APIClient

from tests.api.conftest import token_client
from xrayweb.api import auth, services
from xrayweb.api.models import ApiToken

TOKENS = "/api/v1/tokens/"
ME = "/api/v1/models/"  # any read that needs a user


def with_key(key: str, scheme: str = "Token") -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{scheme} {key}")
    return client


def assert_refused(response, message: str) -> None:
    """A 401 in the API's error shape, naming what was wrong, asking for a token."""
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response["WWW-Authenticate"] == "Token"
    assert response.json() == {
        "errors": [{"field": None, "message": message, "code": "authentication_failed"}]
    }


# Create, list, storage -------------------------------------------------------------


def test_it_returns_the_key_once_on_create(alice, alice_api):
    response = alice_api.post(TOKENS, {"name": "laptop"}, format="json")

    assert response.status_code == 201
    body = response.json()
    token = ApiToken.objects.get(pk=body["id"])
    assert token.user == alice
    assert token.name == "laptop"
    assert body["name"] == "laptop"
    assert body["expires_at"] is None
    assert len(body["key"]) == 64
    assert with_key(body["key"]).get(ME).status_code == 200


def test_it_never_shows_a_key_in_the_listing(alice, alice_api):
    made = alice_api.post(TOKENS, {"name": "script"}, format="json").json()

    response = alice_api.get(TOKENS)

    assert response.status_code == 200
    listed = response.json()
    assert {token["id"] for token in listed} == set(
        ApiToken.objects.filter(user=alice).values_list("pk", flat=True)
    )
    assert made["id"] in {token["id"] for token in listed}
    assert all("key" not in token for token in listed)
    assert made["key"] not in response.content.decode()
    assert alice_api.key not in response.content.decode()


def test_it_stores_only_knox_digest_of_the_key(alice_api):
    made = alice_api.post(TOKENS, {"name": "ci"}, format="json").json()
    key = made["key"]

    token = ApiToken.objects.get(pk=made["id"])

    assert token.digest == hash_token(key)
    assert token.digest != key
    values = {
        field.name: str(getattr(token, field.attname))
        for field in ApiToken._meta.concrete_fields
    }
    assert [name for name, value in values.items() if key in value] == []


def test_it_lists_only_the_users_own_tokens(alice_api, bob, bob_api):
    bobs = ApiToken.objects.filter(user=bob).values_list("pk", flat=True)

    listed = {token["id"] for token in alice_api.get(TOKENS).json()}

    assert listed
    assert listed.isdisjoint(set(bobs))


def test_it_refuses_a_bad_expiry_on_create(alice, alice_api):
    before = ApiToken.objects.filter(user=alice).count()

    response = alice_api.post(TOKENS, {"expires_days": 0}, format="json")

    assert response.status_code == 400
    message = services.BAD_EXPIRY.format(max=services.MAX_EXPIRY_DAYS, value=0)
    assert response.json()["errors"] == [
        {"field": "expires_days", "message": message, "code": "invalid"}
    ]
    assert ApiToken.objects.filter(user=alice).count() == before


# Schemes ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["Token", "Bearer", "token", "bearer"])
def test_it_accepts_the_key_under_either_scheme(alice, scheme):
    client = token_client(alice, scheme=scheme)

    response = client.get(TOKENS)

    assert response.status_code == 200
    assert [token["id"] for token in response.json()] == list(
        ApiToken.objects.filter(user=alice).values_list("pk", flat=True)
    )


def test_it_notes_when_a_token_was_last_used(alice):
    client = token_client(alice)
    token = ApiToken.objects.get(user=alice)
    assert token.last_used_at is None

    assert client.get(ME).status_code == 200

    token.refresh_from_db()
    assert token.last_used_at is not None
    assert timezone.now() - token.last_used_at < timedelta(minutes=1)


def test_it_ignores_another_scheme_and_stays_anonymous(alice_api):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Basic {alice_api.key}")

    response = client.get(ME)

    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == "not_authenticated"


# Revoke and expiry -----------------------------------------------------------------


def test_it_revokes_a_token(alice, alice_api):
    made = alice_api.post(TOKENS, {"name": "old"}, format="json").json()
    assert with_key(made["key"]).get(ME).status_code == 200

    response = alice_api.delete(f"{TOKENS}{made['id']}/")

    assert response.status_code == 204
    assert not ApiToken.objects.filter(pk=made["id"]).exists()
    assert_refused(with_key(made["key"]).get(ME), auth.INVALID)
    assert alice_api.get(ME).status_code == 200  # the other token still works


def test_it_refuses_to_revoke_another_users_token(alice_api, bob, bob_api):
    bobs = ApiToken.objects.get(user=bob)

    response = alice_api.delete(f"{TOKENS}{bobs.pk}/")

    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "not_found"
    assert ApiToken.objects.filter(pk=bobs.pk).exists()
    assert bob_api.get(ME).status_code == 200


def test_it_answers_404_for_a_token_that_never_existed(alice_api):
    response = alice_api.delete(f"{TOKENS}999999999/")

    assert response.status_code == 404


def test_it_refuses_an_expired_token(alice):
    client = token_client(alice, expires_days=1)
    token = ApiToken.objects.get(user=alice)
    assert client.get(ME).status_code == 200
    past = timezone.now() - timedelta(seconds=1)
    ApiToken.objects.filter(pk=token.pk).update(expiry=past)

    response = client.get(ME)

    assert_refused(response, auth.INVALID)
    assert not ApiToken.objects.filter(pk=token.pk).exists()  # knox deletes it


def test_it_hides_an_expired_token_from_the_listing(alice, alice_api):
    made = alice_api.post(TOKENS, {"expires_days": 1}, format="json").json()
    past = timezone.now() - timedelta(seconds=1)
    ApiToken.objects.filter(pk=made["id"]).update(expiry=past)

    listed = [token["id"] for token in alice_api.get(TOKENS).json()]

    assert made["id"] not in listed
    assert listed == [ApiToken.objects.get(digest=hash_token(alice_api.key)).pk]


# Malformed headers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("Token", auth.BAD_HEADER),
        ("Bearer", auth.BAD_HEADER),
        ("Token a b", auth.BAD_HEADER),
        ("Token \xe9\xff\xfe", auth.INVALID),  # as WSGI hands over non-ASCII bytes
        ("Token " + "0" * 64, auth.INVALID),
        ("Token not-hex-at-all", auth.INVALID),
        ("Token abc\x00def", auth.INVALID),  # PostgreSQL refuses NUL in text
        ("Token \x01\x02", auth.INVALID),
    ],
    ids=[
        "token-alone",
        "bearer-alone",
        "two-parts",
        "non-ascii",
        "unknown",
        "junk",
        "nul",
        "control",
    ],
)
def test_it_refuses_a_malformed_header_with_401_json(alice_api, header, message):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)

    response = client.get(ME)

    assert_refused(response, message)


def test_it_refuses_a_wrong_key_that_shares_a_tokens_prefix(alice_api):
    """knox finds candidates by the key's first characters, then compares digests."""
    key = alice_api.key
    forged = key[:-4] + ("0000" if key[-4:] != "0000" else "1111")

    assert_refused(with_key(forged).get(ME), auth.INVALID)
    assert_refused(with_key(key[:15] + "zz").get(ME), auth.INVALID)  # not hex
    assert_refused(with_key(key[:15] + "\x00").get(ME), auth.INVALID)
    assert_refused(with_key(key[:15] + "\xe9").get(ME), auth.INVALID)


# manage.py api_token ---------------------------------------------------------------


def test_it_prints_a_working_key_from_the_command(alice):
    out = StringIO()

    call_command("api_token", "alice", "--name", "x", "--expires-days", "3", stdout=out)

    key = out.getvalue().strip()
    token = ApiToken.objects.get(digest=hash_token(key))
    assert token.user == alice
    assert token.name == "x"
    expected = timezone.now() + timedelta(days=3)
    assert abs(token.expiry - expected) < timedelta(minutes=1)
    assert with_key(key).get(ME).status_code == 200


def test_it_names_an_unknown_user_in_the_command_error(alice):
    with pytest.raises(CommandError) as raised:
        call_command("api_token", "nobody-here", stdout=StringIO())

    assert "nobody-here" in str(raised.value)
    assert not ApiToken.objects.exists()


def test_it_refuses_a_bad_expiry_in_the_command(alice):
    with pytest.raises(CommandError) as raised:
        call_command("api_token", "alice", "--expires-days", "0", stdout=StringIO())

    assert str(raised.value) == services.BAD_EXPIRY.format(
        max=services.MAX_EXPIRY_DAYS, value=0
    )
    assert not ApiToken.objects.exists()


# The /tokens/ page -----------------------------------------------------------------


def test_it_shows_a_new_key_once_on_the_page(client, alice):
    client.force_login(alice)

    made = client.post("/tokens/", {"name": "notebook", "expires_days": ""})

    assert made.status_code == 200
    key = made.context["new_key"]
    token = ApiToken.objects.get(user=alice)
    assert token.digest == hash_token(key)
    assert token.name == "notebook"
    assert token.expiry is None
    assert key in made.content.decode()
    assert with_key(key).get(ME).status_code == 200
    listed = client.get("/tokens/")
    assert listed.status_code == 200
    assert "notebook" in listed.content.decode()
    assert key not in listed.content.decode()


def test_it_shows_the_forms_error_for_a_bad_expiry_on_the_page(client, alice):
    client.force_login(alice)

    response = client.post("/tokens/", {"name": "n", "expires_days": "soon"})

    assert response.status_code == 200
    assert response.context["form"].errors["expires_days"] == [
        "Expires after (days) must be a whole number, got 'soon'"
    ]
    assert "new_key" not in response.context
    assert not ApiToken.objects.filter(user=alice).exists()


def test_it_revokes_a_token_on_the_page(client, alice):
    client.force_login(alice)
    new = services.api_token_create(user=alice, name="old")

    response = client.post("/tokens/", {"revoke": str(new.token.pk)})

    assert response.status_code == 302
    assert response["Location"] == "/tokens/"
    assert not ApiToken.objects.filter(pk=new.token.pk).exists()
    assert_refused(with_key(new.key).get(ME), auth.INVALID)


def test_it_refuses_to_revoke_another_users_token_on_the_page(client, alice, bob):
    client.force_login(alice)
    bobs = services.api_token_create(user=bob, name="bobs")

    response = client.post("/tokens/", {"revoke": str(bobs.token.pk)}, follow=True)

    assert response.status_code == 200
    shown = [str(message) for message in response.context["messages"]]
    assert shown == [services.NO_SUCH_TOKEN.format(id=bobs.token.pk)]
    assert ApiToken.objects.filter(pk=bobs.token.pk).exists()
    assert with_key(bobs.key).get(ME).status_code == 200


def test_it_redirects_an_anonymous_visitor_to_login(db, client):
    response = client.get("/tokens/")

    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/tokens/"
    made = client.post("/tokens/", {"name": "sneaky"})
    assert made.status_code == 302
    assert not ApiToken.objects.exists()


# Logs ------------------------------------------------------------------------------


def log_everything(caplog, monkeypatch) -> None:
    """Every logger at DEBUG, and every record reaching caplog's root handler."""
    caplog.set_level(logging.DEBUG)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger):
            continue
        if logger.level != logging.NOTSET:
            caplog.set_level(logging.DEBUG, logger=name)
        monkeypatch.setattr(logger, "propagate", True)
        monkeypatch.setattr(logger, "disabled", False)


def test_it_never_writes_a_key_to_the_logs(caplog, monkeypatch, alice):
    live = token_client(alice, scheme="Bearer")
    revoked = services.api_token_create(user=alice, name="revoked")
    services.api_token_revoke(user=alice, token_id=revoked.token.pk)
    wrong = "f" * 64
    keys = [live.key, revoked.key, wrong]
    log_everything(caplog, monkeypatch)

    with CaptureQueriesContext(connection):  # SQL is logged (at DEBUG) too
        statuses = [
            live.get(ME).status_code,
            live.post(TOKENS, {"name": "n"}, format="json").status_code,
            live.post(TOKENS, {"expires_days": -1}, format="json").status_code,
            live.get(f"{TOKENS}999999999/").status_code,
            live.delete(f"{TOKENS}999999999/").status_code,
            with_key(revoked.key).get(ME).status_code,
            with_key(wrong).get(ME).status_code,
            with_key(wrong + " extra").get(ME).status_code,
        ]

    assert statuses == [200, 201, 400, 405, 404, 401, 401, 401]
    assert any(r.name == "django.db.backends" for r in caplog.records)
    assert any(r.name == "django.request" for r in caplog.records)  # the 4xx
    leaked = [
        r.name
        for r in caplog.records
        if any(key in r.getMessage() or key in repr(r.args) for key in keys)
    ]
    assert leaked == []
    assert not any(key in caplog.text for key in keys)
