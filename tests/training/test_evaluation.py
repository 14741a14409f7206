"""Evaluation: chunks as separate gpu jobs, the last one combines; compare page."""

from __future__ import annotations

import io
import math

import pytest
from django.core.exceptions import PermissionDenied
from django.core.management import call_command
from django.urls import reverse

from generator.evaluation import finding_of, summarize
from tests.training.conftest import make_case
from xrayweb.cases.models import Split
from xrayweb.generations import model_files
from xrayweb.generations.models import ModelKind, ModelVersion
from xrayweb.jobs.models import Status
from xrayweb.jobs.runtime import Attempt
from xrayweb.training import services
from xrayweb.training.models import EvaluationChunk, EvaluationRun
from xrayweb.training.runner import evaluation_chunk_execute

FAST = {"steps": 2, "width": 64, "height": 64}


@pytest.fixture
def test_cases(db, media_root):
    return [
        make_case("E1", "dark chest", 40, split=Split.TEST),
        make_case("E2", "bright chest", 215, split=Split.TEST),
        make_case("E3", "dark chest", 40, split=Split.TEST),
    ]


def create(version, **overrides) -> EvaluationRun:
    fields = {"cases": 3, "chunk_size": 2, "params": FAST, "with_fid": False}
    fields.update(overrides)
    return services.evaluation_create(user=None, model_version=version, **fields)


def test_it_summarizes_scores_by_finding_without_infinite_psnr():
    scores = [
        {"ssim": 0.2, "psnr": 10.0, "findings": ["cardiomegaly"], "image": "a"},
        {"ssim": 0.4, "psnr": math.inf, "findings": ["cardiomegaly"], "image": "b"},
        {"ssim": 0.6, "psnr": 14.0, "findings": [], "image": "c"},
    ]
    report = summarize(scores, with_fid=False)

    assert report["ssim"]["mean"] == pytest.approx(0.4)
    assert report["ssim"]["std"] == pytest.approx(math.sqrt(0.08 / 3))
    assert report["psnr"] == {"n": 2, "mean": 12.0, "std": 2.0}
    assert report["ssim_by_finding"]["cardiomegaly"]["mean"] == pytest.approx(0.3)
    assert report["ssim_by_finding"]["(none)"]["n"] == 1
    assert finding_of("Cardiomegaly/mild") == "cardiomegaly"


def test_it_splits_the_cases_into_chunks_sent_to_the_gpu_queue(
    staff, tiny_version, test_cases, sent, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        evaluation = services.evaluation_create(
            user=staff, model_version=tiny_version, cases=3, chunk_size=2, params=FAST
        )

    chunks = list(evaluation.chunks.order_by("index"))
    assert [len(chunk.case_ids) for chunk in chunks] == [2, 1]
    assert sent == [("evaluation.chunk", [chunk.pk], "train") for chunk in chunks]


def test_it_refuses_non_staff_and_bad_parameters(alice, staff, tiny_version, sent):
    with pytest.raises(PermissionDenied, match=r"training\.start_evaluation"):
        services.evaluation_create(
            user=alice, model_version=tiny_version, cases=1, chunk_size=1
        )
    with pytest.raises(ValueError, match="steps must be between 1 and 150, got 0"):
        services.evaluation_create(
            user=staff,
            model_version=tiny_version,
            cases=1,
            chunk_size=1,
            params={"steps": 0},
        )
    assert not EvaluationRun.objects.exists()


def test_it_scores_each_chunk_and_the_last_one_combines(tiny_version, test_cases):
    evaluation = create(tiny_version, enqueue=False)
    first, last = evaluation.chunks.order_by("index")

    assert evaluation_chunk_execute(chunk_id=first.pk)
    evaluation.refresh_from_db()
    assert (evaluation.status, evaluation.chunks_done) == (Status.RUNNING, 1)
    assert evaluation.results == {}

    assert evaluation_chunk_execute(chunk_id=last.pk)
    evaluation.refresh_from_db()
    assert evaluation.status == Status.SUCCEEDED, evaluation.error
    assert evaluation.results["cases"] == 3
    assert 0 < evaluation.results["ssim"]["n"] == 3
    assert set(evaluation.results["ssim_by_finding"]) == {"dark", "bright"}
    assert evaluation.results["fid"] is None
    assert evaluation.histogram.read(8).startswith(b"\x89PNG")
    assert not evaluation_chunk_execute(chunk_id=last.pk)
    # A late write from the attempt that already finished changes nothing.
    finished = EvaluationChunk.objects.get(pk=last.pk)
    late = Attempt(EvaluationChunk, last.pk, finished.attempt)
    assert not services.evaluation_chunk_succeed(attempt=late, scores=[])
    assert EvaluationChunk.objects.get(pk=last.pk).scores != []


def test_it_fails_the_evaluation_when_a_chunk_fails(db, test_cases, tmp_path):
    missing = ModelVersion.objects.create(
        name="gone", kind=ModelKind.BASE, source=str(tmp_path / "nowhere")
    )
    evaluation = create(missing, enqueue=False)
    first = evaluation.chunks.order_by("index").first()

    evaluation_chunk_execute(chunk_id=first.pk)

    evaluation.refresh_from_db()
    assert evaluation.status == Status.FAILED
    assert evaluation.error == "Chunk 1: " + model_files.UNAVAILABLE.format(name="gone")
    assert not evaluation_chunk_execute(chunk_id=evaluation.chunks.last().pk)


def finished(version: ModelVersion, ssim: float, fid: float) -> EvaluationRun:
    return EvaluationRun.objects.create(
        model_version=version,
        status=Status.SUCCEEDED,
        params={"steps": 20, "seed": 0},
        results={
            "cases": 10,
            "ssim": {"n": 10, "mean": ssim, "std": 0.01},
            "psnr": {"n": 10, "mean": 11.5, "std": 0.5},
            "fid": fid,
            "ssim_by_finding": {"cardiomegaly": {"n": 3, "mean": ssim, "std": 0}},
        },
    )


def test_it_compares_model_versions_side_by_side(client, staff, tiny_version, db):
    lora = ModelVersion.objects.create(
        name="gray-lora", kind=ModelKind.LORA, source=tiny_version.source
    )
    finished(tiny_version, 0.1234, 250.5)
    finished(lora, 0.3456, 120.25)
    client.force_login(staff)

    response = client.get(reverse("evaluations_compare"))

    assert response.status_code == 200
    content = response.content.decode()
    assert content.index("gray-lora") < content.index("tiny-untrained")
    for text in ("0.3456", "0.1234", "120.25", "250.50", "11.50", "cardiomegaly"):
        assert text in content


def test_it_refuses_the_compare_page_to_non_staff(client, alice, db):
    client.force_login(alice)
    assert client.get(reverse("evaluations_compare")).status_code == 403


def test_it_evaluates_from_the_command_line(tiny_version, test_cases):
    out = io.StringIO()
    call_command(
        "evaluate_model",
        "--model=tiny-untrained",
        "--cases=2",
        "--chunk-size=1",
        '--params={"steps": 2, "width": 64, "height": 64}',
        "--no-fid",
        stdout=out,
    )

    assert "tiny-untrained: 2 cases, SSIM" in out.getvalue()
    assert EvaluationRun.objects.get().status == Status.SUCCEEDED
