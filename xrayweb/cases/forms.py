"""The admin's import form: server paths or uploaded archives, and the split seed."""

from __future__ import annotations

from django import forms

from generator.iuxray.splits import DEFAULT_SEED
from xrayweb.cases.models import Split, View
from xrayweb.cases.services import PATH_OPTIONS, import_options_check

CHOICE = "must be one of {choices}, got %(value)r"
SPLITS = ", ".join(Split.values)
VIEWS = ", ".join(View.values)


class ImportStartForm(forms.Form):
    reports = forms.CharField(
        required=False,
        label="Reports (server path)",
        help_text="NLMCXR_reports.tgz or folder",
    )
    images = forms.CharField(
        required=False,
        label="Images (server path)",
        help_text="NLMCXR_png.tgz or folder",
    )
    kaggle_dir = forms.CharField(required=False, label="Kaggle layout folder")
    r2gen_dir = forms.CharField(required=False, label="R2Gen layout folder")
    dicom_metadata = forms.CharField(
        required=False, label="DICOM metadata", help_text="nlmcxr_dicom_metadata.csv.gz"
    )
    reports_upload = forms.FileField(required=False, label="or upload the reports .tgz")
    images_upload = forms.FileField(required=False, label="or upload the images .tgz")
    download = forms.BooleanField(
        required=False, label="Download the official Open-i archives"
    )
    seed = forms.IntegerField(initial=DEFAULT_SEED, label="Split seed")

    def clean(self) -> dict:
        data = super().clean()
        uploaded = bool(data.get("reports_upload") or data.get("images_upload"))
        try:
            import_options_check(
                self.options(uploads={}), uploaded=uploaded, confined=True
            )
        except ValueError as error:
            raise forms.ValidationError(str(error)) from None
        return data

    def options(self, *, uploads: dict[str, str]) -> dict:
        """The ImportRun options: given paths, stored uploads, download and seed."""
        data = self.cleaned_data
        options = {n: data[n].strip() for n in PATH_OPTIONS if data.get(n, "").strip()}
        options.update(uploads)
        if data.get("download"):
            options["download"] = True
        options["seed"] = (
            data.get("seed") if data.get("seed") is not None else DEFAULT_SEED
        )
        return options


class CaseFilterForm(forms.Form):
    """The API's case search: text, MeSH term, split and view."""

    q = forms.CharField(required=False, label="text in the uid, report or MeSH terms")
    mesh = forms.CharField(required=False, label="MeSH term")
    split = forms.ChoiceField(
        choices=[("", "any split"), *Split.choices],
        required=False,
        error_messages={"invalid_choice": CHOICE.format(choices=SPLITS)},
    )
    view = forms.ChoiceField(
        choices=[("", "any view"), *View.choices],
        required=False,
        error_messages={"invalid_choice": CHOICE.format(choices=VIEWS)},
    )
