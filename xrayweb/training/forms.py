"""The staff form that starts a training run."""

from __future__ import annotations

from django import forms

from generator.training import MIXED_PRECISIONS, MODES, UNET_TARGET_MODULES
from xrayweb.generations.forms import BIGINT_MAX
from xrayweb.generations.models import ModelVersion
from xrayweb.training.services import BASE_KINDS

CONFIG_FIELDS = (
    "mode",
    "rank",
    "alpha",
    "target_modules",
    "train_text_encoder",
    "epochs",
    "resolution",
    "batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_warmup_steps",
    "snr_gamma",
    "seed",
    "checkpoint_every",
    "mixed_precision",
    "gradient_checkpointing",
    "validation_prompts",
)


class TrainingRunForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="Name of the new model version")
    base = forms.ModelChoiceField(
        queryset=ModelVersion.objects.filter(kind__in=BASE_KINDS, is_active=True)
    )
    include_laterals = forms.BooleanField(required=False)
    mode = forms.ChoiceField(choices=[(m, m) for m in MODES], initial="lora")
    rank = forms.IntegerField(initial=16)
    alpha = forms.IntegerField(initial=32)
    target_modules = forms.MultipleChoiceField(
        choices=[(m, m) for m in UNET_TARGET_MODULES],
        initial=["to_q", "to_v"],
        widget=forms.CheckboxSelectMultiple,
    )
    train_text_encoder = forms.BooleanField(required=False)
    epochs = forms.IntegerField(initial=4)
    resolution = forms.IntegerField(initial=256)
    batch_size = forms.IntegerField(initial=1)
    gradient_accumulation_steps = forms.IntegerField(initial=1)
    learning_rate = forms.FloatField(initial=1e-4)
    lr_warmup_steps = forms.IntegerField(initial=0)
    snr_gamma = forms.FloatField(required=False, help_text="min-SNR γ, e.g. 5")
    seed = forms.IntegerField(initial=0)
    checkpoint_every = forms.IntegerField(initial=500)
    mixed_precision = forms.ChoiceField(
        choices=[(m, m) for m in MIXED_PRECISIONS], initial="no"
    )
    gradient_checkpointing = forms.BooleanField(required=False)
    validation_prompts = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One per line: a sample grid of these prompts after every epoch",
    )

    def clean_validation_prompts(self) -> list[str]:
        lines = self.cleaned_data["validation_prompts"].splitlines()
        return [line.strip() for line in lines if line.strip()]

    def config(self) -> dict:
        """The TrainingConfig fields, JSON-ready (tuples as lists)."""
        config = {name: self.cleaned_data[name] for name in CONFIG_FIELDS}
        config["target_modules"] = list(config["target_modules"])
        return config


class EvaluationForm(forms.Form):
    # Inactive versions too: a trained version is evaluated before it is activated.
    model_version = forms.ModelChoiceField(queryset=ModelVersion.objects.all())
    # Bounded by bigint: `cases` becomes the LIMIT of a query.
    cases = forms.IntegerField(initial=100, min_value=1, max_value=BIGINT_MAX)
    chunk_size = forms.IntegerField(initial=25, min_value=1, max_value=BIGINT_MAX)
    steps = forms.IntegerField(initial=20, min_value=1)
    with_fid = forms.BooleanField(required=False, initial=True)
