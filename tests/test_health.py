"""/healthz: 200 while the database, the broker and storage answer; 503 naming the
part that does not, the others still "ok"; never a 500, never a login."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from django.conf import settings as django_settings

from tests.jobs.conftest import _use_broker, free_port
from tests.world import gunicorn

ALL_OK = {"database": "ok", "broker": "ok", "storage": "ok"}


@pytest.fixture
def dead_broker() -> Iterator[str]:
    """The Celery app pointed at a port nothing listens on; restored afterwards."""
    from worker.app import app

    url = f"redis://127.0.0.1:{free_port()}/0"
    previous = _use_broker(app, url)
    yield url
    _use_broker(app, previous)


def test_it_answers_200_when_everything_is_up(client, db, media_root):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == ALL_OK
    assert response["Cache-Control"].startswith("max-age=0")
    assert "sessionid" not in response.cookies
    # The probe file is written and deleted again.
    assert list((media_root / "healthz").iterdir()) == []


def test_it_answers_503_naming_the_broker_when_redis_is_down(client, db, dead_broker):
    port = dead_broker.rsplit(":", 1)[1].split("/")[0]

    response = client.get("/healthz")

    assert response.status_code == 503
    body = response.json()
    assert body["broker"].startswith("unreachable: ")
    assert f"127.0.0.1:{port}" in body["broker"]
    assert {k: v for k, v in body.items() if k != "broker"} == {
        "database": "ok",
        "storage": "ok",
    }


def test_it_answers_503_naming_storage_when_media_root_is_a_file(
    client, db, settings, tmp_path
):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where MEDIA_ROOT should be")
    settings.MEDIA_ROOT = blocker

    response = client.get("/healthz")

    assert response.status_code == 503
    body = response.json()
    assert body["storage"].startswith("unusable: ")
    assert str(blocker) in body["storage"]
    assert (body["database"], body["broker"]) == ("ok", "ok")
    assert blocker.read_text() == "a file where MEDIA_ROOT should be"


def test_it_needs_no_login_and_refuses_writes(client, db):
    assert client.get("/healthz").status_code == 200  # anonymous
    assert client.head("/healthz").status_code == 200
    assert client.post("/healthz").status_code == 405


@pytest.fixture
def web_without_database(db, tmp_path: Path) -> Iterator[str]:
    """gunicorn whose DATABASE_URL points at a port nothing listens on."""
    if django_settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        pytest.skip("needs PostgreSQL: SQLite has no server to lose")
    env = {
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{free_port()}/nowhere",
        "XRAY_MEDIA_ROOT": str(tmp_path / "media"),
    }
    with gunicorn(env, workers=1) as url:
        yield url


@pytest.mark.slow
def test_it_answers_503_naming_the_database_when_postgresql_is_down(
    web_without_database,
):
    response = requests.get(f"{web_without_database}/healthz", timeout=30)

    assert response.status_code == 503
    body = response.json()
    assert body["database"].startswith("unreachable: ")
    assert "Connection refused" in body["database"]
    assert (body["broker"], body["storage"]) == ("ok", "ok")


@pytest.mark.slow
def test_it_answers_200_with_an_s3_bucket_and_leaves_no_probe(
    client, db, s3_server, s3_storage
):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == ALL_OK
    assert s3_server.keys(s3_storage["AWS_STORAGE_BUCKET_NAME"]) == set()


@pytest.mark.slow
def test_it_answers_503_naming_storage_when_s3_refuses_the_credentials(
    client, db, settings, s3_storage
):
    settings.AWS_SECRET_ACCESS_KEY = "not-the-secret"
    settings.STORAGES = {**settings.STORAGES}  # a fresh default_storage

    response = client.get("/healthz")

    assert response.status_code == 503
    body = response.json()
    assert body["storage"].startswith("unusable: ")
    assert "(SignatureDoesNotMatch) when calling the PutObject" in body["storage"]
    assert (body["database"], body["broker"]) == ("ok", "ok")
