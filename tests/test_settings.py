"""Production settings: Django's deploy check passes with the documented variables,
and the settings refuse a placeholder key or a silent SQLite."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from tests.conftest import PROJECT_ROOT
from xrayweb.env import PLACEHOLDER_SECRET_KEYS, secret_key

PRODUCTION = {
    "XRAY_DEBUG": "0",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "ALLOWED_HOSTS": "xray.example.org",
    "CSRF_TRUSTED_ORIGINS": "https://xray.example.org",
    "XRAY_BEHIND_TLS_PROXY": "1",
    "DATABASE_URL": "postgres://xray@db.example.org:5432/xrayweb",
}
# Variables of the development environment the tests run in, which a production
# host would not have.
DEVELOPMENT_ONLY = ("XRAY_HTTPS", "XRAY_ALLOW_SQLITE", "XRAY_HSTS_SECONDS")


def manage(*args: str, **env: str | None) -> subprocess.CompletedProcess:
    """``manage.py args`` in a fresh process with the production variables, changed
    by ``env`` (None removes one)."""
    merged = {k: v for k, v in os.environ.items() if k not in DEVELOPMENT_ONLY}
    merged.update(PRODUCTION)
    for name, value in env.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT_ROOT,
        env=merged,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_it_passes_the_deploy_check_with_the_production_variables():
    result = manage("check", "--deploy", "--fail-level", "WARNING")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_it_fails_the_deploy_check_when_https_is_turned_off():
    result = manage("check", "--deploy", "--fail-level", "WARNING", XRAY_HTTPS="0")

    assert result.returncode != 0
    for check in ("security.W004", "security.W008", "security.W012", "W016"):
        assert check in result.stderr


def test_it_refuses_the_old_example_secret_key_in_production():
    result = manage("check", SECRET_KEY="change-me")

    assert result.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY " in result.stderr
    assert "XRAY_DEBUG=1" in result.stderr


def test_it_refuses_sqlite_in_production_unless_allowed():
    refused = manage("check", DATABASE_URL=None)
    allowed = manage("check", DATABASE_URL=None, XRAY_ALLOW_SQLITE="1")

    assert refused.returncode != 0
    assert "DATABASE_URL is unset while XRAY_DEBUG is off" in refused.stderr
    assert allowed.returncode == 0, allowed.stderr


def test_it_runs_in_development_with_nothing_set():
    result = manage("check", XRAY_DEBUG="1", SECRET_KEY=None, DATABASE_URL=None)

    assert result.returncode == 0, result.stderr


def test_it_serves_production_over_https_only_with_secure_cookies():
    script = (
        "from django.test import Client\n"
        "c = Client(HTTP_HOST='xray.example.org')\n"
        "plain = c.get('/login/')\n"
        "print('plain', plain.status_code, plain['Location'])\n"
        "tls = c.get('/login/', headers={'X-Forwarded-Proto': 'https'})\n"
        "print('hsts', tls['Strict-Transport-Security'])\n"
        "print('cookie', tls.cookies['csrftoken'].output())\n"
        "print('health', c.get('/healthz').status_code != 301)\n"
    )
    result = manage("shell", "-c", script, ALLOWED_HOSTS="xray.example.org,testserver")

    assert result.returncode == 0, result.stderr
    keys = ("plain ", "hsts ", "cookie ", "health ")
    lines = dict(
        line.split(" ", 1)
        for line in result.stdout.splitlines()
        if line.startswith(keys)
    )
    assert lines["plain"] == "301 https://xray.example.org/login/"
    assert lines["hsts"] == "max-age=31536000; includeSubDomains; preload"
    assert "; Secure" in lines["cookie"]
    assert "; HttpOnly" in lines["cookie"]
    assert lines["health"] == "True"  # probes over http are not redirected


def test_it_accepts_any_key_in_development_and_a_strong_one_in_production():
    strong = secrets.token_urlsafe(50)
    for weak in ("x" * 60, "short", ""):
        with pytest.raises(ImproperlyConfigured, match="XRAY_DEBUG=1"):
            secret_key(weak, debug=False)

    assert secret_key("change-me", debug=True) == "change-me"
    assert secret_key("", debug=True)
    assert secret_key(strong, debug=False) == strong
    for placeholder in PLACEHOLDER_SECRET_KEYS:
        with pytest.raises(ImproperlyConfigured, match="placeholder"):
            secret_key(placeholder.upper(), debug=False)


CSRF_SCRIPT = (
    "from django.test import Client\n"
    "c = Client(enforce_csrf_checks=True, raise_request_exception=False,\n"
    "           HTTP_HOST='xray.example.org')\n"
    "tls = {'X-Forwarded-Proto': 'https'}\n"
    "page = c.get('/login/', headers=tls)\n"
    "token = page.cookies['csrftoken'].value\n"
    "form = {'username': 'nobody', 'password': 'x', 'csrfmiddlewaretoken': token}\n"
    "for origin in ('https://xray.example.org', 'https://elsewhere.example.org'):\n"
    "    answer = c.post('/login/', form, headers={**tls, 'Origin': origin})\n"
    "    print('origin', origin, answer.status_code)\n"
)


def test_a_post_through_the_tls_proxy_passes_the_csrf_origin_check():
    # An in-memory database: the login view may fail after the CSRF check, which is
    # all this looks at (403 is the CSRF refusal).
    result = manage("shell", "-c", CSRF_SCRIPT, DATABASE_URL="sqlite://:memory:")

    assert result.returncode == 0, result.stderr
    answers = dict(
        line.removeprefix("origin ").split(" ")
        for line in result.stdout.splitlines()
        if line.startswith("origin ")
    )
    assert answers["https://elsewhere.example.org"] == "403"
    assert answers["https://xray.example.org"] != "403"


def test_it_trusts_x_forwarded_proto_only_behind_a_declared_proxy():
    script = (
        "from django.test import Client\n"
        "c = Client(HTTP_HOST='xray.example.org')\n"
        "answer = c.get('/login/', headers={'X-Forwarded-Proto': 'https'})\n"
        "print('status', answer.status_code)\n"
    )

    declared = manage("shell", "-c", script)
    undeclared = manage("shell", "-c", script, XRAY_BEHIND_TLS_PROXY=None)

    assert "status 200" in declared.stdout, declared.stderr
    assert "status 301" in undeclared.stdout, undeclared.stderr  # still redirected
