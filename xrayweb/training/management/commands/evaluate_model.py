"""python manage.py evaluate_model --model NAME [--cases N] [--chunk-size K]

Scores the model on the first N test-split cases with the same code as the Celery
chunks, in this process, and prints SSIM mean ± std, PSNR, FID and SSIM by finding.
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from generator.errors import InvalidParameterError
from xrayweb.generations.models import ModelVersion
from xrayweb.jobs.models import Status
from xrayweb.training import services
from xrayweb.training.models import EvaluationRun
from xrayweb.training.runner import evaluation_chunk_execute


class Command(BaseCommand):
    help = "Evaluate a model version on test-split cases (SSIM, PSNR, FID)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--model", required=True, help="model version name")
        parser.add_argument("--cases", type=int, default=100)
        parser.add_argument("--chunk-size", type=int, default=25)
        parser.add_argument(
            "--params",
            default="{}",
            help='generation parameters as JSON, e.g. \'{"steps": 20, "seed": 0}\'',
        )
        parser.add_argument("--no-fid", action="store_true")

    def handle(self, *args: object, **options: object) -> None:
        version = ModelVersion.objects.filter(name=options["model"]).first()
        if version is None:
            raise CommandError(f"no model version named {options['model']!r}")
        try:
            evaluation = services.evaluation_create(
                user=None,
                model_version=version,
                cases=options["cases"],
                chunk_size=options["chunk_size"],
                params=json.loads(options["params"]),
                with_fid=not options["no_fid"],
                enqueue=False,
            )
        except (InvalidParameterError, ValueError, TypeError) as exc:
            raise CommandError(str(exc)) from exc
        for chunk in evaluation.chunks.order_by("index"):
            self.stdout.write(f"chunk {chunk.index + 1}/{evaluation.chunks_total}")
            evaluation_chunk_execute(chunk_id=chunk.pk)
        evaluation.refresh_from_db()
        if evaluation.status != Status.SUCCEEDED:
            raise CommandError(f"evaluation {evaluation.pk}: {evaluation.error}")
        self._print(evaluation)

    def _print(self, evaluation: EvaluationRun) -> None:
        results = evaluation.results
        ssim, psnr = results["ssim"], results["psnr"]
        fid = "—" if results["fid"] is None else f"{results['fid']:.2f}"
        self.stdout.write(
            f"{evaluation.model_version.name}: {results['cases']} cases, "
            f"SSIM {ssim['mean']:.4f} ± {ssim['std']:.4f}, "
            f"PSNR {_number(psnr['mean'])} dB, FID {fid}"
        )
        for finding, stats in results["ssim_by_finding"].items():
            self.stdout.write(f"  {finding}: SSIM {stats['mean']:.4f} (n={stats['n']})")


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"
