"""The generation tests' helper: what the generate form posts."""

from __future__ import annotations

import pytest

# The worker and case fixtures are in tests/conftest.py, their helpers in
# tests/world.py; these names stay importable from here.
from tests.generations.browser import chromium  # noqa: F401 (a fixture)
from tests.world import (  # noqa: F401
    chest_like_png,
    database_url,
    wait_for_status,
)


@pytest.fixture(autouse=True)
def heartbeat_after_the_test(settings) -> None:
    """A runner called in the test process beats from its own thread and database
    connection, which cannot see the rows of a test's open transaction: a beat would
    find no row and take the job for lost. Under load a test can outlast the 15 s
    interval, so in-process runs beat only past any test's length (tests/jobs tests
    the heartbeat with real workers and a 0.5 s interval)."""
    settings.XRAY_JOB_HEARTBEAT_S = 3600


def form_data(version, **overrides) -> dict:
    """What the generate form posts: valid values for every field, then overrides."""
    data = {
        "prompt": "Heart size normal.",
        "negative_prompt": "",
        "model_version": version.pk,
        "seed": "5",
        "steps": "4",
        "guidance_scale": "7.5",
        "scheduler": "dpmpp",
        "width": "256",
        "height": "256",
        "num_images": "1",
        "lora_scale": "1.0",
    }
    return {**data, **overrides}
