"""The datasets world: three prompts from a CSV with a label, the tiny model at
2 steps and 64×64, and helpers that run a dataset's chunks in this process."""

from __future__ import annotations

import time

from xrayweb.datasets import services, sources
from xrayweb.datasets.models import Dataset, DatasetChunk, PromptSource
from xrayweb.datasets.runner import dataset_chunk_execute

FAST = {"steps": 2, "width": 64, "height": 64}
CSV = (
    b"prompt,finding\n"
    b"No acute cardiopulmonary disease.,normal\n"
    b"Mild cardiomegaly.,cardiomegaly\n"
    b"Small right pleural effusion.,effusion\n"
)


def create(user, version, **overrides) -> Dataset:
    fields = {
        "name": "three findings",
        "model_version": version,
        "params": FAST,
        "seed": 7,
        "images_per_prompt": 2,
        "prompts": sources.prompts_from_csv(CSV, "findings.csv"),
        "source": PromptSource.CSV,
        "source_description": "file findings.csv",
    }
    fields.update(overrides)
    return services.dataset_create(user=user, **fields)


def run_chunks(dataset: Dataset) -> None:
    """Every chunk of ``dataset``, in order, in this process."""
    for pk in dataset.chunks.order_by("index").values_list("pk", flat=True):
        assert dataset_chunk_execute(chunk_id=pk)


def wait_for_dataset(pk: int, statuses: set[str], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = Dataset.objects.get(pk=pk).status
        if status in statuses:
            return status
        time.sleep(0.2)
    chunks = list(DatasetChunk.objects.filter(dataset_id=pk).values("status", "error"))
    raise AssertionError(f"dataset {pk} still {status!r} after {timeout} s: {chunks}")
