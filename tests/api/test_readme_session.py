"""The README's API session, extracted from README.md and run as written against
gunicorn and the session's real Celery worker: token, submit from a case, poll,
download the PNG. Then the same in Python with requests."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from PIL import Image

from tests.conftest import PROJECT_ROOT
from tests.world import database_url, gunicorn
from xrayweb.api import services
from xrayweb.generations.models import GenerationRequest

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

README = PROJECT_ROOT / "README.md"


def readme_block(marker: str) -> str:
    """The fenced code block right after ``<!-- api-session:<marker> -->``."""
    text = README.read_text()
    found = re.search(
        rf"<!-- api-session:{marker} -->\n```\w+\n(.*?)\n```", text, re.DOTALL
    )
    assert found, f"README.md has no block marked api-session:{marker}"
    return found.group(1)


@pytest.fixture
def web(worker, worker_media_root: Path):
    """gunicorn on the test database, sharing the worker's broker and media."""
    env = {
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "XRAY_MEDIA_ROOT": str(worker_media_root),
    }
    with gunicorn(env) as url:
        yield url, env


def test_it_runs_the_readme_curl_session(
    web, tmp_path, django_user_model, case_with_image
):
    url, env = web
    admin = django_user_model.objects.create_user("admin", password="admin-pass-123")
    script = readme_block("curl")
    # Run where it can write synthetic.png, with this checkout's Python.
    script = script.replace(
        ".venv/bin/python manage.py", f"{sys.executable} {PROJECT_ROOT}/manage.py"
    )

    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env={**os.environ, **env, "XRAY_URL": url},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    generation = GenerationRequest.objects.get(user=admin)
    assert f"generation {generation.pk}: succeeded" in done.stdout
    assert (generation.case, generation.seed) == (case_with_image, 42)
    image = generation.images.get()
    assert done.stdout.strip().splitlines()[-1] == repr(image.ssim)
    downloaded = (tmp_path / "synthetic.png").read_bytes()
    with image.image.open("rb") as stored:
        assert downloaded == stored.read()
    assert Image.open(io.BytesIO(downloaded)).size == (
        generation.width,
        generation.height,
    )
    assert admin.auth_token_set.get().name == "curl-session"


def test_it_runs_the_readme_python_session(web, tmp_path, alice, case_with_image):
    url, env = web
    key = services.api_token_create(user=alice, name="python").key

    done = subprocess.run(
        [sys.executable, "-c", readme_block("python")],
        cwd=tmp_path,
        env={**os.environ, **env, "XRAY_URL": url, "XRAY_TOKEN": key},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    generation = GenerationRequest.objects.get(user=alice)
    assert done.stdout.startswith("succeeded")
    with generation.images.get().image.open("rb") as stored:
        assert (tmp_path / "synthetic.png").read_bytes() == stored.read()
