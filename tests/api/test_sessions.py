"""Browser sessions on the API: a logged-in page's cookie works, and writes need
the CSRF token as on every form."""

from __future__ import annotations

import pytest
from django.test import Client

from xrayweb.generations.models import GenerationRequest

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser(alice) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    return client


def submit(client: Client, version, **headers):
    body = {"prompt": "Clear lungs.", "model_version": version.pk, "steps": 2}
    return client.post(
        "/api/v1/generations/", body, content_type="application/json", **headers
    )


def test_it_reads_with_the_session_cookie(browser, tiny_version):
    response = browser.get("/api/v1/models/")

    assert response.status_code == 200
    assert tiny_version.pk in [version["id"] for version in response.json()]


def test_it_refuses_a_session_write_without_the_csrf_token(browser, tiny_version):
    response = submit(browser, tiny_version)

    assert response.status_code == 403
    [error] = response.json()["errors"]
    assert error["field"] is None
    assert "CSRF" in error["message"]
    assert not GenerationRequest.objects.exists()


def test_it_accepts_a_session_write_with_the_csrf_token(browser, alice, tiny_version):
    browser.get("/")  # any page sets the csrftoken cookie
    token = browser.cookies["csrftoken"].value

    response = submit(browser, tiny_version, HTTP_X_CSRFTOKEN=token)

    assert response.status_code == 201, response.json()
    assert GenerationRequest.objects.get().user == alice
