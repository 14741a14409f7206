"""Model versions, generation requests and their results."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePath, PurePosixPath

from django.conf import settings
from django.db import models
from django.utils import timezone

from xrayweb.cases.models import Case, CaseImage
from xrayweb.jobs.models import Job


class ModelKind(models.TextChoices):
    TINY = "tiny", "Untrained tiny test model"
    MINI = "mini", "Small offline model"
    BASE = "base", "Stable Diffusion v1.x"
    LORA = "lora", "LoRA on Stable Diffusion v1.x"


class ModelVersion(models.Model):
    """A pickable model: a base (Hub id or folder, plus revision) or a LoRA on one."""

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=8, choices=ModelKind.choices)
    source = models.CharField(
        max_length=500,
        help_text="Hub id, or a folder every worker has (the shipped models)",
    )
    revision = models.CharField(max_length=100, blank=True)
    # Trained files live in Django storage (see generations/model_files.py): a LoRA
    # file on the base above, or a whole model folder that replaces it.
    lora_key = models.CharField("LoRA file (storage key)", max_length=500, blank=True)
    lora_sha256 = models.CharField(max_length=64, blank=True)
    files_key = models.CharField(
        "model folder (storage key prefix)", max_length=500, blank=True
    )
    files_sha256 = models.CharField(
        "model folder manifest sha256", max_length=64, blank=True
    )
    config = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [
            ("activate_modelversion", "Can activate or withdraw model versions")
        ]

    def __str__(self) -> str:
        return f"{self.label} ({self.get_kind_display()})"

    @property
    def label(self) -> str:
        """How pages name the model: its version name and, for a base, its
        revision; never a host path (a base registered from a folder is named by
        the folder's name). A fine-tuned model's name is its own version."""
        name, _, revision = self.name.partition("@")
        if name.startswith("/"):
            name = PurePosixPath(name).name or name
        revision = revision or (self.revision if self.kind == ModelKind.BASE else "")
        return f"{name}@{revision}" if revision else name

    @property
    def fine_tuned_from(self) -> str:
        """The base a trained version was made from, as its training recorded it."""
        return str(self.config.get("base", "")) if self.config else ""

    @property
    def source_label(self) -> str:
        """The source as shown to people and in PNGs: a Hub id as is, a local
        folder by its name only (never a host path)."""
        path = PurePath(self.source)
        return path.name if path.is_absolute() else self.source


class GenerationRequest(Job):
    """One user's request; every field needed to regenerate its pixels exactly."""

    task_name = "generation.run"
    owner_lookup = "user"
    files_prefix = "generations/"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT)
    case = models.ForeignKey(Case, null=True, blank=True, on_delete=models.SET_NULL)
    prompt = models.TextField()
    negative_prompt = models.TextField(blank=True)
    prompt_used = models.TextField(blank=True)
    prompt_dropped = models.TextField(blank=True)
    seed = models.BigIntegerField()
    steps = models.PositiveSmallIntegerField()
    guidance_scale = models.FloatField()
    scheduler = models.CharField(max_length=16)
    width = models.PositiveSmallIntegerField()
    height = models.PositiveSmallIntegerField()
    num_images = models.PositiveSmallIntegerField(default=1)
    lora_scale = models.FloatField(default=1.0)
    # CPU accelerations (generator/acceleration.py); they change pixels, so they
    # are parameters. A row from before they existed ran without them.
    deep_cache_interval = models.PositiveSmallIntegerField(default=1)
    token_merging = models.FloatField(default=0.0)
    # Where it ran (bf16 and fp16 move pixels): written by the worker that made it.
    device = models.CharField(max_length=16, blank=True)
    dtype = models.CharField(max_length=16, blank=True)
    torch_version = models.CharField(max_length=64, blank=True)
    diffusers_version = models.CharField(max_length=64, blank=True)
    # A rerun asks for the placement its original recorded (device, dtype, torch,
    # diffusers); the worker says in placement_note where it could not follow it.
    placement_requested = models.JSONField(default=dict, blank=True)
    placement_note = models.TextField(blank=True)
    # False: the PNG's metadata leaves the prompt out (this row keeps it).
    prompt_in_png = models.BooleanField(default=True)

    progress_step = models.PositiveSmallIntegerField(default=0)
    progress_total = models.PositiveSmallIntegerField(default=0)
    timings = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["user", "-created_at"]),
            models.Index(fields=["user", "enqueued_at"]),
        ]
        verbose_name = "generation request"

    def __str__(self) -> str:
        return f"request {self.pk} ({self.status})"

    @classmethod
    def attempt_prefix(cls, pk: int, attempt: int) -> str:
        return f"generations/{pk}/{attempt}/"

    @classmethod
    def referenced_files(cls) -> list[str]:
        rows = GenerationImage.objects.values_list("image", "diff_map")
        return [name for pair in rows.iterator() for name in pair if name]

    @classmethod
    def requeue_fields(cls) -> dict:
        return {"progress_step": 0}

    @property
    def progress_percent(self) -> int:
        if not self.progress_total:
            return 0
        return round(100 * self.progress_step / self.progress_total)

    @property
    def eta_s(self) -> float | None:
        """Seconds left while running: the time per step so far, times the steps
        left. None before the first step and once ended."""
        if self.status != "running" or not self.progress_step or not self.started_at:
            return None
        elapsed = (timezone.now() - self.started_at).total_seconds()
        left = self.progress_total - self.progress_step
        return round(elapsed / self.progress_step * max(left, 0), 1)

    @property
    def scheduler_label(self) -> str:
        """The sampler's name in words (DPM-Solver++), as the form offers it."""
        from generator.sampling import SCHEDULER_LABELS  # torch: only when shown

        return SCHEDULER_LABELS.get(self.scheduler, self.scheduler)

    @property
    def placement_label(self) -> str:
        """Where it ran, in words: "cpu · bfloat16 · torch 2.13.0 · diffusers
        0.42.1"; empty before a worker ran it."""
        if not self.device:
            return ""
        return (
            f"{self.device} · {self.dtype} · torch {self.torch_version} · "
            f"diffusers {self.diffusers_version}"
        )

    @property
    def mean_ssim(self) -> float | None:
        return _mean(image.ssim for image in self.images.all())

    @property
    def mean_psnr(self) -> float | None:
        return _mean(image.psnr for image in self.images.all())

    @property
    def queue_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.started_at - self.created_at).total_seconds()


def _mean(values: Iterable[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return sum(known) / len(known) if known else None


class GenerationImage(models.Model):
    """One generated image, its seed, and its scores against the frontal image."""

    request = models.ForeignKey(
        GenerationRequest, on_delete=models.CASCADE, related_name="images"
    )
    index = models.PositiveSmallIntegerField()
    seed = models.BigIntegerField()
    image = models.FileField(upload_to="generations/", max_length=255)
    diff_map = models.FileField(
        upload_to="generations/diff/", max_length=255, blank=True
    )
    reference = models.ForeignKey(
        CaseImage, null=True, blank=True, on_delete=models.SET_NULL
    )
    ssim = models.FloatField(null=True, blank=True)
    psnr = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["request", "index"]
        constraints = [
            models.UniqueConstraint(
                fields=["request", "index"], name="one_image_per_index"
            )
        ]

    def __str__(self) -> str:
        return f"image {self.index} of request {self.request_id}"
