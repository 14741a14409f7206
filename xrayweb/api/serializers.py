"""What the API reads and writes, as DRF serializers: output shapes, and request
bodies for the schema. Validation of request bodies is the web forms' own (see
api/forms.py), so these declare types and nothing else, except TokenIn, which
validates a token's body itself and so takes only the JSON types it declares."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from generator.sampling import SCHEDULER_LABELS
from generator.training import MIXED_PRECISIONS, MODES, UNET_TARGET_MODULES
from xrayweb.api.forms import NOT_TEXT
from xrayweb.cases.models import Split, View
from xrayweb.datasets.models import PromptSource
from xrayweb.generations.forms import NOT_A_NUMBER
from xrayweb.generations.previews import preview_data_uri
from xrayweb.jobs.models import Status

# Errors -----------------------------------------------------------------------------


class ErrorItem(serializers.Serializer):
    field = serializers.CharField(allow_null=True, help_text="The bad input, or null")
    message = serializers.CharField()
    code = serializers.CharField()


class Errors(serializers.Serializer):
    errors = ErrorItem(many=True)


# Shared pieces ----------------------------------------------------------------------


class Ref(serializers.Serializer):
    """A related row: its id and name."""

    id = serializers.IntegerField()
    name = serializers.CharField()


class CaseRef(serializers.Serializer):
    id = serializers.IntegerField()
    uid = serializers.CharField()


class JobFields(serializers.Serializer):
    """The lifecycle fields every job kind shows."""

    id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=Status.choices)
    error = serializers.CharField()
    attempt = serializers.IntegerField()
    cancel_requested = serializers.BooleanField(source="cancel_pending")
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


def _url(context: dict, name: str, *args: object) -> str:
    """The absolute URL of a route, when the view passed its request."""
    path = reverse(name, args=args)
    request = context.get("request")
    return request.build_absolute_uri(path) if request is not None else path


# Cases ------------------------------------------------------------------------------


class CaseImageOut(serializers.Serializer):
    id = serializers.IntegerField()
    image_id = serializers.CharField()
    view = serializers.CharField()
    view_position = serializers.CharField()
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    png = serializers.SerializerMethodField(help_text="The 256² grayscale derivative")
    original_png = serializers.SerializerMethodField(
        help_text="The original file, when it was kept"
    )

    @extend_schema_field(OpenApiTypes.URI)
    def get_png(self, image) -> str:
        return _url(self.context, "api-case-image", image.case_id, image.pk)

    @extend_schema_field({"type": "string", "format": "uri", "nullable": True})
    def get_original_png(self, image) -> str | None:
        if not image.original:
            return None
        return (
            _url(self.context, "api-case-image", image.case_id, image.pk)
            + "?kind=original"
        )


class CaseOut(serializers.Serializer):
    id = serializers.IntegerField()
    uid = serializers.CharField()
    source = serializers.CharField()
    split = serializers.CharField()
    impression = serializers.CharField()
    findings = serializers.CharField()
    mesh_major = serializers.ListField(child=serializers.CharField())
    mesh_automatic = serializers.ListField(child=serializers.CharField())
    prompt = serializers.CharField(help_text="The report text a generation starts from")
    images = CaseImageOut(many=True)


class CaseDetailOut(CaseOut):
    indication = serializers.CharField()
    comparison = serializers.CharField()
    problems = serializers.ListField(child=serializers.CharField())
    prompt_full = serializers.CharField()
    prompt_truncated = serializers.BooleanField()


# Models -----------------------------------------------------------------------------


class ModelVersionOut(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.CharField()
    kind_label = serializers.CharField(source="get_kind_display")
    defaults = serializers.DictField(
        source="config.defaults", default=dict, help_text="Recommended parameters"
    )
    is_default = serializers.BooleanField(help_text="Picked when none is given")
    available = serializers.BooleanField(
        allow_null=True,
        help_text="Whether a live worker can load it; null while no worker is live "
        "(a job then waits for one)",
    )
    unavailable_reason = serializers.CharField(allow_null=True)


# Generations ------------------------------------------------------------------------


class GenerationIn(serializers.Serializer):
    """Give a prompt, a case (its report is the prompt unless a prompt is given), or
    both. Parameters left out take the model's defaults."""

    prompt = serializers.CharField(required=False, allow_blank=True)
    case = serializers.IntegerField(required=False, allow_null=True)
    negative_prompt = serializers.CharField(required=False, allow_blank=True)
    model_version = serializers.IntegerField(required=False)
    seed = serializers.IntegerField(required=False, allow_null=True)
    steps = serializers.IntegerField(required=False)
    guidance_scale = serializers.FloatField(required=False)
    scheduler = serializers.ChoiceField(choices=list(SCHEDULER_LABELS), required=False)
    width = serializers.IntegerField(required=False)
    height = serializers.IntegerField(required=False)
    num_images = serializers.IntegerField(required=False)
    lora_scale = serializers.FloatField(required=False)
    deep_cache_interval = serializers.IntegerField(
        required=False, help_text="DeepCache: a full UNet every N steps (1: off)"
    )
    token_merging = serializers.FloatField(
        required=False, help_text="Share of attention tokens merged (0: off)"
    )
    prompt_in_png = serializers.BooleanField(
        required=False,
        help_text="false: the PNG's metadata leaves the prompt out (the request "
        "keeps it); default: the site's XRAY_PROMPT_IN_PNG",
    )


class GenerationParamsOut(serializers.Serializer):
    seed = serializers.IntegerField()
    steps = serializers.IntegerField()
    guidance_scale = serializers.FloatField()
    scheduler = serializers.CharField()
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    num_images = serializers.IntegerField()
    lora_scale = serializers.FloatField()
    deep_cache_interval = serializers.IntegerField()
    token_merging = serializers.FloatField()


class PlacementOut(serializers.Serializer):
    """Where a request ran: bf16 and fp16 move pixels, and so may another torch or
    diffusers. Empty until a worker ran it."""

    device = serializers.CharField(help_text="cpu or cuda")
    dtype = serializers.CharField(help_text="float32, bfloat16 or float16")
    torch = serializers.CharField(source="torch_version")
    diffusers = serializers.CharField(source="diffusers_version")
    requested = serializers.DictField(
        source="placement_requested",
        help_text="A rerun: where its original ran (device, dtype, torch, diffusers)",
    )
    note = serializers.CharField(
        source="placement_note",
        help_text="Why this run could not match the requested placement",
    )


class ProgressOut(serializers.Serializer):
    step = serializers.IntegerField(source="progress_step")
    total = serializers.IntegerField(source="progress_total")
    percent = serializers.IntegerField(source="progress_percent")


class GenerationImageOut(serializers.Serializer):
    index = serializers.IntegerField()
    seed = serializers.IntegerField(help_text="Regenerates this image exactly")
    ssim = serializers.FloatField(allow_null=True)
    psnr = serializers.FloatField(allow_null=True)
    reference_image = serializers.IntegerField(
        source="reference_id",
        allow_null=True,
        help_text="The case image scored against",
    )
    png = serializers.SerializerMethodField()
    diff_map_png = serializers.SerializerMethodField()

    @extend_schema_field(OpenApiTypes.URI)
    def get_png(self, image) -> str:
        return _url(self.context, "api-generation-image", image.request_id, image.index)

    @extend_schema_field({"type": "string", "format": "uri", "nullable": True})
    def get_diff_map_png(self, image) -> str | None:
        if not image.diff_map:
            return None
        return _url(self.context, "api-generation-diff", image.request_id, image.index)


class MetricsOut(serializers.Serializer):
    mean_ssim = serializers.FloatField(allow_null=True)
    mean_psnr = serializers.FloatField(allow_null=True)


class GenerationListOut(JobFields):
    prompt = serializers.CharField()
    negative_prompt = serializers.CharField()
    prompt_used = serializers.CharField(help_text="What the text encoder saw")
    prompt_dropped = serializers.CharField(help_text="Cut beyond 75 CLIP tokens")
    model_version = Ref()
    case = CaseRef(allow_null=True)
    parameters = GenerationParamsOut(source="*")
    placement = PlacementOut(source="*")
    progress = ProgressOut(source="*")
    eta_s = serializers.FloatField(allow_null=True, help_text="Seconds left, estimated")
    run_seconds = serializers.FloatField(allow_null=True)
    timings = serializers.DictField(help_text="Seconds per stage of the run")
    images = GenerationImageOut(many=True, source="images.all")
    metrics = MetricsOut(source="*")
    preview_png = serializers.SerializerMethodField(
        help_text=(
            "While running: a rough preview of image 1 as a data: URI (a PNG drawn "
            "from the latents every few steps); null otherwise. Never a result."
        )
    )

    def get_preview_png(self, request) -> str | None:
        return preview_data_uri(request)


class GenerationOut(GenerationListOut):
    queue_position = serializers.IntegerField(
        allow_null=True, help_text="1: next to run; null unless queued"
    )


# Datasets ---------------------------------------------------------------------------


class DatasetIn(serializers.Serializer):
    """A name, a model (the default one when left out), parameters (the model's
    defaults when left out), N images per prompt, and one source of prompts:
    ``cases`` (the case filter q, mesh, split, view), ``typed`` (``typed``, one
    prompt per line), ``csv`` or ``text`` (the file's content in ``upload``, its
    name in ``upload_name``)."""

    name = serializers.CharField(max_length=100)
    source = serializers.ChoiceField(choices=PromptSource.choices)
    model_version = serializers.IntegerField(required=False)
    q = serializers.CharField(required=False, allow_blank=True)
    mesh = serializers.CharField(required=False, allow_blank=True)
    split = serializers.ChoiceField(
        choices=["", *Split.values], required=False, allow_blank=True
    )
    view = serializers.ChoiceField(
        choices=["", *View.values], required=False, allow_blank=True
    )
    typed = serializers.CharField(
        required=False, allow_blank=True, help_text="Prompts, one per line"
    )
    upload = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="csv: a CSV with a 'prompt' column (the others are kept as "
        "labels); text: one prompt per line",
    )
    upload_name = serializers.CharField(
        required=False, allow_blank=True, help_text="The file's name, for messages"
    )
    images_per_prompt = serializers.IntegerField(required=False)
    seed = serializers.IntegerField(required=False, help_text="The job seed")
    steps = serializers.IntegerField(required=False)
    guidance_scale = serializers.FloatField(required=False)
    scheduler = serializers.ChoiceField(choices=list(SCHEDULER_LABELS), required=False)
    width = serializers.IntegerField(required=False)
    height = serializers.IntegerField(required=False)
    lora_scale = serializers.FloatField(required=False)
    negative_prompt = serializers.CharField(required=False, allow_blank=True)


class DatasetExportIn(serializers.Serializer):
    dicom = serializers.BooleanField(
        required=False,
        help_text="Also dicom/<name>.dcm, a Secondary Capture marked SYN, per image",
    )


class DatasetExportOut(JobFields):
    size_bytes = serializers.IntegerField()
    include_dicom = serializers.BooleanField()
    zip = serializers.SerializerMethodField(help_text="The download, once succeeded")

    @extend_schema_field({"type": "string", "format": "uri", "nullable": True})
    def get_zip(self, export) -> str | None:
        if export.status != Status.SUCCEEDED or not export.archive:
            return None
        return _url(self.context, "api-dataset-export-zip", export.dataset_id)


class DatasetListOut(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    status = serializers.ChoiceField(choices=Status.choices)
    model_version = Ref()
    source = serializers.ChoiceField(choices=PromptSource.choices)
    source_description = serializers.CharField()
    images_per_prompt = serializers.IntegerField()
    prompts_total = serializers.IntegerField()
    images_total = serializers.IntegerField()
    chunks_total = serializers.IntegerField()
    chunks_done = serializers.IntegerField()
    cancel_requested = serializers.BooleanField(source="cancel_pending")
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class DatasetProgressOut(serializers.Serializer):
    images_done = serializers.IntegerField()
    images_total = serializers.IntegerField()
    percent = serializers.IntegerField()


class DatasetOut(DatasetListOut):
    seed = serializers.IntegerField(
        help_text="The job seed every image seed comes from"
    )
    params = serializers.DictField(help_text="Generation parameters of every image")
    error = serializers.CharField()
    progress = DatasetProgressOut()
    eta_s = serializers.FloatField(
        source="progress.eta_s", allow_null=True, help_text="Seconds left, estimated"
    )
    export = DatasetExportOut(
        source="latest_export", allow_null=True, help_text="The newest export, if any"
    )


class DatasetReportIn(serializers.Serializer):
    split = serializers.ChoiceField(
        choices=Split.values,
        required=False,
        help_text="FID against this split's real frontal images (default test)",
    )


class DatasetReportOut(JobFields):
    split = serializers.CharField()
    phase = serializers.CharField(help_text="What the running report computes now")
    min_fid_images = serializers.IntegerField()
    threshold_margin = serializers.FloatField()
    results = serializers.DictField(
        help_text="images, size, fid {value, generated, real, min_images, too_few}, "
        "diversity {mean_msssim, prompts, pairs}, memorization {known, reason or "
        "training_set, threshold, cosine, ssim, flagged_count, flagged, closest}, "
        "by_finding; empty until succeeded"
    )


# Tokens -----------------------------------------------------------------------------


class Text(serializers.CharField):
    """Text only: DRF's CharField would take the number 12 as the text "12"."""

    def to_internal_value(self, data: object) -> str:
        if not isinstance(data, str):
            message = NOT_TEXT.format(name=self.field_name, value=_shown(data))
            raise serializers.ValidationError(message, code="invalid")
        return super().to_internal_value(data)


class WholeNumber(serializers.IntegerField):
    """A JSON integer only: DRF's IntegerField would take "12", 12.0 and true."""

    def to_internal_value(self, data: object) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            message = NOT_A_NUMBER.format(
                name=self.field_name, kind="whole number", value=_shown(data)
            )
            raise serializers.ValidationError(message, code="invalid")
        return super().to_internal_value(data)


def _shown(value: object) -> object:
    """``value`` for a message, cut to 100 characters."""
    text = repr(value)
    return value if len(text) <= 100 else text[:100] + "…"


class TokenIn(serializers.Serializer):
    # The length as sent, as the schema's maxLength says (the service strips it).
    name = Text(required=False, allow_blank=True, max_length=100, trim_whitespace=False)
    expires_days = WholeNumber(
        required=False, allow_null=True, help_text="null: never expires"
    )


class TokenOut(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    created_at = serializers.DateTimeField(source="created")
    expires_at = serializers.DateTimeField(source="expiry", allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)


class TokenCreatedOut(TokenOut):
    key = serializers.CharField(help_text="Shown once: store it now")


# Staff: imports, training runs, evaluations -----------------------------------------


class ImportIn(serializers.Serializer):
    """Paths on the server (the archives or layout folders), or the download of the
    official Open-i archives."""

    reports = serializers.CharField(required=False, allow_blank=True)
    images = serializers.CharField(required=False, allow_blank=True)
    kaggle_dir = serializers.CharField(required=False, allow_blank=True)
    r2gen_dir = serializers.CharField(required=False, allow_blank=True)
    dicom_metadata = serializers.CharField(required=False, allow_blank=True)
    download = serializers.BooleanField(required=False)
    seed = serializers.IntegerField(required=False)


class ImportProgressOut(serializers.Serializer):
    phase = serializers.CharField()
    done = serializers.IntegerField(source="progress_done")
    total = serializers.IntegerField(source="progress_total")


class ImportOut(JobFields):
    options = serializers.DictField()
    progress = ImportProgressOut(source="*")
    report = serializers.DictField(help_text="Counts and skipped items, once ended")
    summary = serializers.CharField(help_text="The report as text")


class TrainingIn(serializers.Serializer):
    name = serializers.CharField()
    base = serializers.IntegerField(help_text="A tiny, mini or base model version id")
    include_laterals = serializers.BooleanField(required=False)
    mode = serializers.ChoiceField(choices=list(MODES), required=False)
    rank = serializers.IntegerField(required=False)
    alpha = serializers.IntegerField(required=False)
    target_modules = serializers.ListField(
        child=serializers.ChoiceField(choices=list(UNET_TARGET_MODULES)),
        required=False,
    )
    train_text_encoder = serializers.BooleanField(required=False)
    epochs = serializers.IntegerField(required=False)
    resolution = serializers.IntegerField(required=False)
    batch_size = serializers.IntegerField(required=False)
    gradient_accumulation_steps = serializers.IntegerField(required=False)
    learning_rate = serializers.FloatField(required=False)
    lr_warmup_steps = serializers.IntegerField(required=False)
    snr_gamma = serializers.FloatField(required=False, allow_null=True)
    seed = serializers.IntegerField(required=False)
    checkpoint_every = serializers.IntegerField(required=False)
    mixed_precision = serializers.ChoiceField(
        choices=list(MIXED_PRECISIONS), required=False
    )
    gradient_checkpointing = serializers.BooleanField(required=False)
    validation_prompts = serializers.ListField(
        child=serializers.CharField(), required=False
    )


class TrainingOut(JobFields):
    name = serializers.CharField()
    base = Ref()
    config = serializers.DictField()
    include_laterals = serializers.BooleanField()
    examples = serializers.IntegerField()
    progress = ProgressOut(source="*")
    epoch = serializers.IntegerField()
    loss = serializers.FloatField(allow_null=True)
    eta_s = serializers.FloatField(allow_null=True)
    resumed_from_step = serializers.IntegerField()
    model_version = Ref(allow_null=True, help_text="The version it made, once done")


class TrainingDetailOut(TrainingOut):
    loss_history = serializers.ListField(
        child=serializers.ListField(child=serializers.FloatField()),
        help_text="[step, loss] pairs",
    )
    validation_history = serializers.ListField(child=serializers.DictField())
    loss_plot_png = serializers.SerializerMethodField()
    sample_grids = serializers.SerializerMethodField()

    @extend_schema_field(OpenApiTypes.URI)
    def get_loss_plot_png(self, run) -> str:
        return _url(self.context, "api-training-run-loss", run.pk)

    @extend_schema_field(
        {"type": "array", "items": {"type": "string", "format": "uri"}}
    )
    def get_sample_grids(self, run) -> list[str]:
        return [
            _url(self.context, "api-training-run-sample", run.pk, name)
            for name in run.grids
        ]


class EvaluationIn(serializers.Serializer):
    model_version = serializers.IntegerField()
    cases = serializers.IntegerField(required=False)
    chunk_size = serializers.IntegerField(required=False)
    steps = serializers.IntegerField(required=False)
    with_fid = serializers.BooleanField(required=False)


class EvaluationOut(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=Status.choices)
    model_version = Ref()
    params = serializers.DictField()
    chunks_total = serializers.IntegerField()
    chunks_done = serializers.IntegerField()
    results = serializers.DictField(help_text="SSIM, PSNR, FID and more, once done")
    histogram_png = serializers.SerializerMethodField()
    error = serializers.CharField()
    cancel_requested = serializers.BooleanField(source="cancel_pending")
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)

    @extend_schema_field({"type": "string", "format": "uri", "nullable": True})
    def get_histogram_png(self, evaluation) -> str | None:
        if not evaluation.histogram:
            return None
        return _url(self.context, "api-evaluation-histogram", evaluation.pk)
