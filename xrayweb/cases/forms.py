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
    """Where the IU X-ray files are: paths on the server, uploads, or a download."""

    reports = forms.CharField(
        required=False,
        label="Reports archive or folder on the server",
        help_text="The path of NLMCXR_reports.tgz or of its extracted folder.",
    )
    images = forms.CharField(
        required=False,
        label="Images archive or folder on the server",
        help_text="The path of NLMCXR_png.tgz or of its extracted folder.",
    )
    kaggle_dir = forms.CharField(
        required=False,
        label="Kaggle layout folder on the server",
        help_text="A folder with indiana_reports.csv, indiana_projections.csv "
        "and images_normalized/.",
    )
    r2gen_dir = forms.CharField(
        required=False,
        label="R2Gen layout folder on the server",
        help_text="A folder with annotation.json and images/.",
    )
    dicom_metadata = forms.CharField(
        required=False,
        label="DICOM metadata file on the server",
        help_text="Optional: nlmcxr_dicom_metadata.csv.gz, which tells frontal "
        "from lateral views.",
    )
    reports_upload = forms.FileField(
        required=False,
        label="Or upload the reports archive",
        help_text="NLMCXR_reports.tgz as published by Open-i.",
    )
    images_upload = forms.FileField(
        required=False,
        label="Or upload the images archive",
        help_text="NLMCXR_png.tgz as published by Open-i.",
    )
    download = forms.BooleanField(
        required=False,
        label="Download the official Open-i archives",
        help_text="From openi.nlm.nih.gov; a broken download resumes.",
    )
    seed = forms.IntegerField(
        initial=DEFAULT_SEED,
        label="Split seed",
        help_text="Decides which cases go to train, validation and test (80/10/10); "
        "keep it the same across imports.",
    )

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
