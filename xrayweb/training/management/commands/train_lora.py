"""python manage.py train_lora --name NAME [--base MODEL] [options]

Runs the same code as the Celery task, in this process, printing progress. Killed
and started again with --resume RUN_ID, it continues from the last checkpoint.
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from generator.errors import InvalidParameterError
from generator.training import TrainingProgress
from xrayweb.generations.models import ModelVersion
from xrayweb.generations.services import model_version_default
from xrayweb.jobs import lifecycle
from xrayweb.jobs.models import Status
from xrayweb.training import services
from xrayweb.training.models import TrainingRun
from xrayweb.training.runner import training_run_execute


class Command(BaseCommand):
    help = "Fine-tune a base model on the train-split cases and register the result."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--name", help="name of the new model version")
        parser.add_argument(
            "--base",
            help="base model version name (default: the platform's default base)",
        )
        parser.add_argument(
            "--config",
            default="{}",
            help='TrainingConfig fields as JSON, e.g. \'{"rank": 8, "epochs": 2}\'',
        )
        parser.add_argument("--include-laterals", action="store_true")
        parser.add_argument(
            "--resume",
            type=int,
            metavar="RUN_ID",
            help="continue an interrupted run from its checkpoint",
        )

    def handle(self, *args: object, **options: object) -> None:
        run = (
            self._resumed(options["resume"])
            if options["resume"]
            else self._new(options)
        )
        self.stdout.write(f"training run {run.pk} → storage {run.files_key}")
        if not training_run_execute(run_id=run.pk, echo=self._echo):
            raise CommandError(f"run {run.pk} is held by {run.worker}; stop it first")
        run.refresh_from_db()
        if run.status != Status.SUCCEEDED:
            raise CommandError(f"run {run.pk} {run.status}: {run.error}")
        version = run.model_version
        self.stdout.write(
            self.style.SUCCESS(f"model version {version.name} ({version.kind}) saved")
        )

    def _new(self, options: dict) -> TrainingRun:
        if not options["name"]:
            raise CommandError("--name is required for a new run")
        base = self._base(options["base"])
        try:
            return services.training_run_create(
                user=None,
                name=options["name"],
                base=base,
                config=json.loads(options["config"]),
                include_laterals=options["include_laterals"],
                enqueue=False,
            )
        except (InvalidParameterError, ValueError, TypeError) as exc:
            raise CommandError(str(exc)) from exc

    def _base(self, name: str | None) -> ModelVersion:
        if not name:
            return model_version_default()
        base = ModelVersion.objects.filter(name=name).first()
        if base is None:
            raise CommandError(f"no model version named {name!r}")
        return base

    def _resumed(self, run_id: int) -> TrainingRun:
        """The run, queued again if its worker stopped (its lease ran out)."""
        lifecycle.recover(TrainingRun)
        run = TrainingRun.objects.filter(pk=run_id).first()
        if run is None or run.is_terminal:
            raise CommandError(f"run {run_id} does not exist or has ended")
        return run

    def _echo(self, report: TrainingProgress) -> None:
        self.stdout.write(
            f"step {report.step}/{report.total} epoch {report.epoch} "
            f"loss {report.loss:.4f} lr {report.learning_rate:.2e} "
            f"eta {report.eta_s:.0f}s"
        )
