"""The browser tests' shared world: Chromium through Playwright, logging in, waiting
until a page has settled, axe-core, and a tour of every page with real data.

Used by test_browser.py (axe-core and the keyboard, in CI) and screens.py (the
screenshots in docs/screens/, run by hand). Nothing is fetched at run time: axe-core
is the axe.min.js that the pinned axe-playwright-python ships.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("XRAY_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BLOCKING = ("serious", "critical")  # impacts that fail the project's own pages
# Every poll box holds data-terminal once its job has ended: no poll is in flight.
SETTLED = """() => [...document.querySelectorAll('[data-poll]')].every(
    (box) => box.querySelector('[data-terminal]'))"""
STAFF_PASSWORD = "charlie-pass-123"  # tests/conftest.py's staff user


def axe_script() -> Path:
    import axe_playwright_python

    return Path(axe_playwright_python.__file__).parent / "axe.min.js"


@pytest.fixture
def chromium(monkeypatch) -> Iterator[object]:
    """A headless Chromium (Debian's), or a skip naming how to get it."""
    if not CHROMIUM.exists() and not shutil.which("chromium"):
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls made
    # by the test itself between page actions are plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


def new_page(browser: object, *, width: int = 1280, height: int = 900) -> object:
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(60_000)
    return page


def log_in(page: object, base_url: str, username: str, password: str) -> None:
    page.goto(f"{base_url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("form.card button[type=submit]")
    page.wait_for_url(f"{base_url}/")


def settle(page: object) -> None:
    """Wait until the page has loaded, its images too, and no poll is in flight."""
    page.wait_for_load_state("networkidle")
    page.wait_for_function(SETTLED)
    page.wait_for_load_state("networkidle")


def axe_violations(page: object) -> list[dict]:
    """axe-core's violations on the settled page, every rule on."""
    settle(page)
    page.add_script_tag(path=str(axe_script()))
    return page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ["violations"]}))
            .violations.map((v) => ({id: v.id, impact: v.impact, help: v.help,
              nodes: v.nodes.map((n) => n.target.join(" ")).slice(0, 5),
              count: v.nodes.length}))"""
    )


@dataclass(frozen=True)
class Stop:
    """One page of the tour: a name (also the screenshot's file name), and whether
    it is inside Django's admin (listed, not held to the project's bar)."""

    name: str
    admin: bool = False


def tour(page: object, base_url: str, *, case, version, import_run) -> Iterator[Stop]:
    """Walk every page as the staff user with real data, yielding each once it is
    shown: log in, generate (a case picked), the finished request's status, the
    history as gallery and table, the comparison, training, evaluations, and the
    admin's import pages. The caller checks or photographs each."""
    page.goto(f"{base_url}/login/")
    yield Stop("login")
    log_in(page, base_url, "charlie", STAFF_PASSWORD)
    page.goto(f"{base_url}/?case={case.pk}")
    page.click("summary")
    page.select_option("#id_model_version", str(version.pk))
    for field, value in (("steps", "2"), ("width", "64"), ("height", "64")):
        page.fill(f"#id_{field}", value)
    page.fill("#id_num_images", "2")
    yield Stop("generate")
    page.click("#submit-generation")
    page.wait_for_url("**/requests/*/")
    request_url = page.url
    page.wait_for_selector("[data-status=succeeded]", timeout=120_000)
    yield Stop("status")
    page.goto(f"{base_url}/history/")
    yield Stop("history-gallery")
    page.goto(f"{base_url}/history/table/")
    yield Stop("history-table")
    page.goto(f"{request_url}compare/0/")
    yield Stop("comparison")
    page.goto(f"{base_url}/training/")
    yield Stop("training")
    page.goto(f"{base_url}/training/evaluations/")
    yield Stop("evaluations")
    page.goto(f"{base_url}/admin/cases/importrun/start/")
    yield Stop("admin-import-start", admin=True)
    page.goto(f"{base_url}/admin/cases/importrun/")
    yield Stop("admin-import-list", admin=True)
    page.goto(f"{base_url}/admin/cases/importrun/{import_run.pk}/report/")
    yield Stop("admin-import-report", admin=True)


def finished_import(user):
    """A finished import with a report, for the admin's report page."""
    from django.utils import timezone

    from xrayweb.cases.models import ImportRun
    from xrayweb.jobs.models import Status

    now = timezone.now()
    return ImportRun.objects.create(
        created_by=user,
        options={"kaggle_dir": "data/iuxray-kaggle", "seed": 0},
        status=Status.SUCCEEDED,
        phase="images",
        progress_done=4,
        progress_total=4,
        started_at=now - timezone.timedelta(seconds=12),
        finished_at=now,
        report={
            "cases": {"created": 3, "updated": 0, "unchanged": 0},
            "images": {"created": 4, "updated": 0, "unchanged": 0},
            "skipped_total": 1,
            "skipped_by_kind": {"report without image": 1},
            "skipped": [{"item": "CXR2", "reason": "report without image"}],
            "seconds": 1.2,
        },
    )
