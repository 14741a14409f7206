"""The staff form that starts a training run."""

from __future__ import annotations

from django import forms

from generator.training import MAXIMA, MIXED_PRECISIONS, MODES, UNET_TARGET_MODULES
from xrayweb.generations.forms import BIGINT_MAX
from xrayweb.generations.models import ModelVersion
from xrayweb.training.services import BASE_KINDS

MODE_LABELS = {"lora": "LoRA adapter (small, fast)", "full": "Full fine-tuning"}
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
    """Labels and help in plain words, with the values that suit this platform's
    models; the generator's checks (training.config_problems) keep the bounds."""

    name = forms.CharField(
        max_length=100,
        label="Name of the new model version",
        help_text="Users pick the trained model by this name, e.g. “lora-cardio”.",
    )
    base = forms.ModelChoiceField(
        queryset=ModelVersion.objects.filter(kind__in=BASE_KINDS, is_active=True),
        label="Start from model",
        help_text="The model to fine-tune.",
    )
    include_laterals = forms.BooleanField(
        required=False,
        label="Include lateral views",
        help_text="Off: frontal images only, as the generate page compares against.",
    )
    mode = forms.ChoiceField(
        choices=[(m, MODE_LABELS[m]) for m in MODES],
        initial="lora",
        label="Kind of training",
        help_text="A LoRA adapter trains a small set of extra weights on the model.",
    )
    rank = forms.IntegerField(
        initial=16,
        label="LoRA rank",
        help_text=f"Size of the adapter; 4–64 is usual (1 to {MAXIMA['rank']}).",
    )
    alpha = forms.IntegerField(
        initial=32,
        label="LoRA alpha",
        help_text="Scales the adapter's effect; usually twice the rank.",
    )
    target_modules = forms.MultipleChoiceField(
        choices=[(m, m) for m in UNET_TARGET_MODULES],
        initial=["to_q", "to_v"],
        widget=forms.CheckboxSelectMultiple,
        label="Attention layers the adapter changes",
        help_text="to_q and to_v suit most runs; more layers learn more, slower.",
    )
    train_text_encoder = forms.BooleanField(
        required=False,
        label="Also adapt the text encoder",
        help_text="Helps the model learn report words it does not know; slower.",
    )
    epochs = forms.IntegerField(
        initial=4,
        label="Epochs (passes over the data)",
        help_text="4–20 is typical; watch the validation loss for overfitting.",
    )
    resolution = forms.IntegerField(
        initial=256,
        label="Training image size in pixels",
        help_text="A multiple of 8; 256 for this platform, 64 for the offline model.",
    )
    batch_size = forms.IntegerField(
        initial=1,
        label="Images per step (batch size)",
        help_text="1–8 on a CPU; more needs more memory.",
    )
    gradient_accumulation_steps = forms.IntegerField(
        initial=1,
        label="Steps to accumulate",
        help_text="Adds up this many batches before each update: a larger batch "
        "without more memory (1–8).",
    )
    learning_rate = forms.FloatField(
        initial=1e-4,
        label="Learning rate",
        help_text="1e-4 suits LoRA, 1e-5 full fine-tuning (above 0, at most 1).",
    )
    lr_warmup_steps = forms.IntegerField(
        initial=0,
        label="Warm-up steps",
        help_text="The learning rate rises over these first steps; 0–500.",
    )
    snr_gamma = forms.FloatField(
        required=False,
        label="Min-SNR weighting γ",
        help_text="Optional: 5 often trains faster and steadier; blank for plain MSE.",
    )
    seed = forms.IntegerField(
        initial=0,
        label="Seed",
        help_text="The same seed and data give the same weights (0 to 4,294,967,295).",
    )
    checkpoint_every = forms.IntegerField(
        initial=500,
        label="Save a checkpoint every … steps",
        help_text="A stopped run resumes from its last checkpoint; 0 saves none.",
    )
    mixed_precision = forms.ChoiceField(
        choices=[(m, m) for m in MIXED_PRECISIONS],
        initial="no",
        label="Mixed precision",
        help_text="fp16 and bf16 need a GPU; “no” on a CPU.",
    )
    gradient_checkpointing = forms.BooleanField(
        required=False,
        label="Save memory (gradient checkpointing)",
        help_text="Uses less memory for about 20 % more time.",
    )
    validation_prompts = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        label="Sample prompts",
        help_text="One per line: a grid of these is drawn after every epoch.",
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
    model_version = forms.ModelChoiceField(
        queryset=ModelVersion.objects.all(), label="Model to evaluate"
    )
    # Bounded by bigint: `cases` becomes the LIMIT of a query.
    cases = forms.IntegerField(
        initial=100,
        min_value=1,
        max_value=BIGINT_MAX,
        label="Test cases",
        help_text="Test-split cases to draw and score; 100–500 gives a steady mean.",
    )
    chunk_size = forms.IntegerField(
        initial=25,
        min_value=1,
        max_value=BIGINT_MAX,
        label="Cases per job",
        help_text="The work is split into jobs of this many cases; 10–50.",
    )
    steps = forms.IntegerField(
        initial=20,
        min_value=1,
        label="Denoising steps",
        help_text="As on the generate page; 20 suits the offline model.",
    )
    with_fid = forms.BooleanField(
        required=False,
        initial=True,
        label="Also compute FID",
        help_text="Fréchet Inception Distance between generated and real images; "
        "needs 50 or more cases to mean much.",
    )
