"""Synthetic datasets: many prompts × N images as one job, fanned out in chunks on
the gpu queue, and their exports (a ZIP built on the cpu queue)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from xrayweb.cases.models import Case
from xrayweb.generations.models import ModelVersion
from xrayweb.jobs.models import TERMINAL_STATUSES, Job, Status


class PromptSource(models.TextChoices):
    CASES = "cases", "Imported cases matching a filter"
    CSV = "csv", "Uploaded CSV file"
    TEXT = "text", "Uploaded text file, one prompt per line"
    TYPED = "typed", "Prompts typed in a box"


class Dataset(models.Model):
    """One user's dataset: its prompts, parameters and seed; its chunks do the work.

    Its pixel-steps are charged to the owner's daily budget from ``started_at``
    (when its first chunk is claimed); see services.dataset_create.
    """

    name = models.CharField(max_length=100)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL
    )
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT)
    # GenerationParams fields but prompt, seed and num_images.
    params = models.JSONField(default=dict)
    seed = models.BigIntegerField(help_text="The job seed every image seed comes from")
    images_per_prompt = models.PositiveSmallIntegerField(default=1)
    source = models.CharField(max_length=8, choices=PromptSource.choices)
    source_description = models.TextField(blank=True)
    prompts_total = models.PositiveIntegerField(default=0)
    chunks_total = models.PositiveIntegerField(default=0)
    chunks_done = models.PositiveIntegerField(default=0)
    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["created_by", "-created_at"])]

    def __str__(self) -> str:
        return f"dataset {self.pk} {self.name!r} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def cancel_pending(self) -> bool:
        return self.cancel_requested_at is not None and not self.is_terminal

    @property
    def images_total(self) -> int:
        return self.prompts_total * self.images_per_prompt

    @property
    def cost(self) -> int:
        """Pixel-steps of the whole dataset (steps × width × height × images)."""
        p = self.params
        return p["steps"] * p["width"] * p["height"] * self.images_total


class DatasetPrompt(models.Model):
    """One prompt of a dataset, where it came from, and the labels kept with it."""

    dataset = models.ForeignKey(
        Dataset, on_delete=models.CASCADE, related_name="prompts"
    )
    index = models.PositiveIntegerField()
    text = models.TextField()
    case = models.ForeignKey(Case, null=True, blank=True, on_delete=models.SET_NULL)
    labels = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["dataset", "index"]
        constraints = [
            models.UniqueConstraint(
                fields=["dataset", "index"], name="one_prompt_per_index"
            )
        ]

    def __str__(self) -> str:
        return f"prompt {self.index} of dataset {self.dataset_id}"


def dataset_id_of(model: type[Job], pk: int) -> int | None:
    """The dataset of one of ``model``'s rows (a chunk, export or report)."""
    return model.objects.filter(pk=pk).values_list("dataset_id", flat=True).first()


class DatasetChunk(Job):
    """Prompts ``start`` to ``stop`` (exclusive) of a dataset, run as one gpu job.

    Its images become rows only on its fenced success; a chunk whose worker died is
    run again from its first prompt, and the dead attempt's files are deleted.
    """

    task_name = "dataset.chunk"
    owner_lookup = "dataset__created_by"
    files_prefix = "datasets/"
    dispatch_rank = 1  # after the same owner's interactive generation requests

    dataset = models.ForeignKey(
        Dataset, on_delete=models.CASCADE, related_name="chunks"
    )
    index = models.PositiveIntegerField()
    start = models.PositiveIntegerField()
    stop = models.PositiveIntegerField()
    images_done = models.PositiveIntegerField(
        default=0, help_text="Images made by the running attempt so far"
    )

    class Meta:
        ordering = ["dataset", "index"]
        verbose_name = "dataset chunk"
        constraints = [
            models.UniqueConstraint(
                fields=["dataset", "index"], name="one_dataset_chunk_per_index"
            )
        ]

    def __str__(self) -> str:
        return f"chunk {self.index} of dataset {self.dataset_id}"

    @classmethod
    def attempt_prefix(cls, pk: int, attempt: int) -> str | None:
        found = dataset_id_of(cls, pk)
        if found is None:
            return None
        return f"{cls.files_prefix}{found}/chunks/{pk}/{attempt}/"

    @classmethod
    def referenced_files(cls) -> list[str]:
        return list(DatasetImage.objects.values_list("image", flat=True).iterator())

    @classmethod
    def requeue_fields(cls) -> dict:
        return {"images_done": 0}

    @classmethod
    def settle(cls) -> None:
        """A chunk that recovery failed or cancelled ends its dataset too."""
        from xrayweb.datasets.services import datasets_settle

        datasets_settle()


class DatasetImage(models.Model):
    """One image of a dataset: its prompt, its place among the prompt's N, its seed."""

    prompt = models.ForeignKey(
        DatasetPrompt, on_delete=models.CASCADE, related_name="images"
    )
    index = models.PositiveSmallIntegerField()
    seed = models.BigIntegerField()
    image = models.CharField("PNG (storage key)", max_length=255)

    class Meta:
        ordering = ["prompt", "index"]
        constraints = [
            models.UniqueConstraint(
                fields=["prompt", "index"], name="one_dataset_image_per_index"
            )
        ]

    def __str__(self) -> str:
        return f"image {self.index} of {self.prompt}"

    @property
    def savename(self) -> str:
        """Its file name inside an export's ``images/`` folder."""
        return f"p{self.prompt.index:05d}_{self.index}.png"


class DatasetExport(Job):
    """A ZIP of a dataset (images, metadata.csv, DATASHEET.md, and with
    ``include_dicom`` one Secondary Capture per image), built on the cpu queue into
    storage at ``exports/<dataset>/<name>.zip``."""

    task_name = "dataset_export.run"
    owner_lookup = "dataset__created_by"
    files_prefix = "exports/"

    dataset = models.ForeignKey(
        Dataset, on_delete=models.CASCADE, related_name="exports"
    )
    archive = models.CharField("ZIP (storage key)", max_length=255, blank=True)
    size_bytes = models.PositiveBigIntegerField(default=0)
    include_dicom = models.BooleanField(
        default=False, help_text="dicom/<name>.dcm beside each images/<name>.png"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "dataset export"

    def __str__(self) -> str:
        return f"export {self.pk} of dataset {self.dataset_id} ({self.status})"

    @classmethod
    def referenced_files(cls) -> list[str]:
        """A ZIP is saved once, by the fenced finish; a killed attempt's partial
        ZIP has no row and goes with the orphan sweep."""
        return list(cls.objects.exclude(archive="").values_list("archive", flat=True))


class DatasetReport(Job):
    """A dataset's quality and privacy report (FID, diversity, memorization, and
    each by finding), computed on the train queue beside evaluations.

    ``results`` holds the figures (generator.dataset_report); the flagged pairs'
    training images are copied into storage under the attempt's prefix, and every
    image's nearest training image goes to ``nearest_csv``.
    """

    task_name = "dataset_report.run"
    owner_lookup = "dataset__created_by"
    files_prefix = "dataset-reports/"

    dataset = models.ForeignKey(
        Dataset, on_delete=models.CASCADE, related_name="reports"
    )
    split = models.CharField(
        max_length=8, default="test", help_text="Real images for FID: this split's"
    )
    min_fid_images = models.PositiveIntegerField(
        help_text="FID is shown only when both sides have this many images"
    )
    threshold_margin = models.FloatField(
        help_text="Added to the highest held-out nearest-training cosine"
    )
    phase = models.CharField(max_length=40, blank=True)
    results = models.JSONField(default=dict, blank=True)
    nearest_csv = models.CharField(
        "nearest.csv (storage key)", max_length=255, blank=True
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "dataset report"

    def __str__(self) -> str:
        return f"report {self.pk} of dataset {self.dataset_id} ({self.status})"

    @classmethod
    def attempt_prefix(cls, pk: int, attempt: int) -> str | None:
        found = dataset_id_of(cls, pk)
        if found is None:
            return None
        return f"{cls.files_prefix}{found}/{pk}/{attempt}/"

    @classmethod
    def referenced_files(cls) -> list[str]:
        keys = []
        for csv_key, results in cls.objects.exclude(results={}).values_list(
            "nearest_csv", "results"
        ):
            keys.append(csv_key)
            flagged = (results.get("memorization") or {}).get("flagged", [])
            keys.extend(
                pair["training_key"] for pair in flagged if "training_key" in pair
            )
        return [key for key in keys if key]

    @property
    def flagged(self) -> list[dict]:
        return (self.results.get("memorization") or {}).get("flagged", [])
