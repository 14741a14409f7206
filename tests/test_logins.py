"""Login protection: lockout per username and per address on the login page and
the admin, the unlock, API tokens refused while locked, password validation and
changes, and the first admin's password kept out of logs."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from xrayweb.api.models import ApiToken
from xrayweb.generations.management.commands.ensure_admin import PASSWORD_FILE

LIMIT = 3


@pytest.fixture
def lockout(settings) -> None:
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = LIMIT


def from_address(address: str) -> Client:
    return Client(REMOTE_ADDR=address)


def log_in(client: Client, username: str, password: str, url: str = "/login/"):
    return client.post(url, {"username": username, "password": password})


def logged_in_as(client: Client) -> str | None:
    user_id = client.session.get("_auth_user_id")
    if user_id is None:
        return None
    return get_user_model().objects.get(pk=user_id).username


def test_it_locks_a_username_out_after_repeated_failures(lockout, alice):
    first, second = from_address("10.0.0.1"), from_address("10.0.0.2")
    answers = [
        log_in((first, second)[n % 2], "alice", "wrong").status_code
        for n in range(LIMIT)
    ]

    right = log_in(from_address("10.0.0.3"), "alice", "alice-pass-123")

    assert answers == [200] * (LIMIT - 1) + [429]
    assert right.status_code == 429
    assert "Too many failed logins" in right.content.decode()
    assert "<strong>alice</strong>" in right.content.decode()


def test_it_locks_an_address_out_whatever_the_username(lockout, alice, bob):
    attacker = from_address("10.0.0.66")
    for n in range(LIMIT):
        log_in(attacker, f"guess{n}", "wrong")

    refused = log_in(attacker, "bob", "bob-pass-123")
    elsewhere = from_address("10.0.0.7")
    allowed = log_in(elsewhere, "bob", "bob-pass-123")

    assert refused.status_code == 429
    assert logged_in_as(attacker) is None
    assert allowed.status_code == 302
    assert logged_in_as(elsewhere) == "bob"


def test_it_counts_failures_on_the_admin_login_too(lockout, staff):
    client = from_address("10.0.0.9")
    for _ in range(LIMIT):
        log_in(client, "charlie", "wrong", url="/admin/login/")

    refused = log_in(from_address("10.0.0.10"), "charlie", "charlie-pass-123")

    assert refused.status_code == 429
    on_admin = AccessAttempt.objects.get(username="charlie", path_info="/admin/login/")
    assert on_admin.failures_since_start == LIMIT


def test_it_lets_a_locked_user_in_once_an_administrator_unlocks(lockout, alice, staff):
    for _ in range(LIMIT):
        log_in(from_address("10.0.0.1"), "alice", "wrong")
    admin = Client()
    admin.force_login(staff)
    attempts = list(AccessAttempt.objects.filter(username="alice"))
    changelist = reverse("admin:axes_accessattempt_changelist")

    unlocked = admin.post(
        changelist,
        {
            "action": "delete_selected",
            "_selected_action": [a.pk for a in attempts],
            "post": "yes",
        },
    )
    remaining = AccessAttempt.objects.filter(username="alice").count()
    user = from_address("10.0.0.2")
    again = log_in(user, "alice", "alice-pass-123")

    assert unlocked.status_code == 302
    assert remaining == 0
    assert again.status_code == 302, again.content.decode()
    assert logged_in_as(user) == "alice"


def test_it_refuses_new_api_tokens_while_the_account_is_locked(lockout, alice):
    session = from_address("10.0.0.1")
    session.force_login(alice)
    for _ in range(LIMIT):
        log_in(from_address("10.0.0.99"), "alice", "wrong")

    api = session.post("/api/v1/tokens/", {}, content_type="application/json")
    page = session.post("/tokens/", {"name": "script"}, follow=True)

    assert api.status_code == 403
    assert "No API token can be made" in api.json()["errors"][0]["message"]
    assert "No API token can be made" in page.content.decode()
    assert not ApiToken.objects.filter(user=alice).exists()


def test_it_takes_the_address_a_trusted_proxy_appended(settings, rf):
    from xrayweb.logins import client_ip

    request = rf.get("/", HTTP_X_FORWARDED_FOR="1.2.3.4, 10.9.8.7")
    request.META["REMOTE_ADDR"] = "127.0.0.1"

    settings.XRAY_BEHIND_TLS_PROXY = False
    direct = client_ip(request)
    settings.XRAY_BEHIND_TLS_PROXY = True

    assert direct == "127.0.0.1"
    assert client_ip(request) == "10.9.8.7"  # the client wrote 1.2.3.4 itself


# Passwords -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weak", "reason"),
    [
        ("alice1234", "too similar to the username"),
        ("short1!", "too short"),
        ("password123", "too common"),
        ("8172635490312", "entirely numeric"),
    ],
)
def test_it_refuses_a_weak_new_password(client, alice, weak: str, reason: str):
    client.force_login(alice)

    page = client.post(
        "/password/",
        {
            "old_password": "alice-pass-123",
            "new_password1": weak,
            "new_password2": weak,
        },
    )

    assert page.status_code == 200
    assert reason in page.content.decode()
    alice.refresh_from_db()
    assert alice.check_password("alice-pass-123")


def test_it_lets_a_user_change_their_password(client, alice):
    client.force_login(alice)
    new = "Lantern-Orbit-4471"

    changed = client.post(
        "/password/",
        {"old_password": "alice-pass-123", "new_password1": new, "new_password2": new},
    )

    assert changed.status_code == 302
    assert changed["Location"] == "/password/done/"
    alice.refresh_from_db()
    assert alice.check_password(new)


def test_it_lets_staff_reset_a_users_password_in_the_admin(client, staff, alice):
    client.force_login(staff)
    new = "Copper-Meadow-9034"

    reset = client.post(
        reverse("admin:auth_user_password_change", args=[alice.pk]),
        {"password1": new, "password2": new},
    )

    assert reset.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password(new)


# The first admin -------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def var_dir(settings, tmp_path: Path, monkeypatch) -> Path:
    settings.VAR_DIR = tmp_path / "var"
    monkeypatch.delenv("XRAY_ADMIN_PASSWORD", raising=False)
    monkeypatch.setenv("XRAY_ADMIN_USER", "admin")
    return settings.VAR_DIR


def test_it_writes_a_generated_admin_password_to_a_private_file(db, var_dir: Path):
    out = io.StringIO()

    call_command("ensure_admin", stdout=out)

    path = var_dir / PASSWORD_FILE
    password = path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert str(path) in out.getvalue()
    assert password not in out.getvalue()
    assert get_user_model().objects.get(username="admin").check_password(password)


def test_it_prints_a_generated_admin_password_only_to_a_terminal(db, var_dir: Path):
    out = Terminal()

    call_command("ensure_admin", stdout=out)

    password = out.getvalue().split("with password ")[1].strip().strip("'")
    assert get_user_model().objects.get(username="admin").check_password(password)
    assert not (var_dir / PASSWORD_FILE).exists()


def test_it_refuses_a_weak_admin_password_from_the_environment(
    db, var_dir: Path, monkeypatch
):
    monkeypatch.setenv("XRAY_ADMIN_PASSWORD", "admin123")

    with pytest.raises(CommandError, match=r"XRAY_ADMIN_PASSWORD is refused: .*common"):
        call_command("ensure_admin", stdout=io.StringIO())

    assert not get_user_model().objects.filter(username="admin").exists()


def test_it_never_prints_an_admin_password_from_the_environment(
    db, var_dir: Path, monkeypatch
):
    monkeypatch.setenv("XRAY_ADMIN_PASSWORD", "Granite-Harbor-5521")
    out = Terminal()

    call_command("ensure_admin", stdout=out)

    assert "Granite-Harbor-5521" not in out.getvalue()
    admin = get_user_model().objects.get(username="admin")
    assert admin.check_password("Granite-Harbor-5521")
    assert admin.is_superuser
