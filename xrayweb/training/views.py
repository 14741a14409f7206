"""Staff pages: start a training run, follow it, compare evaluated model versions."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from generator.errors import InvalidParameterError
from xrayweb.training import plots, selectors, services
from xrayweb.training.forms import TrainingRunForm


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
    return render(request, "training/detail.html", {"run": run})


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
