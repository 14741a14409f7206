"""The API for staff: imports, training runs and evaluations. Users get 403.

Each create validates with the admin's or the training page's own form and calls the
same service; each job follows the one lifecycle (list, detail, cancel)."""

from __future__ import annotations

from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import permissions, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from generator.errors import InvalidParameterError
from xrayweb.api import serializers as out
from xrayweb.api.common import IDEMPOTENCY_PARAMETER, NewestFirst, idempotent
from xrayweb.api.errors import field_error, form_invalid
from xrayweb.api.forms import bind
from xrayweb.api.views import PNG_RESPONSES, ApiViewSet
from xrayweb.cases import services as case_services
from xrayweb.cases.forms import ImportStartForm
from xrayweb.cases.models import ImportRun
from xrayweb.training import plots, selectors, services
from xrayweb.training.forms import EvaluationForm, TrainingRunForm
from xrayweb.training.models import EvaluationRun, TrainingRun

# The import form's server-side fields; uploads go through the admin page.
IMPORT_FIELDS = (
    "reports",
    "images",
    "kaggle_dir",
    "r2gen_dir",
    "dicom_metadata",
    "download",
    "seed",
)


class StaffViewSet(ApiViewSet):
    # Staff read; each create checks its own permission (xrayweb/jobs/permissions).
    permission_classes = [permissions.IsAuthenticated, permissions.IsAdminUser]
    pagination_class = NewestFirst

    def _cancel(self, cancel, **ids) -> None:
        error = cancel(user=self.request.user, **ids)
        if error:
            raise field_error(None, error)


@extend_schema(tags=["imports"])
class ImportViewSet(StaffViewSet):
    """Imports of the IU X-ray collection from server paths or the Open-i download."""

    serializer_class = out.ImportOut
    queryset = ImportRun.objects.all()

    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(self._out(page, many=True))

    @extend_schema(
        request=out.ImportIn,
        responses={201: out.ImportOut},
        parameters=[IDEMPOTENCY_PARAMETER],
    )
    def create(self, request: Request) -> Response:
        return idempotent(request, lambda: self._create(request))

    def _create(self, request: Request) -> Response:
        form = bind(ImportStartForm, request.data, fields=IMPORT_FIELDS)
        if not form.is_valid():
            raise form_invalid(form)
        run = case_services.import_run_create(
            user=request.user, options=form.options(uploads={})
        )
        return Response(self._out(run), status=status.HTTP_201_CREATED)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(self._out(self.get_object()))

    @extend_schema(request=None, responses=out.ImportOut)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        """Cancel a queued import, or stop a running one between items."""
        run = self.get_object()
        self._cancel(case_services.import_run_cancel, run_id=run.pk)
        return Response(self._out(self.get_queryset().get(pk=run.pk)))

    def _out(self, runs, many: bool = False):
        for run in runs if many else [runs]:
            run.summary = case_services.import_summary(run.report) if run.report else ""
        return self._data(out.ImportOut, runs, many=many)


@extend_schema(tags=["training runs"])
class TrainingRunViewSet(StaffViewSet):
    """Fine-tuning runs (LoRA or full) that end in a new model version."""

    serializer_class = out.TrainingOut
    queryset = TrainingRun.objects.none()  # the schema's id type; see below

    def get_queryset(self):
        return selectors.training_runs()

    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(self._data(out.TrainingOut, page, many=True))

    @extend_schema(
        request=out.TrainingIn,
        responses={201: out.TrainingDetailOut},
        parameters=[IDEMPOTENCY_PARAMETER],
    )
    def create(self, request: Request) -> Response:
        return idempotent(request, lambda: self._create(request))

    def _create(self, request: Request) -> Response:
        data = request.data
        if isinstance(data, dict) and isinstance(data.get("validation_prompts"), list):
            prompts = data["validation_prompts"]
            if not all(isinstance(p, str) for p in prompts):
                raise field_error("validation_prompts", "must be a list of texts")
            data = {**data, "validation_prompts": "\n".join(prompts)}
        form = bind(TrainingRunForm, data)
        if not form.is_valid():
            raise form_invalid(form)
        try:
            run = services.training_run_create(
                user=request.user,
                name=form.cleaned_data["name"],
                base=form.cleaned_data["base"],
                config=form.config(),
                include_laterals=form.cleaned_data["include_laterals"],
            )
        except (InvalidParameterError, ValueError) as exc:
            raise field_error(None, str(exc)) from None
        return Response(self._detail(run.pk), status=status.HTTP_201_CREATED)

    @extend_schema(responses=out.TrainingDetailOut)
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(self._detail(self.get_object().pk))

    def _detail(self, pk: int) -> dict:
        run = self.get_queryset().get(pk=pk)
        run.grids = selectors.sample_grids(run)
        return self._data(out.TrainingDetailOut, run)

    @extend_schema(request=None, responses=out.TrainingDetailOut)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        """Cancel a queued run, or stop a running one (its checkpoints stay)."""
        run = self.get_object()
        self._cancel(services.training_run_cancel, run_id=run.pk)
        return Response(self._detail(run.pk))

    @extend_schema(responses=PNG_RESPONSES)
    @action(detail=True, url_path=r"loss\.png", url_name="loss")
    def loss(self, request: Request, pk: str) -> HttpResponse:
        """The training (and validation) loss curve."""
        run = self.get_object()
        png = plots.loss_curve_png(run.loss_history, run.validation_history)
        return HttpResponse(png, content_type="image/png")

    @extend_schema(
        parameters=[OpenApiParameter("name", str, OpenApiParameter.PATH)],
        responses=PNG_RESPONSES,
    )
    @action(
        detail=True,
        url_path=r"samples/(?P<name>epoch-[0-9A-Za-z_.-]{1,100}\.png)",
        url_name="sample",
    )
    def sample(self, request: Request, pk: str, name: str) -> FileResponse:
        """One epoch's grid of validation-prompt samples."""
        run = self.get_object()
        if name not in selectors.sample_grids(run):
            raise Http404
        stored = default_storage.open(f"{run.files_key}samples/{name}", "rb")
        return FileResponse(stored, content_type="image/png")


@extend_schema(tags=["evaluations"])
class EvaluationViewSet(StaffViewSet):
    """SSIM, PSNR and FID of a model version on test-split cases, run in chunks."""

    serializer_class = out.EvaluationOut
    queryset = EvaluationRun.objects.select_related("model_version")

    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(
            self._data(out.EvaluationOut, page, many=True)
        )

    @extend_schema(
        request=out.EvaluationIn,
        responses={201: out.EvaluationOut},
        parameters=[IDEMPOTENCY_PARAMETER],
    )
    def create(self, request: Request) -> Response:
        return idempotent(request, lambda: self._create(request))

    def _create(self, request: Request) -> Response:
        form = bind(EvaluationForm, request.data)
        if not form.is_valid():
            raise form_invalid(form)
        try:
            evaluation = services.evaluation_create(
                user=request.user,
                model_version=form.cleaned_data["model_version"],
                cases=form.cleaned_data["cases"],
                chunk_size=form.cleaned_data["chunk_size"],
                params={"steps": form.cleaned_data["steps"]},
                with_fid=form.cleaned_data["with_fid"],
            )
        except (InvalidParameterError, ValueError) as exc:
            raise field_error(None, str(exc)) from None
        evaluation = self.get_queryset().get(pk=evaluation.pk)
        return Response(
            self._data(out.EvaluationOut, evaluation), status=status.HTTP_201_CREATED
        )

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(self._data(out.EvaluationOut, self.get_object()))

    @extend_schema(request=None, responses=out.EvaluationOut)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        """Cancel the evaluation's chunks that have not ended."""
        evaluation = self.get_object()
        self._cancel(services.evaluation_cancel, evaluation_id=evaluation.pk)
        evaluation = self.get_queryset().get(pk=evaluation.pk)
        return Response(self._data(out.EvaluationOut, evaluation))

    @extend_schema(responses=PNG_RESPONSES)
    @action(detail=True, url_path=r"histogram\.png", url_name="histogram")
    def histogram(self, request: Request, pk: str) -> FileResponse:
        """The histogram of per-case SSIM, once the evaluation succeeded."""
        evaluation = self.get_object()
        if not evaluation.histogram:
            raise Http404
        return FileResponse(evaluation.histogram.open("rb"), content_type="image/png")
