"""Dataset pages: list and create one's own datasets, follow, cancel, export, and
their quality and privacy reports (with the flagged pairs' images)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from xrayweb.datasets import selectors, services
from xrayweb.datasets.forms import DatasetForm, ExportForm, ReportForm
from xrayweb.datasets.models import DatasetExport, DatasetImage
from xrayweb.jobs.models import Status


@login_required
def datasets_home(request: HttpRequest) -> HttpResponse:
    """The user's datasets and the create form; "Preview" shows the number of
    images and the cost without creating anything."""
    form = DatasetForm(request.POST or None, request.FILES or None)
    preview = None
    if request.method == "POST" and form.is_valid():
        try:
            prompts, described = form.prompts(settings.XRAY_DATASET_MAX_PROMPTS)
            fields = {
                "prompts": prompts,
                "images_per_prompt": form.cleaned_data["images_per_prompt"],
                "params": form.params(),
            }
            if request.POST.get("action") == "preview":
                preview = services.dataset_preview(**fields)
            else:
                dataset = services.dataset_create(
                    user=request.user,
                    name=form.cleaned_data["name"],
                    model_version=form.cleaned_data["model_version"],
                    seed=form.cleaned_data["seed"],
                    source=form.cleaned_data["source"],
                    source_description=described,
                    **fields,
                )
                return redirect("dataset_detail", pk=dataset.pk)
        except ValueError as exc:  # QuotaExceeded and InvalidParameterError too
            form.add_error(None, str(exc))
    datasets = selectors.datasets_of(request.user)[:50]
    context = {"form": form, "preview": preview, "datasets": datasets}
    return render(request, "datasets/home.html", context)


@login_required
def dataset_detail(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = get_object_or_404(selectors.datasets_of(request.user), pk=pk)
    context = {
        "dataset": dataset,
        "progress": services.dataset_progress(dataset),
        "exports": dataset.exports.all()[:10],
        "exportable": dataset.status == Status.SUCCEEDED,
        "export_form": ExportForm(),
        "reports": dataset.reports.all()[:5],
        "report": dataset.reports.filter(status=Status.SUCCEEDED).first(),
        "report_form": ReportForm(),
    }
    return render(request, "datasets/detail.html", context)


@login_required
@require_POST
def dataset_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = get_object_or_404(selectors.datasets_of(request.user), pk=pk)
    error = services.dataset_cancel(dataset_id=dataset.pk, user=request.user)
    if error:
        messages.error(request, error)
    else:
        messages.success(request, "Cancel requested.")
    return redirect("dataset_detail", pk=pk)


@login_required
@require_POST
def dataset_export(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = get_object_or_404(selectors.datasets_of(request.user), pk=pk)
    form = ExportForm(request.POST)
    form.is_valid()  # a lone checkbox: unticked or missing is False
    try:
        services.dataset_export_create(
            dataset=dataset, user=request.user, dicom=form.cleaned_data["dicom"]
        )
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Export queued; the download appears here.")
    return redirect("dataset_detail", pk=pk)


@login_required
def dataset_download(request: HttpRequest, pk: int, export_id: int) -> HttpResponse:
    dataset = get_object_or_404(selectors.datasets_of(request.user), pk=pk)
    export = get_object_or_404(
        dataset.exports.exclude(archive=""), pk=export_id, status=Status.SUCCEEDED
    )
    return archive_response(export)


def archive_response(export: DatasetExport) -> FileResponse:
    """An export's ZIP as a download (the page's and the API's); the caller has
    checked that it is the user's."""
    return FileResponse(
        default_storage.open(export.archive, "rb"),
        as_attachment=True,
        filename=export.archive.rsplit("/", 1)[-1],
        content_type="application/zip",
    )


@login_required
@require_POST
def dataset_report(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = get_object_or_404(selectors.datasets_of(request.user), pk=pk)
    data = request.POST.copy()
    data.setdefault("split", ReportForm.base_fields["split"].initial)  # not asked
    form = ReportForm(data)
    if not form.is_valid():
        messages.error(request, " ".join(form.errors.get("split", [])))
        return redirect("dataset_detail", pk=pk)
    split = form.cleaned_data["split"]
    try:
        services.dataset_report_create(dataset=dataset, user=request.user, split=split)
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Report queued; it appears here when done.")
    return redirect("dataset_detail", pk=pk)


@login_required
def dataset_report_pair(
    request: HttpRequest, pk: int, report_id: int, index: int, side: str
) -> FileResponse:
    """One image of a flagged pair: the generated one or its training image."""
    dataset = get_object_or_404(selectors.datasets_of(request.user), pk=pk)
    report = get_object_or_404(dataset.reports, pk=report_id, status=Status.SUCCEEDED)
    flagged = report.flagged
    if not 0 <= index < len(flagged):
        raise Http404
    if side == "training":
        key = flagged[index].get("training_key")
    elif side == "generated":
        image = DatasetImage.objects.filter(
            pk=flagged[index]["image_id"], prompt__dataset=dataset
        ).first()
        key = image.image if image is not None else None
    else:
        raise Http404
    if not key:
        raise Http404
    return FileResponse(default_storage.open(key, "rb"), content_type="image/png")


@login_required
def dataset_report_csv(request: HttpRequest, pk: int, report_id: int) -> FileResponse:
    """Every generated image's nearest training image, cosine and SSIM."""
    dataset = get_object_or_404(selectors.datasets_of(request.user), pk=pk)
    report = get_object_or_404(
        dataset.reports.exclude(nearest_csv=""), pk=report_id, status=Status.SUCCEEDED
    )
    return FileResponse(
        default_storage.open(report.nearest_csv, "rb"),
        as_attachment=True,
        filename=f"dataset-{dataset.pk}-report-{report.pk}-nearest.csv",
        content_type="text/csv",
    )
