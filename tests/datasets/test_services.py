"""Datasets in this process: chunks, derived seeds, the same pixels again, cancel,
a killed worker, and every bad input refused with nothing queued."""

from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image

from generator.sampling import GenerationParams
from tests.datasets.conftest import CSV, FAST, create, run_chunks
from xrayweb.datasets import runner, services, sources
from xrayweb.datasets.models import Dataset, DatasetChunk, DatasetImage, PromptSource
from xrayweb.jobs import files, lifecycle, quotas
from xrayweb.jobs.models import Status, UserQuota


def refusal(call, *args: object, **kwargs: object) -> str:
    """The message of the ValueError ``call`` raises; fails when it raises none."""
    try:
        call(*args, **kwargs)
    except ValueError as exc:
        return str(exc)
    raise AssertionError(f"{call.__name__} accepted {args} {kwargs}")


def pixels(dataset: Dataset) -> list[np.ndarray]:
    images = DatasetImage.objects.filter(prompt__dataset=dataset)
    out = []
    for image in images.order_by("prompt__index", "index"):
        with default_storage.open(image.image, "rb") as handle:
            out.append(np.asarray(Image.open(handle)))
    return out


def test_it_splits_the_prompts_into_chunks_sent_to_the_gpu_queue(
    alice, tiny_version, sent, settings, django_capture_on_commit_callbacks
):
    settings.XRAY_DATASET_CHUNK_PROMPTS = 2
    with django_capture_on_commit_callbacks(execute=True):
        dataset = create(alice, tiny_version)

    chunks = list(dataset.chunks.order_by("index"))
    assert [(c.start, c.stop) for c in chunks] == [(0, 2), (2, 3)]
    assert sent == [("dataset.chunk", [c.pk], "gpu") for c in chunks]
    assert [p.labels for p in dataset.prompts.order_by("index")] == [
        {"finding": "normal"},
        {"finding": "cardiomegaly"},
        {"finding": "effusion"},
    ]
    assert dataset.params == {
        **FAST,
        "guidance_scale": 7.5,
        "scheduler": "dpmpp",
        "lora_scale": 1.0,
        "negative_prompt": "",
        # Not offered by the dataset form: the generator's defaults, stored.
        "deep_cache_interval": GenerationParams.deep_cache_interval,
        "token_merging": GenerationParams.token_merging,
    }


def test_it_derives_each_prompts_seed_from_the_job_seed_and_index():
    seeds = [services.prompt_seed(7, index) for index in range(100)]

    assert seeds == [services.prompt_seed(7, index) for index in range(100)]
    assert len(set(seeds)) == 100
    assert services.prompt_seed(8, 0) != seeds[0]
    assert all(GenerationParams(prompt="x", seed=s, num_images=8) for s in seeds)


def test_it_makes_every_image_and_the_same_job_makes_the_same_pixels(
    alice, tiny_version
):
    first = create(alice, tiny_version)
    again = create(alice, tiny_version)
    other_seed = create(alice, tiny_version, seed=8)

    for dataset in (first, again, other_seed):
        run_chunks(dataset)
        dataset.refresh_from_db()
        assert dataset.status == Status.SUCCEEDED, dataset.error

    images = DatasetImage.objects.filter(prompt__dataset=first)
    assert images.count() == 6
    expected = [services.prompt_seed(7, p) + i for p in range(3) for i in range(2)]
    assert (
        list(images.order_by("prompt__index", "index").values_list("seed", flat=True))
        == expected
    )
    a, b, c = pixels(first), pixels(again), pixels(other_seed)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    assert services.dataset_progress(first).images_done == 6


def test_it_cancels_queued_chunks_and_stops_the_running_one(
    alice, tiny_version, settings, monkeypatch
):
    settings.XRAY_DATASET_CHUNK_PROMPTS = 1
    dataset = create(alice, tiny_version)
    first, second, third = dataset.chunks.order_by("index")
    assert runner.dataset_chunk_execute(chunk_id=first.pk)
    step = runner.ProgressWriter.__call__

    def cancel_at_first_step(self, number: int, total: int) -> bool:
        if number == 1:
            assert services.dataset_cancel(dataset_id=dataset.pk, user=alice) is None
        return step(self, number, total)

    monkeypatch.setattr(runner.ProgressWriter, "__call__", cancel_at_first_step)
    assert runner.dataset_chunk_execute(chunk_id=second.pk)

    dataset.refresh_from_db()
    statuses = dataset.chunks.order_by("index").values_list("status", flat=True)
    assert list(statuses) == [Status.SUCCEEDED, Status.CANCELLED, Status.CANCELLED]
    assert dataset.status == Status.CANCELLED
    assert DatasetImage.objects.filter(prompt__dataset=dataset).count() == 2
    prefix = DatasetChunk.attempt_prefix(second.pk, 1)
    assert list(files.walk(prefix)) == []
    assert not runner.dataset_chunk_execute(chunk_id=third.pk)
    message = services.dataset_cancel(dataset_id=dataset.pk, user=alice)
    assert (
        message == f"Dataset {dataset.pk} is cancelled; it can no longer be cancelled."
    )


def test_it_refuses_a_strangers_cancel(alice, bob, tiny_version):
    dataset = create(alice, tiny_version)

    assert services.dataset_cancel(dataset_id=dataset.pk, user=bob) == (
        lifecycle.CANCEL_FORBIDDEN
    )
    assert Dataset.objects.get(pk=dataset.pk).cancel_requested_at is None


def test_it_redoes_a_chunk_whose_worker_died_and_stores_each_image_once(
    alice, tiny_version
):
    dataset = create(alice, tiny_version)
    chunk = dataset.chunks.get()
    # A worker claimed the chunk, wrote a file, and died.
    attempt = lifecycle.claim(DatasetChunk, chunk.pk, "dead:1")
    dead = DatasetChunk.attempt_prefix(chunk.pk, attempt)
    default_storage.save(f"{dead}0_0.png", ContentFile(b"partial"))
    DatasetChunk.objects.filter(pk=chunk.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )

    assert lifecycle.recover(DatasetChunk) == 1
    assert list(files.walk(dead)) == []
    assert DatasetChunk.objects.get(pk=chunk.pk).status == Status.QUEUED

    assert runner.dataset_chunk_execute(chunk_id=chunk.pk)
    dataset.refresh_from_db()
    assert dataset.status == Status.SUCCEEDED
    images = DatasetImage.objects.filter(prompt__dataset=dataset)
    assert images.count() == 6
    assert all(
        key.startswith(DatasetChunk.attempt_prefix(chunk.pk, 2))
        for key in (images.values_list("image", flat=True))
    )
    # A late success from the dead attempt changes nothing.
    late = runner.Attempt(DatasetChunk, chunk.pk, attempt)
    assert not services.dataset_chunk_succeed(attempt=late, images=[])
    assert images.count() == 6


BAD_CSVS = [
    (b"", sources.EMPTY_FILE.format(name="in.csv")),
    (b"  \n", sources.EMPTY_FILE.format(name="in.csv")),
    (
        "prompt\nPleural effusion.\n".encode("utf-16"),
        sources.NOT_UTF8.format(name="in.csv", position=0),
    ),
    (
        b"text,finding\nClear lungs.,normal\n",
        sources.NO_PROMPT_COLUMN.format(name="in.csv", columns="'text', 'finding'"),
    ),
    (b"prompt,finding\n,normal\n", sources.EMPTY_PROMPT.format(row=2, name="in.csv")),
    (b"prompt\n", sources.NO_PROMPTS.format(where="the file 'in.csv'")),
]


@pytest.mark.parametrize(("data", "message"), BAD_CSVS)
def test_it_refuses_a_bad_csv_by_name(data, message):
    assert refusal(sources.prompts_from_csv, data, "in.csv") == message


def test_it_refuses_a_text_file_in_latin_1_and_an_empty_box():
    latin = "Épanchement.\n".encode("latin-1")
    assert refusal(sources.prompts_from_text, latin, "in.txt") == (
        sources.NOT_UTF8.format(name="in.txt", position=0)
    )
    assert refusal(sources.prompts_from_lines, " \n\n") == (
        sources.NO_PROMPTS.format(where="the box")
    )


def test_it_refuses_a_case_filter_that_matches_nothing(case_with_image):
    found = sources.prompts_from_cases(mesh="normal", split="test", limit=10)
    assert [(p.text, p.case) for p in found] == [
        (case_with_image.prompt, case_with_image)
    ]
    message = refusal(
        sources.prompts_from_cases, mesh="pneumothorax", split="test", limit=10
    )
    assert message == sources.NO_CASES.format(
        filter="MeSH 'pneumothorax', split 'test'"
    )


def test_it_queues_nothing_over_a_limit_or_the_quota(
    alice, tiny_version, settings, sent, django_capture_on_commit_callbacks
):
    prompts = sources.prompts_from_csv(CSV, "findings.csv")
    settings.XRAY_DATASET_MAX_PROMPTS = 1
    refusals = []
    with django_capture_on_commit_callbacks(execute=True):
        for overrides in (
            {},
            {"images_per_prompt": 9},
            {"params": {**FAST, "steps": 0}},
            {"name": " "},
        ):
            refusals.append(
                refusal(create, alice, tiny_version, prompts=prompts[:2], **overrides)
            )
        settings.XRAY_DATASET_MAX_PROMPTS = 5000
        settings.XRAY_DATASET_MAX_IMAGES = 5
        refusals.append(refusal(create, alice, tiny_version, prompts=prompts))
        settings.XRAY_DATASET_MAX_IMAGES = 20000
        UserQuota.objects.create(user=alice, daily_pixel_steps=6 * 2 * 64 * 64 - 1)
        with pytest.raises(quotas.QuotaExceeded) as raised:
            create(alice, tiny_version, prompts=prompts)
        refusals.append(str(raised.value))

    assert refusals[0] == services.TOO_MANY_PROMPTS.format(count=2, limit=1)
    assert refusals[1:4] == [
        "num_images must be between 1 and 8, got 9",
        "steps must be between 1 and 150, got 0",
        services.EMPTY_NAME,
    ]
    assert refusals[4] == services.TOO_MANY_IMAGES.format(
        prompts=3, n=2, images=6, limit=5
    )
    assert refusals[5] == quotas.OVER_BUDGET.format(
        cost=quotas.millions(49152),
        used=quotas.millions(0),
        limit=quotas.millions(49151),
    )
    assert not Dataset.objects.exists()
    assert sent == []


def test_it_counts_a_dataset_as_one_queued_job_and_charges_it_when_it_starts(
    alice, tiny_version
):
    UserQuota.objects.create(user=alice, max_queued_jobs=2)
    first = create(alice, tiny_version)
    create(alice, tiny_version)
    with pytest.raises(quotas.QuotaExceeded) as raised:
        quotas.generation_quota_check(
            user=alice, steps=2, width=64, height=64, images=1
        )
    assert str(raised.value) == quotas.TOO_MANY_QUEUED.format(count=2, limit=2)
    assert quotas._datasets_usage(alice, reserved=False) == (2, 0)
    assert quotas._datasets_usage(alice, reserved=True) == (2, 2 * first.cost)

    services.dataset_started(dataset_id=first.pk)
    assert quotas._datasets_usage(alice, reserved=False)[1] == first.cost
    assert first.cost == 6 * 2 * 64 * 64


def test_it_writes_png_provenance_that_says_synthetic(alice, tiny_version):
    dataset = create(alice, tiny_version)
    run_chunks(dataset)

    image = DatasetImage.objects.filter(prompt__dataset=dataset).first()
    with default_storage.open(image.image, "rb") as handle:
        png = Image.open(io.BytesIO(handle.read()))
    assert png.text["Synthetic"] == "true"
    assert f'"seed": {image.seed}' in png.text["Parameters"]
    assert sources.PROMPT_COLUMN == "prompt"
    assert dataset.source == PromptSource.CSV
