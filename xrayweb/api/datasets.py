"""The API for synthetic datasets: create, list, follow, cancel, export, download,
and their quality and privacy report.

A create validates with the dataset page's own form (a file's content comes as a
string, the API taking JSON only) and calls the same services; another user's
datasets are not in any queryset here, so they answer 404 for every method.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.core.files.base import ContentFile
from django.http import FileResponse, Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from xrayweb.api import serializers as out
from xrayweb.api.common import IDEMPOTENCY_PARAMETER, NewestFirst, idempotent
from xrayweb.api.errors import QuotaRefused, field_error, form_invalid
from xrayweb.api.forms import bind
from xrayweb.api.views import ID, ApiViewSet
from xrayweb.datasets import selectors, services
from xrayweb.datasets.forms import DatasetForm, ExportForm, ReportForm
from xrayweb.datasets.models import Dataset, PromptSource
from xrayweb.datasets.views import archive_response
from xrayweb.generations import availability
from xrayweb.generations import services as generation_services
from xrayweb.jobs.models import Status
from xrayweb.jobs.quotas import QuotaExceeded

ZIP_RESPONSES = {
    (200, "application/zip"): OpenApiResponse(
        OpenApiTypes.BINARY,
        description="The ZIP: images, metadata.csv, DATASHEET.md, and dicom if asked",
    )
}
UPLOAD_NAMES = {PromptSource.CSV: "upload.csv", PromptSource.TEXT: "upload.txt"}


class DatasetApiForm(DatasetForm):
    """The dataset form with the uploaded file's content as text: the page's own
    fields, checks and messages otherwise."""

    upload = forms.CharField(required=False, strip=False)
    upload_name = forms.CharField(required=False, max_length=255)

    def clean(self) -> dict:
        data = super().clean()
        text = data.get("upload") or ""
        name = data.get("upload_name") or UPLOAD_NAMES.get(data.get("source"), "")
        # surrogatepass: a lone surrogate becomes bytes that the reader refuses
        # as not UTF-8, naming the file, rather than an error here.
        content = text.encode("utf-8", "surrogatepass")
        data["upload"] = ContentFile(content, name=name) if text else None
        return data


@extend_schema(tags=["datasets"])
class DatasetViewSet(ApiViewSet):
    """Your synthetic datasets: make one from cases, typed prompts, a CSV or a text,
    follow it, cancel it, export it as a ZIP and download that."""

    lookup_value_regex = ID

    serializer_class = out.DatasetOut
    pagination_class = NewestFirst
    queryset = Dataset.objects.none()  # the schema's id type; see below

    def get_queryset(self):
        return selectors.datasets_of(self.request.user)

    @extend_schema(responses=out.DatasetListOut(many=True))
    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(
            self._data(out.DatasetListOut, page, many=True)
        )

    @extend_schema(
        request=out.DatasetIn,
        responses={201: out.DatasetOut},
        parameters=[IDEMPOTENCY_PARAMETER],
    )
    def create(self, request: Request) -> Response:
        return idempotent(request, lambda: self._create(request))

    def _create(self, request: Request) -> Response:
        form = bind(DatasetApiForm, request.data, defaults=_initial(request.data))
        if not form.is_valid():
            raise form_invalid(form)
        try:
            prompts, described = form.prompts(settings.XRAY_DATASET_MAX_PROMPTS)
            dataset = services.dataset_create(
                user=request.user,
                name=form.cleaned_data["name"],
                model_version=form.cleaned_data["model_version"],
                params=form.params(),
                seed=form.cleaned_data["seed"],
                images_per_prompt=form.cleaned_data["images_per_prompt"],
                prompts=prompts,
                source=form.cleaned_data["source"],
                source_description=described,
            )
        except QuotaExceeded as exc:
            raise QuotaRefused(str(exc)) from None
        except ValueError as exc:  # InvalidParameterError too
            raise field_error(None, str(exc)) from None
        return Response(self._detail(dataset.pk), status=status.HTTP_201_CREATED)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(self._detail(self.get_object().pk))

    def _detail(self, pk: int) -> dict:
        dataset = self.get_queryset().get(pk=pk)
        dataset.progress = services.dataset_progress(dataset)
        dataset.latest_export = dataset.exports.first()
        return self._data(out.DatasetOut, dataset)

    @extend_schema(request=None, responses=out.DatasetOut)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        """Cancel the queued chunks; a running chunk stops at its next step."""
        dataset = self.get_object()
        error = services.dataset_cancel(dataset_id=dataset.pk, user=request.user)
        if error:
            raise field_error(None, error)
        return Response(self._detail(dataset.pk))

    @extend_schema(
        request=out.DatasetExportIn,
        responses={201: out.DatasetExportOut},
        parameters=[IDEMPOTENCY_PARAMETER],
    )
    @action(detail=True, methods=["post"])
    def export(self, request: Request, pk: str) -> Response:
        """Queue a ZIP export of a succeeded dataset, with ``{"dicom": true}`` one
        DICOM Secondary Capture per image too; export.zip serves it once done."""
        dataset = self.get_object()
        return idempotent(request, lambda: self._export(request, dataset))

    def _export(self, request: Request, dataset: Dataset) -> Response:
        form = bind(ExportForm, request.data)
        if not form.is_valid():
            raise form_invalid(form)
        try:
            export = services.dataset_export_create(
                dataset=dataset, user=request.user, dicom=form.cleaned_data["dicom"]
            )
        except ValueError as exc:
            raise field_error(None, str(exc)) from None
        body = self._data(out.DatasetExportOut, export)
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(responses=ZIP_RESPONSES)
    @action(detail=True, url_path=r"export\.zip", url_name="export-zip")
    def export_zip(self, request: Request, pk: str) -> FileResponse:
        """The newest succeeded export's ZIP; 404 until one is done."""
        done = self.get_object().exports.filter(status=Status.SUCCEEDED)
        export = done.exclude(archive="").first()
        if export is None:
            raise Http404
        return archive_response(export)

    @extend_schema(
        methods=["GET"],
        request=None,
        responses=out.DatasetReportOut,
        description="The newest quality and privacy report; 404 before the first.",
    )
    @extend_schema(
        methods=["POST"],
        request=out.DatasetReportIn,
        responses={201: out.DatasetReportOut},
        parameters=[IDEMPOTENCY_PARAMETER],
        description="Queue a quality and privacy report of a succeeded dataset: FID "
        "against a split's real frontal images, MS-SSIM within prompts, and the "
        "memorization check against the model's training images.",
    )
    @action(detail=True, methods=["get", "post"])
    def report(self, request: Request, pk: str) -> Response:
        dataset = self.get_object()
        if request.method == "POST":
            return idempotent(request, lambda: self._report(request, dataset))
        report = dataset.reports.first()
        if report is None:
            raise Http404
        return Response(self._data(out.DatasetReportOut, report))

    def _report(self, request: Request, dataset: Dataset) -> Response:
        form = bind(ReportForm, request.data)
        if not form.is_valid():
            raise form_invalid(form)
        try:
            report = services.dataset_report_create(
                dataset=dataset, user=request.user, split=form.cleaned_data["split"]
            )
        except ValueError as exc:
            raise field_error(None, str(exc)) from None
        body = self._data(out.DatasetReportOut, report)
        return Response(body, status=status.HTTP_201_CREATED)


def _initial(data: object) -> dict:
    """The parameters' starting values, as for a generation: the recommended ones
    of the model asked for, else of the default model."""
    version_id = data.get("model_version") if isinstance(data, dict) else None
    return generation_services.generation_initial(
        known=availability.availability(), version_id=version_id
    )
