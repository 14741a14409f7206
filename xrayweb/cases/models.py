"""Imported IU X-ray studies and their images."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from xrayweb.jobs.models import Job


class Split(models.TextChoices):
    TRAIN = "train", "Train"
    VALIDATION = "val", "Validation"
    TEST = "test", "Test"


class Source(models.TextChoices):
    OPENI = "openi", "Open-i archives"
    KAGGLE = "kaggle", "Kaggle layout"
    R2GEN = "r2gen", "R2Gen layout"


class View(models.TextChoices):
    FRONTAL = "frontal", "Frontal"
    LATERAL = "lateral", "Lateral"
    UNKNOWN = "unknown", "Unknown"


class Case(models.Model):
    """One study: its report fields, the prompt derived from them, and its split."""

    uid = models.CharField(max_length=64, unique=True)
    source = models.CharField(max_length=16, choices=Source.choices)
    findings = models.TextField(blank=True)
    impression = models.TextField(blank=True)
    indication = models.TextField(blank=True)
    comparison = models.TextField(blank=True)
    mesh_major = models.JSONField(default=list, blank=True)
    mesh_automatic = models.JSONField(default=list, blank=True)
    problems = models.JSONField(default=list, blank=True)
    # MeSH major and automatic terms joined with "; ", for case search on any database.
    mesh_text = models.TextField(blank=True)
    # The prototype's rule: impression, else findings, cut to 75 CLIP text tokens.
    prompt = models.TextField(blank=True)
    prompt_full = models.TextField(blank=True)
    prompt_truncated = models.BooleanField(default=False)
    split = models.CharField(max_length=8, choices=Split.choices, blank=True)
    split_seed = models.IntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["uid"]
        indexes = [models.Index(fields=["split"])]

    def __str__(self) -> str:
        return self.uid

    def frontal_image(self) -> CaseImage | None:
        """The reference image for SSIM: the first frontal view, if any."""
        return self.images.filter(view=View.FRONTAL).order_by("image_id").first()


class CaseImage(models.Model):
    """One radiograph of a study: the original file and a 256² grayscale derivative."""

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="images")
    image_id = models.CharField(max_length=128, unique=True)
    original = models.FileField(upload_to="cases/original/", max_length=255, blank=True)
    derivative = models.FileField(upload_to="cases/256/", max_length=255)
    view = models.CharField(max_length=8, choices=View.choices, default=View.UNKNOWN)
    view_position = models.CharField(max_length=16, blank=True)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["image_id"]

    def __str__(self) -> str:
        return self.image_id


class ImportRun(Job):
    """One import of the collection: what it was asked to read, its progress, report.

    ``options`` holds the import's inputs (paths, seed, download flag) as given;
    ``report`` the outcome: counts of cases and images created, updated and
    unchanged, and each skipped item with the reason.
    """

    task_name = "imports.run"
    owner_lookup = "created_by"

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    options = models.JSONField(default=dict, blank=True)
    phase = models.CharField(max_length=32, blank=True)
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    report = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "import"
        permissions = [("run_import", "Can run imports")]

    def __str__(self) -> str:
        return f"Import {self.pk} ({self.status})"
