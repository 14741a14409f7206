"""A person in headless Chromium: log in, queue a generation, watch it finish; every
page checked by axe-core once settled; the generate form used with the keyboard."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.generations.browser import (
    BLOCKING,
    axe_violations,
    finished_import,
    log_in,
    new_page,
    tour,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


@pytest.fixture
def browser_page(chromium, tmp_path: Path):
    page = new_page(chromium)
    yield page
    page.screenshot(path=str(tmp_path / "last.png"))


def test_it_logs_in_queues_and_sees_the_result_in_history(
    worker, live_server, browser_page, alice, tiny_version
):
    page = browser_page
    page.goto(f"{live_server.url}/")
    assert "/login/" in page.url
    log_in(page, live_server.url, "alice", "alice-pass-123")
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

    page.click("nav >> text=History")
    thumb = page.locator("ul.thumbs img").first
    assert "Mild cardiomegaly" in thumb.get_attribute("alt")
    assert thumb.get_attribute("loading") == "lazy"
    page.click("#to-table")
    row = page.locator("table.history tbody tr").first
    assert "Mild cardiomegaly" in row.inner_text()
    assert "Succeeded" in row.inner_text()


def test_it_passes_axe_on_every_page(
    worker,
    live_server,
    chromium,
    staff,
    tiny_version,
    case_with_image,
):
    """No serious or critical axe-core violation on the project's pages; those in
    Django's admin are printed and recorded (XRAY_AXE_REPORT: a JSON file)."""
    page = new_page(chromium)
    found = {}
    stops = tour(
        page,
        live_server.url,
        case=case_with_image,
        version=tiny_version,
        import_run=finished_import(staff),
    )
    for stop in stops:
        violations = axe_violations(page)
        found[stop.name] = {"admin": stop.admin, "violations": violations}
        counts = {impact: 0 for impact in ("minor", "moderate", *BLOCKING)}
        for violation in violations:
            counts[violation["impact"]] += violation["count"]
        print(f"axe {stop.name}: {counts} {[v['id'] for v in violations]}")
    if os.environ.get("XRAY_AXE_REPORT"):
        Path(os.environ["XRAY_AXE_REPORT"]).write_text(json.dumps(found, indent=2))
    blocking = {
        name: [v for v in page_found["violations"] if v["impact"] in BLOCKING]
        for name, page_found in found.items()
        if not page_found["admin"]
    }
    assert {name: v for name, v in blocking.items() if v} == {}
    assert len(found) == 11, sorted(found)


def test_it_works_the_generate_form_with_the_keyboard_alone(
    live_server, browser_page, alice, tiny_version
):
    page = browser_page
    log_in(page, live_server.url, "alice", "alice-pass-123")
    order = []
    for _ in range(60):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            """() => { const el = document.activeElement;
                const style = getComputedStyle(el);
                return {id: el.id, tag: el.tagName, outline: style.outlineStyle,
                        width: parseFloat(style.outlineWidth)}; }"""
        )
        order.append(focused)
        assert focused["outline"] != "none", focused  # the focus is visible
        assert focused["width"] >= 2, focused
        if focused["id"] == "id_prompt":
            page.keyboard.type("Heart size normal.")
        if focused["tag"] == "SUMMARY":
            page.keyboard.press("Enter")  # open the parameters
        if focused["id"] == "submit-generation":
            break
    ids = [item["id"] for item in order if item["id"]]
    fields = page.evaluate(
        """() => [...document.querySelectorAll(
                '#generate-form :is(input, select, textarea, button)')]
            .filter((el) => el.type !== 'hidden').map((el) => el.id)"""
    )
    assert ids[-1] == "submit-generation"
    reached = [name for name in ids if name in fields]
    assert reached == fields  # every field, in the order of the page
    page.keyboard.press("Enter")  # on the submit button: queues the request
    page.wait_for_url("**/requests/*/")
    assert "Heart size normal." in page.locator("table.params").inner_text()


def test_it_shows_a_live_preview_while_the_job_runs(
    worker, live_server, browser_page, alice, tiny_version, tiny_model_dir
):
    """The worker writes a preview every XRAY_PREVIEW_EVERY_STEPS (2) steps; the
    status box shows it while running and drops it once the result is there."""
    page = browser_page
    log_in(page, live_server.url, "alice", "alice-pass-123")
    page.fill("#id_prompt", "Mild cardiomegaly.")
    page.click("summary")
    page.select_option("#id_model_version", str(tiny_version.pk))
    page.fill("#id_steps", "100")  # several seconds: a few polls see it run
    page.fill("#id_width", "256")
    page.fill("#id_height", "256")
    page.click("#submit-generation")
    page.wait_for_url("**/requests/*/")

    preview = page.locator("#generation-preview img")
    preview.wait_for(timeout=120_000)
    running = page.locator("[data-status=running]")
    assert running.count() == 1  # shown while the job runs
    assert page.evaluate("(img) => img.complete", preview.element_handle())
    side = page.evaluate("(img) => img.naturalWidth", preview.element_handle())
    latent_side = 256 // vae_factor(tiny_model_dir)
    assert side == 2 * latent_side  # twice the latents' size, not the result's
    assert "Preview after step" in page.locator("#generation-preview").inner_text()

    page.wait_for_selector("[data-status=succeeded]", timeout=120_000)
    assert page.locator("#generation-preview").count() == 0
    assert page.locator("figure.synthetic img").count() == 1


def vae_factor(model_dir: Path) -> int:
    config = json.loads((model_dir / "vae" / "config.json").read_text())
    return 2 ** (len(config["block_out_channels"]) - 1)
