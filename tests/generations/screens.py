"""Screenshots of every page at 1280×900 and at a phone's 390 px, into docs/screens/.

Not part of the test suite (pytest collects test_*.py only); run it by hand after a
change to the pages, and commit the PNGs:

    .venv/bin/python -m pytest tests/generations/screens.py -p no:cacheprovider

It walks the same tour as the axe-core test (tests/generations/browser.py), with
the session's real Celery worker and the untrained tiny model, so the generated
images are noise: the pages, not the pictures, are what it shows.
"""

from __future__ import annotations

import pytest

from tests.conftest import PROJECT_ROOT
from tests.generations.browser import finished_import, new_page, settle, tour

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

SCREENS = PROJECT_ROOT / "docs" / "screens"
SIZES = {"desktop": (1280, 900), "phone": (390, 844)}


def test_it_photographs_every_page(
    worker, live_server, chromium, staff, tiny_version, case_with_image
):
    SCREENS.mkdir(parents=True, exist_ok=True)
    page = new_page(chromium)
    stops = tour(
        page,
        live_server.url,
        case=case_with_image,
        version=tiny_version,
        import_run=finished_import(staff),
    )
    taken = []
    for stop in stops:
        for size, (width, height) in SIZES.items():
            page.set_viewport_size({"width": width, "height": height})
            settle(page)
            path = SCREENS / f"{stop.name}-{size}.png"
            page.screenshot(path=str(path))
            taken.append(path.name)
        page.set_viewport_size({"width": 1280, "height": 900})
    assert len(taken) == 22, taken
