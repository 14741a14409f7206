"""Thin views: authenticate, validate, call one service or selector, render."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import BadRequest
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from xrayweb.cases.models import Case, CaseImage
from xrayweb.errors import cleaned_query
from xrayweb.generations import (
    availability,
    downloads,
    previews,
    selectors,
    services,
)
from xrayweb.generations.forms import CasePickForm, GenerationForm, HistoryFilterForm
from xrayweb.generations.models import ModelVersion
from xrayweb.jobs.models import Status
from xrayweb.jobs.quotas import QuotaExceeded

CASE_IMAGE_KINDS = {"derivative", "original"}
RESULT_IMAGE_KINDS = {"image", "diff_map"}


@login_required
def generate(request: HttpRequest) -> HttpResponse:
    picked = cleaned_query(CasePickForm(request.GET))
    known = availability.availability()  # read once: the form and default share it
    if request.method == "POST":
        form = GenerationForm(request.POST, known=known)
    else:
        case = (
            Case.objects.filter(pk=picked["case"]).first() if picked["case"] else None
        )
        initial = services.generation_initial(known=known, case=case)
        form = GenerationForm(initial=initial, known=known)
    if form.is_bound and form.is_valid():
        try:
            created = services.generation_request_create(
                user=request.user,
                params=form.params(),
                model_version=form.cleaned_data["model_version"],
                case=form.cleaned_data["case"],
                prompt_in_png=form.cleaned_data["prompt_in_png"],
            )
        except QuotaExceeded as exc:
            form.add_error(None, str(exc))
        else:
            return redirect("request_detail", pk=created.pk)
    return render(
        request,
        "generations/generate.html",
        {
            "form": form,
            "case": _picked_case(form),
            "query": picked["q"],
            "cases": selectors.case_search(picked["q"]),
        },
    )


def _picked_case(form: GenerationForm) -> Case | None:
    """The posted case if it is valid, else the one the query string picked."""
    if form.is_bound:
        return form.cleaned_data.get("case")
    return form.initial.get("case")


@login_required
def request_detail(request: HttpRequest, pk: int) -> HttpResponse:
    generation = get_object_or_404(selectors.requests_visible_to(request.user), pk=pk)
    progress = selectors.generation_progress(generation)
    context = {
        "generation": generation,
        "progress": progress,
        "poll_after_ms": selectors.poll_after_ms(progress.position),
        "preview": previews.preview_data_uri(generation),
    }
    return render(request, "generations/detail.html", context)


@login_required
def request_status(request: HttpRequest, pk: int) -> HttpResponse:
    """The status fragment that the detail page polls until the job ends."""
    generation = get_object_or_404(selectors.requests_visible_to(request.user), pk=pk)
    progress = selectors.generation_progress(generation)
    context = {
        "generation": generation,
        "progress": progress,
        "poll_after_ms": selectors.poll_after_ms(progress.position),
        "preview": previews.preview_data_uri(generation),
    }
    return render(request, "generations/_status.html", context)


@login_required
@require_POST
def request_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    generation = get_object_or_404(selectors.requests_visible_to(request.user), pk=pk)
    error = services.generation_request_cancel(
        request_id=generation.pk, user=request.user
    )
    if error:
        messages.error(request, error)
    else:
        messages.success(request, f"Request {generation.pk} is being cancelled.")
    return redirect("request_detail", pk=generation.pk)


@login_required
@require_POST
def request_rerun(request: HttpRequest, pk: int) -> HttpResponse:
    generation = get_object_or_404(selectors.requests_visible_to(request.user), pk=pk)
    try:
        rerun = services.generation_request_rerun(request=generation, user=request.user)
    except (QuotaExceeded, services.ModelWithdrawn) as exc:
        messages.error(request, str(exc))
        return redirect("request_detail", pk=generation.pk)
    messages.success(
        request, f"Request {rerun.pk} is queued: a new run of request {generation.pk}."
    )
    return redirect("request_detail", pk=rerun.pk)


@login_required
def history(request: HttpRequest) -> HttpResponse:
    """The user's images as a gallery of thumbnails, newest first."""
    return _history(request, "generations/history.html")


@login_required
def history_table(request: HttpRequest) -> HttpResponse:
    """The same history, filters and pages as a table of requests."""
    return _history(request, "generations/history_table.html")


def _history(request: HttpRequest, template: str) -> HttpResponse:
    filters = cleaned_query(HistoryFilterForm(request.GET))
    page = selectors.history_page(
        user=request.user,
        page_size=settings.XRAY_HISTORY_PAGE_SIZE,
        before=_history_cursor(request, "before"),
        after=_history_cursor(request, "after"),
        **filters,
    )
    return render(
        request,
        template,
        {
            "page": page,
            # As query-string text, for the form's selected options and page links.
            "filters": {k: "" if v is None else str(v) for k, v in filters.items()},
            "statuses": Status.choices,
            "models": ModelVersion.objects.all(),
        },
    )


def _history_cursor(request: HttpRequest, name: str) -> selectors.HistoryCursor | None:
    """The cursor a newer/older link carries; a bad one is a 400 naming it."""
    text = request.GET.get(name, "")
    if not text:
        return None
    try:
        return selectors.HistoryCursor.parse(text)
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}") from None


@login_required
def compare(request: HttpRequest, pk: int, index: int) -> HttpResponse:
    generation = get_object_or_404(selectors.requests_visible_to(request.user), pk=pk)
    image = get_object_or_404(
        generation.images.select_related("reference"), index=index
    )
    return render(
        request,
        "generations/compare.html",
        {"generation": generation, "image": image},
    )


@login_required
def result_image(request: HttpRequest, pk: int, kind: str) -> FileResponse:
    """A generated PNG or its difference map, for its owner and staff only; with
    ``?download=1`` as a file to save, named by request and image number."""
    image = get_object_or_404(selectors.images_visible_to(request.user), pk=pk)
    if kind not in RESULT_IMAGE_KINDS or not getattr(image, kind):
        raise Http404("no such image")
    if request.GET.get("download"):
        return png_response(
            getattr(image, kind), downloads.image_name(image, kind), attachment=True
        )
    return png_response(getattr(image, kind), f"synthetic_{image.request_id}_{pk}")


@login_required
def request_zip(request: HttpRequest, pk: int) -> HttpResponse:
    """The request's images, difference maps and parameters.json in one ZIP."""
    generation = get_object_or_404(selectors.requests_visible_to(request.user), pk=pk)
    response = HttpResponse(downloads.request_zip(generation), "application/zip")
    response["Content-Disposition"] = f'attachment; filename="request_{pk}.zip"'
    response["Cache-Control"] = "private, no-store"
    return response


@login_required
def request_delete(request: HttpRequest, pk: int) -> HttpResponse:
    """GET asks to confirm; POST deletes the user's own ended request and files."""
    generation = get_object_or_404(
        selectors.requests_of(user=request.user).filter(pk=pk)
    )
    if request.method != "POST":
        return render(request, "generations/delete.html", {"generation": generation})
    error = services.generation_request_delete(request_id=pk, user=request.user)
    if error:
        messages.error(request, error)
        return redirect("request_detail", pk=pk)
    messages.success(request, f"Request {pk} and its images are deleted.")
    return redirect("history")


@login_required
def case_image(request: HttpRequest, pk: int, kind: str) -> FileResponse:
    """A real radiograph of an imported case, for logged-in users."""
    image = get_object_or_404(CaseImage, pk=pk)
    if kind not in CASE_IMAGE_KINDS or not getattr(image, kind):
        raise Http404("no such image")
    return png_response(getattr(image, kind), f"real_{image.image_id}")


def png_response(
    field_file: object, stem: str, *, attachment: bool = False
) -> FileResponse:
    """A stored PNG streamed inline (or as a download); the caller has checked
    permission."""
    response = FileResponse(field_file.open("rb"), content_type="image/png")
    disposition = "attachment" if attachment else "inline"
    name = stem if stem.endswith(".png") else f"{stem}.png"
    response["Content-Disposition"] = f'{disposition}; filename="{name}"'
    return response
