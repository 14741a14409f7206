"""The generate form: parses input and reports each bad value by name."""

from __future__ import annotations

import re
from datetime import UTC
from types import SimpleNamespace

from django import forms
from django.core.exceptions import ValidationError

from generator.acceleration import (
    DEFAULT_DEEP_CACHE_INTERVAL,
    DEFAULT_TOKEN_MERGING,
    MAX_DEEP_CACHE_INTERVAL,
    MAX_TOKEN_MERGING,
)
from generator.sampling import (
    DEFAULT_SIZE,
    DEFAULT_STEPS,
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_LORA_SCALE,
    MAX_SEED,
    MAX_SIZE,
    MAX_STEPS,
    MIN_SIZE,
    SCHEDULER_LABELS,
    GenerationParams,
    parameter_problems,
)
from xrayweb.cases.models import Case
from xrayweb.generations import availability
from xrayweb.generations.models import ModelVersion
from xrayweb.jobs.models import Status

NOT_A_NUMBER = "{name} must be a {kind}, got {value!r}"
NO_PROMPT = "prompt must not be empty: type a report or pick a case"
BIGINT_MAX = 2**63 - 1  # the largest id a PostgreSQL bigint holds
NOT_AN_ID = f"must be an id from 1 to {BIGINT_MAX} in ASCII digits, got {{value!r}}"
NOT_A_STATUS = "must be one of {choices}, got %(value)r"
NOT_A_TIME = (
    "{name} must be a date and time such as 2026-12-06T21:30:00Z, got {value!r}"
)
NO_SUCH_CASE = "No case has id %(value)r."
NO_SUCH_VERSION = "No active model version has id %(value)r."
MAX_PROMPT_SEARCH = 200  # characters of prompt text to search the history for
ID_DIGITS = re.compile(r"[0-9]{1,19}")  # bounded: int() refuses 4301+ digits


class NamedIntegerField(forms.IntegerField):
    """An IntegerField whose parse error names the field and the value typed: by
    its parameter name where the form sets ``param`` (the name the API and the
    generator's messages use), else by its label."""

    param: str | None = None

    def to_python(self, value: object) -> int | None:
        try:
            return super().to_python(value)
        except ValidationError:
            raise ValidationError(
                NOT_A_NUMBER.format(
                    name=self.param or self.label, kind="whole number", value=value
                )
            ) from None


class NamedFloatField(forms.FloatField):
    param: str | None = None

    def to_python(self, value: object) -> float | None:
        try:
            return super().to_python(value)
        except ValidationError:
            raise ValidationError(
                NOT_A_NUMBER.format(
                    name=self.param or self.label, kind="number", value=value
                )
            ) from None


class IdField(forms.Field):
    """An optional row id from a query string: ASCII digits within bigint.

    Links carry ids in ASCII; int() would also take "٣", and "²" passes isdigit()
    but not int(), so the digits are matched rather than tested with str methods.
    """

    def to_python(self, value: object) -> int | None:
        if value in self.empty_values:
            return None
        text = str(value).strip()
        if not ID_DIGITS.fullmatch(text) or not 1 <= int(text) <= BIGINT_MAX:
            raise ValidationError(NOT_AN_ID.format(value=value), code="invalid")
        return int(text)


class CasePickForm(forms.Form):
    """The generate page's query string: a case to start from, a case search."""

    case = IdField(required=False)
    q = forms.CharField(required=False)


class HistoryFilterForm(forms.Form):
    """The history page's filters; an id that matches nothing just lists nothing."""

    status = forms.ChoiceField(
        choices=[("", "any status"), *Status.choices],
        required=False,
        error_messages={
            "invalid_choice": NOT_A_STATUS.format(choices=", ".join(Status.values))
        },
    )
    model_version = IdField(required=False)
    case = forms.CharField(required=False)
    prompt = forms.CharField(required=False, max_length=MAX_PROMPT_SEARCH)


class NamedDateTimeField(forms.DateTimeField):
    """A date and time, as the same instant in UTC: PostgreSQL refuses a UTC offset
    past ±15:59 that Python accepts (up to ±23:59)."""

    def to_python(self, value: object):
        try:
            moment = super().to_python(value)
            return None if moment is None else moment.astimezone(UTC)
        except (ValidationError, OverflowError):  # Overflow: before year 1 in UTC
            raise ValidationError(
                NOT_A_TIME.format(name=self.label, value=value)
            ) from None


class GenerationFilterForm(forms.Form):
    """The API's filters of a user's generations; ids that match nothing list
    nothing."""

    status = HistoryFilterForm.base_fields["status"]
    model_version = IdField(required=False)
    case = IdField(required=False)
    created_after = NamedDateTimeField(required=False, label="created_after")
    created_before = NamedDateTimeField(required=False, label="created_before")


class GenerationForm(forms.Form):
    """Labels and help say what each parameter does and which values suit the
    shipped models; the error messages keep the parameter names the API uses."""

    prompt = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4}),
        label="Report text (prompt)",
        help_text=(
            "What the image should show, in the words of a radiology report. "
            "The model reads about 60 words (75 CLIP tokens); the rest is shown "
            "after generation."
        ),
    )
    # Starts as the site's XRAY_PROMPT_IN_PNG (services.generation_initial).
    prompt_in_png = forms.BooleanField(
        required=False,
        label="Keep the report text in the PNG file",
        help_text="Untick to leave the prompt out of the downloaded PNG's metadata; "
        "the synthetic mark and the settings to remake the image stay.",
    )
    case = forms.ModelChoiceField(
        queryset=Case.objects.all(),
        required=False,
        widget=forms.HiddenInput,
        error_messages={"invalid_choice": NO_SUCH_CASE},
    )
    negative_prompt = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        label="What to avoid (negative prompt)",
        help_text="Optional: features the image should not have, e.g. “lateral view”.",
    )
    model_version = forms.ModelChoiceField(
        queryset=ModelVersion.objects.filter(is_active=True),
        empty_label=None,
        error_messages={"invalid_choice": NO_SUCH_VERSION},
        label="Model",
        help_text="The model that draws the image, by version name and revision.",
    )
    seed = NamedIntegerField(
        required=False,
        label="Seed",
        help_text=(
            "The same seed and settings give the same image again; leave blank for "
            f"a random one (0 to {MAX_SEED:,})."
        ),
    )
    steps = NamedIntegerField(
        initial=DEFAULT_STEPS,
        label="Denoising steps",
        help_text=(
            "More steps add detail and take longer; 20 suits the offline model, "
            f"20–50 Stable Diffusion (1 to {MAX_STEPS})."
        ),
    )
    guidance_scale = NamedFloatField(
        initial=7.5,
        label="Guidance scale",
        help_text=(
            "How closely the image follows the text; 2–5 suits the offline model, "
            f"7–8 Stable Diffusion (0 to {MAX_GUIDANCE:g})."
        ),
    )
    scheduler = forms.ChoiceField(
        choices=list(SCHEDULER_LABELS.items()),
        label="Sampler",
        help_text=(
            "How noise is removed step by step; DPM-Solver++ 2M Karras and UniPC "
            "keep their quality at the fewest steps."
        ),
    )
    width = NamedIntegerField(
        initial=DEFAULT_SIZE,
        label="Width in pixels",
        help_text=(
            "A multiple of 8; the offline model makes 64, Stable Diffusion "
            f"256–512 ({MIN_SIZE} to {MAX_SIZE})."
        ),
    )
    height = NamedIntegerField(
        initial=DEFAULT_SIZE,
        label="Height in pixels",
        help_text=f"As the width: a multiple of 8 ({MIN_SIZE} to {MAX_SIZE}).",
    )
    num_images = NamedIntegerField(
        initial=1,
        label="Number of images",
        help_text=(
            f"Image 2 uses seed + 1, image 3 seed + 2, and so on (1 to {MAX_IMAGES})."
        ),
    )
    lora_scale = NamedFloatField(
        initial=1.0,
        label="Fine-tuning strength (LoRA scale)",
        help_text=(
            "For fine-tuned (LoRA) models only: 1 applies the fine-tuning as "
            f"trained, 0 turns it off (0 to {MAX_LORA_SCALE:g})."
        ),
    )

    # Not required: a form or API body from before these existed takes the site's
    # defaults (services.sampling_defaults).
    deep_cache_interval = NamedIntegerField(
        required=False,
        initial=DEFAULT_DEEP_CACHE_INTERVAL,
        label="Reuse deep features every N steps (DeepCache)",
        help_text=(
            "1 runs the whole network at every step. 2 or 3 run it in full every "
            "2nd or 3rd step and reuse its deep layers in between: faster, with "
            f"slightly different pixels (1 to {MAX_DEEP_CACHE_INTERVAL})."
        ),
    )
    token_merging = NamedFloatField(
        required=False,
        initial=DEFAULT_TOKEN_MERGING,
        label="Merge similar image patches (token merging)",
        help_text=(
            "0 is off. 0.3 to 0.5 merge that share of the patches in the finest "
            "attention layers: faster on large images, with slightly different "
            f"pixels (0 to {MAX_TOKEN_MERGING:g})."
        ),
    )

    def __init__(
        self,
        *args: object,
        known: availability.Known | availability.NotRead = availability.NOT_READ,
        **kwargs: object,
    ) -> None:
        """``known``: availability.availability(), when the caller has read it."""
        super().__init__(*args, **kwargs)
        if isinstance(known, availability.NotRead):
            known = availability.availability()
        self.availability = known
        for name, field in self.fields.items():
            field.param = name
        field = self.fields["model_version"]
        field.label_from_instance = self._version_label

    def _version_label(self, version: ModelVersion) -> str:
        if availability.refusal(version, self.availability):
            return f"{version.label} (unavailable: {availability.UNAVAILABLE})"
        return f"{version.label} · {version.get_kind_display()}"

    def clean_model_version(self) -> ModelVersion:
        version = self.cleaned_data["model_version"]
        refused = availability.refusal(version, self.availability)
        if refused:
            raise ValidationError(refused)
        return version

    def clean(self) -> dict:
        data = super().clean()
        if self.errors:
            return data
        if not data["prompt"].strip() and data.get("case"):
            data["prompt"] = data["case"].prompt  # the case's report is the prompt
        from xrayweb.generations.services import random_seed, sampling_defaults

        if data["seed"] is None:
            data["seed"] = random_seed()
        for name in ("deep_cache_interval", "token_merging"):
            if data[name] is None:
                data[name] = sampling_defaults()[name]
        fields = SimpleNamespace(**self._param_fields())
        for field, message in parameter_problems(fields):
            empty_prompt = field == "prompt" and not data["prompt"].strip()
            self.add_error(field, NO_PROMPT if empty_prompt else message)
        return data

    def _param_fields(self) -> dict:
        names = GenerationParams.__dataclass_fields__
        return {name: self.cleaned_data[name] for name in names}

    def params(self) -> GenerationParams:
        """The validated parameters; call only after is_valid()."""
        return GenerationParams(**self._param_fields())
