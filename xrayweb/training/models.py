"""Training runs that end in a model version, and evaluations of model versions."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from xrayweb.generations.models import ModelVersion
from xrayweb.jobs.models import TERMINAL_STATUSES, Job, Status


class TrainingRun(Job):
    """One fine-tuning job: its config, live progress, losses and resulting model."""

    task_name = "training.run"
    owner_lookup = "created_by"

    name = models.CharField(max_length=100, help_text="Name of the model it creates")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL
    )
    base = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, related_name="training_bases"
    )
    config = models.JSONField(default=dict, blank=True)
    include_laterals = models.BooleanField(default=False)
    examples = models.PositiveIntegerField(default=0)

    progress_step = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    epoch = models.PositiveIntegerField(default=0)
    loss = models.FloatField(null=True, blank=True)
    eta_s = models.FloatField(null=True, blank=True)
    loss_history = models.JSONField(default=list, blank=True)
    validation_history = models.JSONField(default=list, blank=True)
    resumed_from_step = models.PositiveIntegerField(default=0)
    # Checkpoints and sample grids, in Django storage under training/<id>/ (see
    # training/files.py); the worker trains in a local folder it mirrors there.
    files_key = models.CharField(
        "files (storage key prefix)", max_length=500, blank=True
    )
    model_version = models.ForeignKey(
        ModelVersion,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="training_runs",
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "training run"
        permissions = [("start_training", "Can start training runs")]

    def __str__(self) -> str:
        return f"training run {self.pk} ({self.status})"

    @property
    def progress_percent(self) -> int:
        if not self.progress_total:
            return 0
        return round(100 * self.progress_step / self.progress_total)


class EvaluationRun(models.Model):
    """SSIM, PSNR and FID of one model version on N test-split cases, in chunks."""

    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.CASCADE, related_name="evaluations"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL
    )
    params = models.JSONField(default=dict, blank=True)
    case_ids = models.JSONField(default=list, blank=True)
    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    chunks_total = models.PositiveIntegerField(default=0)
    chunks_done = models.PositiveIntegerField(default=0)
    results = models.JSONField(default=dict, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    histogram = models.FileField(upload_to="evaluations/", max_length=255, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("start_evaluation", "Can start evaluations")]

    def __str__(self) -> str:
        return f"evaluation {self.pk} of {self.model_version_id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def cancel_pending(self) -> bool:
        return self.cancel_requested_at is not None and not self.is_terminal

    @property
    def duration_s(self) -> float | None:
        """From queued to ended: an evaluation's chunks run as separate jobs."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.created_at).total_seconds()


class EvaluationChunk(Job):
    """A slice of an evaluation's cases, run as its own job; scores per case."""

    task_name = "evaluation.chunk"
    owner_lookup = "evaluation__created_by"
    files_prefix = "evaluation-chunks/"

    evaluation = models.ForeignKey(
        EvaluationRun, on_delete=models.CASCADE, related_name="chunks"
    )
    index = models.PositiveIntegerField()
    case_ids = models.JSONField(default=list)
    scores = models.JSONField(default=list, blank=True)
    images_dir = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["evaluation", "index"]
        verbose_name = "evaluation chunk"
        constraints = [
            models.UniqueConstraint(
                fields=["evaluation", "index"], name="one_chunk_per_index"
            )
        ]

    def __str__(self) -> str:
        return f"chunk {self.index} of evaluation {self.evaluation_id}"

    @classmethod
    def attempt_prefix(cls, pk: int, attempt: int) -> str:
        return f"{cls.files_prefix}{pk}/{attempt}/"

    @classmethod
    def referenced_files(cls) -> list[str]:
        """The generated images that stored scores point to (``image``: a key)."""
        rows = cls.objects.exclude(scores=[]).values_list("scores", flat=True)
        return [score["image"] for scores in rows.iterator() for score in scores]

    @classmethod
    def settle(cls) -> None:
        """A chunk that recovery failed or cancelled ends its evaluation too."""
        from xrayweb.training.services import evaluations_settle

        evaluations_settle()
