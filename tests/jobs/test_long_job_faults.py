"""Faults in the long jobs, under real worker processes: a worker SIGKILLed during an
import, a training run and an evaluation, a cancel of a running training, and a
duplicate message delivered while a job runs. Each job resumes or ends failed with a
reason; none stays running."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generator.sampling import GenerationParams
from tests.cases.conftest import report_xml
from tests.jobs.conftest import LEASE_S, TEST_SETTINGS, Platform, wait_until
from tests.training.conftest import RUN_CONFIG, make_case
from tests.training.data import SHADES
from worker.app import app
from xrayweb.cases import services as case_services
from xrayweb.cases.models import Case, CaseImage, ImportRun, Split
from xrayweb.generations import services as generation_services
from xrayweb.generations.models import GenerationRequest, ModelVersion
from xrayweb.jobs import files
from xrayweb.jobs.models import Status
from xrayweb.training import services as training_services
from xrayweb.training.files import stored_checkpoints
from xrayweb.training.models import EvaluationRun, TrainingRun

pytestmark = [pytest.mark.slow]

DONE = {Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}
# Killed, the job is found by its lease (LEASE_S) on the next reconcile tick.
RECOVERY_S = LEASE_S + TEST_SETTINGS["XRAY_RECONCILE_INTERVAL_S"] + 30
TRAIN_CONFIG = {**RUN_CONFIG, "epochs": 40}  # long enough to be killed mid-way


def field(model, pk: int, name: str):
    return model.objects.values_list(name, flat=True).get(pk=pk)


def noisy_png(seed: int, size: int = 768) -> bytes:
    """A PNG that takes the importer a moment to read and resize."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def openi_folders(root: Path, studies: int) -> tuple[Path, Path]:
    """The Open-i layout unpacked: one report XML and one frontal PNG per study."""
    reports, images = root / "ecgen-radiology", root / "images"
    reports.mkdir(parents=True)
    images.mkdir()
    for number in range(1, studies + 1):
        image_id = f"CXR{number}_IM-{number:04d}-1001"
        (reports / f"{number}.xml").write_bytes(report_xml(f"CXR{number}", [image_id]))
        (images / f"{image_id}.png").write_bytes(noisy_png(number))
    return reports, images


def stored_under(prefix: str) -> set[str]:
    return set(files.walk(prefix))


def test_a_killed_import_runs_again_and_imports_every_study_once(
    platform: Platform, staff, tmp_path: Path
):
    studies = 100
    reports, images = openi_folders(tmp_path / "openi", studies)
    platform.start_worker("control")
    platform.start_beat()
    platform.start_worker("cpu")
    run = case_services.import_run_create(
        user=staff, options={"reports": str(reports), "images": str(images), "seed": 0}
    )

    progress = ImportRun.objects.filter(pk=run.pk, phase="images")
    wait_until(
        lambda: progress.filter(progress_done__gte=5).exists(), 120, "five images"
    )
    platform.kill("worker-cpu")
    killed_at = field(ImportRun, run.pk, "progress_done")
    assert field(ImportRun, run.pk, "status") == Status.RUNNING
    platform.start_worker("cpu")
    wait_until(lambda: field(ImportRun, run.pk, "status") in DONE, 300, "the import")

    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED, run.error
    assert run.attempt == 2
    assert killed_at < studies  # the kill landed mid-import
    assert Case.objects.count() == studies
    assert CaseImage.objects.count() == studies
    referenced = {
        name
        for pair in CaseImage.objects.values_list("original", "derivative")
        for name in pair
        if name
    }
    # Every stored file belongs to a row: nothing the killed attempt wrote is left.
    assert stored_under("cases/") == referenced


def run_create(staff, version: ModelVersion, **config) -> TrainingRun:
    return training_services.training_run_create(
        user=staff, name="gray-lora", base=version, config={**TRAIN_CONFIG, **config}
    )


def checkpoints_of(run: TrainingRun) -> list[str]:
    """The run's checkpoints in storage (where any host resumes from)."""
    return stored_checkpoints(field(TrainingRun, run.pk, "files_key"))


@pytest.fixture
def gray_cases(transactional_db, media_root) -> list[Case]:
    """Train cases of two shades, and test cases for evaluations."""
    cases = [
        make_case(f"T{i}", caption, SHADES[caption])
        for i, caption in enumerate(list(SHADES) * 2)
    ]
    for i in range(4):
        make_case(f"X{i}", "dark chest", 40, split=Split.TEST)
    return cases


def test_a_training_run_killed_mid_way_resumes_from_its_checkpoint(
    platform: Platform, staff, tiny_version, gray_cases, tmp_path: Path
):
    platform.start_worker("control")
    platform.start_beat()
    platform.start_worker("train")
    run = run_create(staff, tiny_version)

    wait_until(
        lambda: field(TrainingRun, run.pk, "progress_step") >= 4,
        300,
        "four training steps",
    )
    platform.kill("worker-train")
    killed_at = field(TrainingRun, run.pk, "progress_step")
    # It resumes on "another host": an empty work folder, the checkpoint in storage.
    platform.start_worker("train", XRAY_WORK_DIR=str(tmp_path / "second-host"))
    wait_until(
        lambda: field(TrainingRun, run.pk, "attempt") == 2, RECOVERY_S, "a 2nd claim"
    )
    wait_until(lambda: field(TrainingRun, run.pk, "status") in DONE, 600, "the run")

    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED, run.error
    assert run.attempt == 2
    assert 1 <= run.resumed_from_step <= killed_at
    assert run.progress_step == run.progress_total
    assert ModelVersion.objects.filter(name="gray-lora").count() == 1


def test_cancel_of_a_running_training_stops_it_and_keeps_its_checkpoints(
    platform: Platform, staff, tiny_version, gray_cases
):
    platform.start_worker("train")
    run = run_create(staff, tiny_version)
    wait_until(lambda: len(checkpoints_of(run)) >= 1, 300, "a first checkpoint")

    assert training_services.training_run_cancel(run_id=run.pk, user=staff) is None
    wait_until(lambda: field(TrainingRun, run.pk, "status") in DONE, 60, "the stop")

    run.refresh_from_db()
    assert run.status == Status.CANCELLED
    assert run.progress_step < run.progress_total
    assert checkpoints_of(run), "the checkpoints were deleted"
    assert not ModelVersion.objects.filter(name="gray-lora").exists()


def test_an_evaluation_whose_worker_is_killed_completes_every_chunk(
    platform: Platform, staff, tiny_version, gray_cases
):
    platform.start_worker("control")
    platform.start_beat()
    platform.start_worker("train")
    evaluation = training_services.evaluation_create(
        user=staff,
        model_version=tiny_version,
        cases=4,
        chunk_size=1,
        params={"steps": 30, "width": 64, "height": 64},
        with_fid=False,
    )
    chunks = evaluation.chunks.all()

    # The first chunk loads the pipeline before it scores: killed while running.
    wait_until(
        lambda: chunks.filter(status=Status.RUNNING).exists(), 300, "a running chunk"
    )
    platform.kill("worker-train")
    platform.start_worker("train")
    wait_until(
        lambda: field(EvaluationRun, evaluation.pk, "status") in DONE,
        600,
        "the evaluation",
    )

    evaluation.refresh_from_db()
    assert evaluation.status == Status.SUCCEEDED, evaluation.error
    assert sorted(chunks.values_list("status", flat=True)) == [Status.SUCCEEDED] * 4
    assert max(chunks.values_list("attempt", flat=True)) == 2
    scored = [score["case_id"] for chunk in chunks for score in chunk.scores]
    assert sorted(scored) == sorted(evaluation.case_ids)
    assert evaluation.chunks_done == 4


def test_a_duplicate_message_for_a_running_job_changes_nothing(
    platform: Platform, alice, tiny_version
):
    platform.start_worker("gpu")
    params = GenerationParams(prompt="Clear lungs.", seed=1, steps=60)
    job = generation_services.generation_request_create(
        user=alice, params=params, model_version=tiny_version
    )
    wait_until(
        lambda: field(GenerationRequest, job.pk, "progress_step") > 0, 120, "a step"
    )
    # A second worker takes the duplicate while the first still runs the job.
    platform.start_worker("gpu", index=2)
    app.send_task(
        GenerationRequest.task_name, args=[job.pk], queue=platform.queue("gpu")
    )
    platform.wait_for_log("worker-gpu-2", "succeeded in", 60)
    assert field(GenerationRequest, job.pk, "status") == Status.RUNNING
    wait_until(
        lambda: field(GenerationRequest, job.pk, "status") in DONE, 120, "the job"
    )

    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED, job.error
    assert job.attempt == 1
    assert job.images.count() == 1
    assert stored_under("generations/") == {job.images.get().image.name}
