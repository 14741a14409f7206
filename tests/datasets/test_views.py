"""Dataset pages: the list and form, a bad upload refused on the page with nothing
queued, and another user's dataset a 404 on every page."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from tests.datasets.conftest import create
from tests.datasets.test_end_to_end import form
from xrayweb.datasets import sources
from xrayweb.datasets.models import Dataset, DatasetExport
from xrayweb.jobs.models import Status


def test_it_lists_only_ones_own_datasets(client, alice, bob, tiny_version):
    mine = create(alice, tiny_version, name="mine")
    create(bob, tiny_version, name="bobs")
    client.force_login(alice)

    response = client.get(reverse("datasets_home"))

    assert list(response.context["datasets"]) == [mine]
    assert reverse("datasets_home") in response.content.decode()  # the nav link


def test_it_refuses_a_csv_without_a_prompt_column_and_queues_nothing(
    client, alice, tiny_version, sent, django_capture_on_commit_callbacks
):
    client.force_login(alice)
    upload = SimpleUploadedFile("labels.csv", b"text,finding\nClear.,normal\n")

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("datasets_home"), form(tiny_version, upload=upload)
        )

    assert response.status_code == 200
    message = sources.NO_PROMPT_COLUMN.format(
        name="labels.csv", columns="'text', 'finding'"
    )
    assert response.context["form"].non_field_errors() == [message]
    assert not Dataset.objects.exists()
    assert sent == []


@pytest.mark.parametrize("method", ["get", "post"])
def test_another_users_dataset_is_404_on_every_page(
    client, alice, bob, tiny_version, method
):
    dataset = create(alice, tiny_version)
    Dataset.objects.filter(pk=dataset.pk).update(status=Status.SUCCEEDED)
    export = DatasetExport.objects.create(
        dataset=dataset, status=Status.SUCCEEDED, archive="exports/1/x.zip"
    )
    client.force_login(bob)
    pages = [
        reverse("dataset_detail", args=[dataset.pk]),
        reverse("dataset_cancel", args=[dataset.pk]),
        reverse("dataset_export", args=[dataset.pk]),
        reverse("dataset_download", args=[dataset.pk, export.pk]),
    ]

    codes = [getattr(client, method)(page).status_code for page in pages]

    expected = [404, 405, 405, 404] if method == "get" else [404, 404, 404, 404]
    assert codes == expected
    dataset.refresh_from_db()
    assert dataset.cancel_requested_at is None
    assert dataset.exports.count() == 1


def test_it_shows_progress_and_cancels_from_the_page(client, alice, tiny_version):
    dataset = create(alice, tiny_version)
    client.force_login(alice)

    page = client.get(reverse("dataset_detail", args=[dataset.pk]))
    assert (
        page.context["progress"].images_done,
        page.context["progress"].images_total,
    ) == (0, 6)
    client.post(reverse("dataset_cancel", args=[dataset.pk]))

    dataset.refresh_from_db()
    assert dataset.status == Status.CANCELLED
    assert not dataset.chunks.exclude(status=Status.CANCELLED).exists()


@pytest.mark.parametrize(
    ("posted", "include_dicom"), [({"dicom": "on"}, True), ({}, False)]
)
def test_it_exports_with_dicom_only_when_the_box_is_ticked(
    client, alice, tiny_version, posted, include_dicom
):
    dataset = create(alice, tiny_version)
    Dataset.objects.filter(pk=dataset.pk).update(status=Status.SUCCEEDED)
    client.force_login(alice)

    page = client.get(reverse("dataset_detail", args=[dataset.pk]))
    client.post(reverse("dataset_export", args=[dataset.pk]), posted)

    assert 'name="dicom"' in page.content.decode()
    assert dataset.exports.get().include_dicom is include_dicom


def test_it_labels_the_dataset_form_in_words_with_help(client, alice, tiny_version):
    """Every field has a label written for it (none derived from its name), and the
    generation parameters read as on the generate page."""
    from xrayweb.datasets.forms import GENERATION_WORDS, DatasetForm
    from xrayweb.generations.forms import GenerationForm

    form = DatasetForm()
    client.force_login(alice)
    html = client.get(reverse("datasets_home")).content.decode()

    for name, field in form.fields.items():
        assert field.label is not None, name
    for name in GENERATION_WORDS:
        assert form.fields[name].label == GenerationForm.base_fields[name].label
        assert form.fields[name].help_text, name
    assert "Guidance scale" in html
    assert "Every image's seed is derived from it" in html


def test_it_names_a_bad_split_for_the_report_and_queues_nothing(
    client, alice, tiny_version, sent
):
    from xrayweb.datasets.models import Dataset, DatasetReport
    from xrayweb.jobs.models import Status

    dataset = Dataset.objects.create(
        name="set",
        created_by=alice,
        model_version=tiny_version,
        seed=0,
        source="typed",
        status=Status.SUCCEEDED,
    )
    client.force_login(alice)

    response = client.post(
        reverse("dataset_report", args=[dataset.pk]), {"split": "nope"}, follow=True
    )

    assert not DatasetReport.objects.exists()
    shown = [str(message) for message in response.context["messages"]]
    assert any("nope" in message for message in shown), shown
