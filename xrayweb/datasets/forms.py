"""The dataset form: a name, a model, parameters, N and one source of prompts; the
export form: whether the ZIP holds DICOM files too."""

from __future__ import annotations

from django import forms

from generator.sampling import DEFAULT_STEPS, MAX_IMAGES, SCHEDULER_LABELS
from xrayweb.cases.models import Split, View
from xrayweb.datasets import sources
from xrayweb.datasets.models import PromptSource
from xrayweb.generations.forms import NO_SUCH_VERSION, GenerationForm
from xrayweb.generations.models import ModelVersion

NO_FILE = "Choose a file to upload for this source."


# Generation parameters read as on the generate page: the same label and help.
GENERATION_WORDS = (
    "model_version",
    "negative_prompt",
    "steps",
    "guidance_scale",
    "scheduler",
    "width",
    "height",
    "lora_scale",
)


class DatasetForm(forms.Form):
    name = forms.CharField(
        max_length=100,
        label="Dataset name",
        help_text="How your list of datasets and the export's file name call it.",
    )
    model_version = forms.ModelChoiceField(
        ModelVersion.objects.filter(is_active=True),
        empty_label=None,
        error_messages={"invalid_choice": NO_SUCH_VERSION},
    )
    source = forms.ChoiceField(
        label="Prompts from", choices=PromptSource.choices, widget=forms.RadioSelect
    )
    q = forms.CharField(
        label="Cases: report text",
        required=False,
        help_text="Imported cases whose report contains these words.",
    )
    mesh = forms.CharField(
        label="Cases: MeSH term",
        required=False,
        help_text="Cases with this finding, e.g. “Cardiomegaly”.",
    )
    split = forms.ChoiceField(
        label="Cases: split", choices=[("", "any"), *Split.choices], required=False
    )
    view = forms.ChoiceField(
        label="Cases: view", choices=[("", "any"), *View.choices], required=False
    )
    upload = forms.FileField(
        label="CSV file (a 'prompt' column) or text file (one prompt per line)",
        required=False,
        help_text="UTF-8; a CSV's other columns are kept as labels in metadata.csv.",
    )
    typed = forms.CharField(
        label="Prompts, one per line", widget=forms.Textarea, required=False
    )
    images_per_prompt = forms.IntegerField(
        label="Images per prompt",
        min_value=1,
        max_value=MAX_IMAGES,
        initial=1,
        help_text=f"1 to {MAX_IMAGES}; the images of one prompt differ in their seed.",
    )
    seed = forms.IntegerField(
        label="Job seed",
        min_value=0,
        initial=0,
        help_text="Every image's seed is derived from it: the same job seed makes "
        "the same dataset again.",
    )
    steps = forms.IntegerField(initial=DEFAULT_STEPS)
    guidance_scale = forms.FloatField(initial=7.5)
    scheduler = forms.ChoiceField(choices=list(SCHEDULER_LABELS.items()))
    width = forms.IntegerField(initial=256)
    height = forms.IntegerField(initial=256)
    lora_scale = forms.FloatField(initial=1.0)
    negative_prompt = forms.CharField(required=False)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        for name in GENERATION_WORDS:
            words = GenerationForm.base_fields[name]
            self.fields[name].label = words.label
            self.fields[name].help_text = words.help_text

    def params(self) -> dict:
        names = ("steps", "guidance_scale", "scheduler", "width", "height")
        fields = {name: self.cleaned_data[name] for name in names}
        fields["lora_scale"] = self.cleaned_data["lora_scale"]
        fields["negative_prompt"] = self.cleaned_data["negative_prompt"]
        return fields

    def prompts(self, limit: int) -> tuple[list[sources.Prompt], str]:
        """The chosen source's prompts and a description of the source; ValueError
        names what is wrong with it."""
        data, source = self.cleaned_data, self.cleaned_data["source"]
        if source == PromptSource.CASES:
            found = sources.prompts_from_cases(
                q=data["q"],
                mesh=data["mesh"],
                split=data["split"],
                view=data["view"],
                limit=limit,
            )
            text = sources.cases_filter_text(
                data["q"], data["mesh"], data["split"], data["view"]
            )
            return found, f"cases: {text}"
        if source == PromptSource.TYPED:
            return sources.prompts_from_lines(data["typed"]), "typed"
        upload = data["upload"]
        if upload is None:
            raise ValueError(NO_FILE)
        read = (
            sources.prompts_from_csv
            if source == PromptSource.CSV
            else (sources.prompts_from_text)
        )
        return read(upload.read(), upload.name), f"file {upload.name}"


class ExportForm(forms.Form):
    dicom = forms.BooleanField(
        label="Also one DICOM Secondary Capture per image", required=False
    )


class ReportForm(forms.Form):
    split = forms.ChoiceField(
        label="FID against the real frontal images of",
        choices=Split.choices,
        initial=Split.TEST,
    )
