"""Staff start an import from the admin, watch it and read its report; others cannot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from tests.cases.conftest import make_tar, png_bytes, report_xml
from worker.tasks import run_import
from xrayweb.cases.forms import ImportStartForm
from xrayweb.cases.models import Case, CaseImage, ImportRun
from xrayweb.jobs.models import Status

START = reverse("admin:cases_importrun_start")


def reports_archive(tmp_path: Path) -> Path:
    return make_tar(
        tmp_path / "reports.tgz",
        [
            ("ecgen-radiology/1.xml", report_xml("CXR1", ["CXR1_IM-0001-1001"])),
            ("ecgen-radiology/2.xml", report_xml("CXR2")),
        ],
    )


def images_archive(tmp_path: Path) -> Path:
    return make_tar(tmp_path / "png.tgz", [("CXR1_IM-0001-1001.png", png_bytes())])


def take_import_message(run_id: int) -> dict | None:
    """Remove this run's message from the broker's cpu queue; it, or None."""
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    for raw in broker.lrange("cpu", 0, -1):
        message = json.loads(raw)
        headers = message.get("headers", {})
        if headers.get("task") == "imports.run" and headers.get("argsrepr") == (
            f"[{run_id}]"
        ):
            broker.lrem("cpu", 1, raw)
            return message
    return None


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


def test_it_runs_an_import_from_a_server_path(
    staff_client, staff, tmp_path, importer, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            START,
            {
                "reports": str(reports_archive(tmp_path)),
                "images": str(images_archive(tmp_path)),
                "seed": 3,
            },
        )

    run = ImportRun.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse(
        "admin:cases_importrun_report", args=[run.pk]
    )
    assert (run.status, run.created_by, run.options["seed"]) == ("queued", staff, 3)
    assert take_import_message(run.pk) is not None  # on the cpu queue

    queued = staff_client.get(response["Location"])
    assert b'data-poll="?fragment=1"' in queued.content
    fragment = staff_client.get(response["Location"], {"fragment": "1"})
    assert b"Queued: number 1 in the queue" in fragment.content
    assert b"data-terminal" not in fragment.content

    run_import(run.pk)
    run_import(run.pk)  # a redelivered message finds the run claimed: nothing happens

    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert run.report["cases"]["created"] == 2
    assert Case.objects.get(uid="CXR1").split_seed == 3
    assert CaseImage.objects.get().image_id == "CXR1_IM-0001-1001"
    page = staff_client.get(response["Location"])
    assert b"Cases: 2 created" in page.content
    assert b"report without image" in page.content  # CXR2 has no image
    fragment = staff_client.get(response["Location"], {"fragment": "1"}).content
    assert b"data-terminal" in fragment
    assert b"Succeeded after " in fragment
    progress = staff_client.get(
        reverse("admin:cases_importrun_progress", args=[run.pk])
    ).json()
    assert (progress["status"], progress["finished"]) == ("succeeded", True)


def test_it_runs_an_import_from_an_upload(
    staff_client, tmp_path, media_root, importer, django_capture_on_commit_callbacks
):
    upload = SimpleUploadedFile(
        "NLMCXR_reports.tgz", reports_archive(tmp_path).read_bytes()
    )
    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(START, {"reports_upload": upload, "seed": 1})

    run = ImportRun.objects.get()
    take_import_message(run.pk)
    # The archive is kept in storage under a key, not as a path of the web host.
    key = run.options["reports_key"]
    assert key.startswith("imports/uploads/")
    assert (media_root / key).is_file()
    assert "reports" not in run.options
    run_import(run.pk)
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert Case.objects.count() == 2


def test_it_records_a_failed_import(staff_client, tmp_path, importer):
    missing = tmp_path / "gone.tgz"
    missing.write_bytes(b"")
    staff_client.post(START, {"reports": str(missing), "seed": 1})
    run = ImportRun.objects.get()
    take_import_message(run.pk)
    missing.unlink()  # gone between the form and the worker: the run fails, clearly

    run_import(run.pk)

    run.refresh_from_db()
    assert run.status == Status.FAILED
    assert "gone.tgz" in run.error
    page = staff_client.get(reverse("admin:cases_importrun_report", args=[run.pk]))
    assert b"gone.tgz" in page.content


def test_it_names_the_missing_server_path(staff_client, tmp_path):
    missing = str(tmp_path / "nowhere" / "r.tgz")
    response = staff_client.post(START, {"reports": missing, "seed": 1})

    assert response.status_code == 200
    assert f"reports path &#x27;{missing}&#x27; does not exist" in (
        response.content.decode()
    )
    assert not ImportRun.objects.exists()


@pytest.mark.parametrize("outside", ["/etc", "/etc/passwd", "/nowhere/r.tgz"])
def test_it_refuses_a_server_path_outside_the_import_roots(
    staff_client, settings, tmp_path, outside: str
):
    settings.XRAY_IMPORT_ROOTS = [tmp_path / "imports"]

    response = staff_client.post(START, {"reports": outside, "seed": 1})

    page = response.content.decode()
    assert f"reports path &#x27;{outside}&#x27; is not under an import folder" in page
    assert "does not exist" not in page  # says nothing about what is there
    assert not ImportRun.objects.exists()


def test_it_needs_a_source(staff_client):
    response = staff_client.post(START, {"seed": 1})

    assert b"Give at least one of reports" in response.content
    assert not ImportRun.objects.exists()


def test_it_shows_the_start_form_and_lists_runs(staff_client):
    run = ImportRun.objects.create(options={"reports": "x"})

    assert staff_client.get(START).status_code == 200
    changelist = staff_client.get(reverse("admin:cases_importrun_changelist"))
    assert START.encode() in changelist.content
    report = reverse("admin:cases_importrun_report", args=[run.pk])
    assert report.encode() in changelist.content


@pytest.mark.parametrize("who", ["anonymous", "alice"])
def test_it_keeps_non_staff_out(client, alice, tmp_path, who):
    if who == "alice":
        client.force_login(alice)
    run = ImportRun.objects.create(options={"reports": "x"})
    urls = [
        START,
        reverse("admin:cases_importrun_report", args=[run.pk]),
        reverse("admin:cases_importrun_progress", args=[run.pk]),
    ]

    for url in urls:
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
    response = client.post(START, {"reports": str(reports_archive(tmp_path))})

    assert response.status_code == 302
    assert ImportRun.objects.count() == 1


def test_it_refuses_staff_without_the_import_permission(client, django_user_model):
    clerk = django_user_model.objects.create_user("dave", password="x", is_staff=True)
    client.force_login(clerk)

    assert client.get(START).status_code == 403
    assert client.post(START, {"reports": "/etc", "seed": 1}).status_code == 403
    assert not ImportRun.objects.exists()


def test_it_labels_every_import_field_in_words_with_help():
    for name, field in ImportStartForm.base_fields.items():
        assert field.label is not None, name  # None: made from the name
        assert field.help_text, name


def test_the_api_refuses_a_server_path_outside_the_import_roots(
    staff_client, settings, tmp_path
):
    settings.XRAY_IMPORT_ROOTS = [tmp_path / "imports"]

    answer = staff_client.post(
        "/api/v1/imports/",
        {"reports": "/etc/passwd", "seed": 1},
        content_type="application/json",
    )

    assert answer.status_code == 400
    message = answer.json()["errors"][0]["message"]
    assert message.startswith("reports path '/etc/passwd' is not under an import")
    assert not ImportRun.objects.exists()
