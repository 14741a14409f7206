"""Typed readers for settings from the environment; a malformed value fails loudly."""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    if raw.lower() in TRUE:
        return True
    if raw.lower() in FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name} must be a boolean (1/0, true/false), got {raw!r}"
    )


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None


def env_float(name: str, default: float | None = None) -> float | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    return Path(raw).expanduser().resolve() if raw else default


# Values that ship in this repository or its docs: anyone can read them, so a
# production site must not sign its sessions with them.
PLACEHOLDER_SECRET_KEYS = frozenset(
    {
        "change-me",
        "changeme",
        "secret",
        "test-secret-key",
        "insecure-development-key-only-for-xray_debug=1",
    }
)
MIN_SECRET_KEY_LENGTH = 50  # Django's deploy check asks for 50 characters
SECRET_KEY_HINT = (
    'generate one with: python -c "import secrets; print(secrets.token_urlsafe(50))"'
)


def secret_key(raw: str, *, debug: bool) -> str:
    """SECRET_KEY as given; in development any value (a fixed one when unset), in
    production one that is long, varied and not a placeholder from the docs."""
    if debug:
        return raw or "insecure-development-key-only-for-XRAY_DEBUG=1"
    if not raw:
        reason = "is unset"
    elif raw.lower() in PLACEHOLDER_SECRET_KEYS:
        reason = f"is the placeholder {raw!r}"
    elif len(raw) < MIN_SECRET_KEY_LENGTH or len(set(raw)) < 5:
        reason = f"has {len(raw)} characters ({len(set(raw))} distinct)"
    else:
        return raw
    raise ImproperlyConfigured(
        f"SECRET_KEY {reason}; with XRAY_DEBUG off it must have at least "
        f"{MIN_SECRET_KEY_LENGTH} characters, 5 distinct, and not be a placeholder "
        f"({SECRET_KEY_HINT}). For development and tests set XRAY_DEBUG=1."
    )
