"""Staff pages: start and follow training runs; evaluate and compare model versions."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from generator.errors import InvalidParameterError
from xrayweb.training import plots, selectors, services
from xrayweb.training.forms import EvaluationForm, TrainingRunForm


def staff_required(view: Callable) -> Callable:
    """Logged in (else the login page) and staff (else 403)."""

    @login_required
    @wraps(view)
    def wrapped(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if not request.user.is_staff:
            raise PermissionDenied(services.STAFF_ONLY)
        return view(request, *args, **kwargs)

    return wrapped


@staff_required
def training_home(request: HttpRequest) -> HttpResponse:
    form = TrainingRunForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            run = services.training_run_create(
                user=request.user,
                name=form.cleaned_data["name"],
                base=form.cleaned_data["base"],
                config=form.config(),
                include_laterals=form.cleaned_data["include_laterals"],
            )
        except (InvalidParameterError, ValueError) as exc:
            form.add_error(None, str(exc))
        else:
            return redirect("training_run_detail", pk=run.pk)
    runs = selectors.training_runs()[:50]
    return render(request, "training/home.html", {"form": form, "runs": runs})


@staff_required
def training_run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(selectors.training_runs(), pk=pk)
    grids = selectors.sample_grids(run)
    progress = selectors.training_progress(run)
    return render(
        request,
        "training/detail.html",
        {"run": run, "grids": grids, "progress": progress},
    )


@staff_required
def training_run_status(request: HttpRequest, pk: int) -> HttpResponse:
    """The status fragment the run's page polls until the run ends."""
    run = get_object_or_404(selectors.training_runs(), pk=pk)
    progress = selectors.training_progress(run)
    return render(request, "training/_status.html", {"run": run, "progress": progress})


@staff_required
def evaluations_pending(request: HttpRequest) -> HttpResponse:
    """The running evaluations fragment the evaluations page polls."""
    return render(
        request,
        "training/_evaluations_pending.html",
        {"pending": _with_progress(selectors.evaluations_pending())},
    )


def _with_progress(evaluations: object) -> list[tuple]:
    return [(e, selectors.evaluation_progress(e)) for e in evaluations]


@staff_required
def training_run_sample(request: HttpRequest, pk: int, name: str) -> HttpResponse:
    """One epoch's sample grid; only names the run's own folder lists are served."""
    run = get_object_or_404(selectors.training_runs(), pk=pk)
    if name not in selectors.sample_grids(run):
        raise Http404("No such sample grid.")
    stored = default_storage.open(f"{run.files_key}samples/{name}", "rb")
    return FileResponse(stored, content_type="image/png")


@staff_required
def training_run_loss_plot(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(selectors.training_runs(), pk=pk)
    png = plots.loss_curve_png(run.loss_history, run.validation_history)
    return HttpResponse(png, content_type="image/png")


@staff_required
@require_POST
def training_run_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(selectors.training_runs(), pk=pk)
    error = services.training_run_cancel(run_id=run.pk, user=request.user)
    if error:
        messages.error(request, error)
    return redirect("training_run_detail", pk=run.pk)


@staff_required
@require_POST
def evaluation_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    error = services.evaluation_cancel(evaluation_id=pk, user=request.user)
    if error:
        messages.error(request, error)
    else:
        messages.success(request, f"Evaluation {pk} is being cancelled.")
    return redirect("evaluations_compare")


@staff_required
def evaluations_compare(request: HttpRequest) -> HttpResponse:
    """Model versions side by side: the newest finished evaluation of each."""
    form = EvaluationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            services.evaluation_create(
                user=request.user,
                model_version=form.cleaned_data["model_version"],
                cases=form.cleaned_data["cases"],
                chunk_size=form.cleaned_data["chunk_size"],
                params={"steps": form.cleaned_data["steps"]},
                with_fid=form.cleaned_data["with_fid"],
            )
        except (InvalidParameterError, ValueError) as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, "The evaluation is queued.")
            return redirect("evaluations_compare")
    evaluations = selectors.latest_evaluations()
    findings = sorted(
        {f for e in evaluations for f in e.results.get("ssim_by_finding", {})}
    )
    return render(
        request,
        "training/evaluations.html",
        {
            "form": form,
            "evaluations": evaluations,
            "rows": _finding_rows(evaluations, findings),
            "pending": _with_progress(selectors.evaluations_pending()),
        },
    )


def _finding_rows(evaluations: list, findings: list[str]) -> list[tuple]:
    return [
        (f, [e.results["ssim_by_finding"].get(f) for e in evaluations])
        for f in findings
    ]


@staff_required
def evaluation_histogram(request: HttpRequest, pk: int) -> HttpResponse:
    evaluation = get_object_or_404(selectors.evaluations_finished(), pk=pk)
    if not evaluation.histogram:
        raise Http404("This evaluation has no histogram.")
    return FileResponse(evaluation.histogram.open("rb"), content_type="image/png")
