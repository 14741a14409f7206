"""A person in headless Chromium: log in, queue a generation, watch it finish."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

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


@pytest.fixture
def browser_page(tmp_path: Path, monkeypatch):
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
        page = browser.new_page()
        page.set_default_timeout(60_000)
        yield page
        page.screenshot(path=str(tmp_path / "last.png"))
        browser.close()


def test_it_logs_in_queues_and_sees_the_result_in_history(
    worker, live_server, browser_page, alice, tiny_version
):
    page = browser_page
    page.goto(f"{live_server.url}/")
    assert "/login/" in page.url
    page.fill("#id_username", "alice")
    page.fill("#id_password", "alice-pass-123")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    assert page.locator("#synthetic-banner").is_visible()

    page.fill("#id_prompt", "Mild cardiomegaly. No pleural effusion.")
    page.click("summary")
    page.select_option("#id_model_version", str(tiny_version.pk))
    page.fill("#id_steps", "3")
    page.fill("#id_width", "256")
    page.fill("#id_height", "256")
    page.click("#submit-generation")
    page.wait_for_url("**/requests/*/")
    # The status box updates in place, without a reload, until the job ends.
    page.wait_for_selector("[data-status=succeeded]", timeout=120_000)
    synthetic = page.locator("figure.synthetic img").first
    synthetic.wait_for()
    assert page.evaluate("(img) => img.naturalWidth", synthetic.element_handle()) == 256
    assert (
        page.locator("figure.synthetic .badge")
        .first.inner_text()
        .startswith("SYNTHETIC")
    )

    page.click("text=History")
    row = page.locator("table.history tbody tr").first
    assert "Mild cardiomegaly" in row.inner_text()
    assert "Succeeded" in row.inner_text()
