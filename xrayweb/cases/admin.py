"""Admin for cases, images and imports; staff start an import and watch it here."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from xrayweb.cases.forms import ImportStartForm
from xrayweb.cases.models import Case, CaseImage, ImportRun
from xrayweb.cases.selectors import import_progress, import_run_progress
from xrayweb.cases.services import (
    import_run_cancel,
    import_run_create,
    import_summary,
    import_upload_store,
)
from xrayweb.jobs import permissions


@admin.register(Case)
class CaseAdmin(admin.ModelAdmin):
    list_display = ["uid", "source", "split", "prompt_truncated", "updated_at"]
    list_filter = ["source", "split", "prompt_truncated"]
    search_fields = ["uid", "impression", "findings", "mesh_text"]


@admin.register(CaseImage)
class CaseImageAdmin(admin.ModelAdmin):
    list_display = ["image_id", "case", "view", "view_position", "width", "height"]
    list_filter = ["view"]
    search_fields = ["image_id", "case__uid"]
    raw_id_fields = ["case"]


@admin.register(ImportRun)
class ImportRunAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "status",
        "phase",
        "progress_done",
        "created_by",
        "created_at",
        "report_link",
    ]
    list_filter = ["status"]
    readonly_fields = [f.name for f in ImportRun._meta.fields]

    @admin.display(description="Report")
    def report_link(self, run: ImportRun) -> str:
        url = reverse("admin:cases_importrun_report", args=[run.pk])
        return format_html('<a href="{}">progress and report</a>', url)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # imports start from the start page, which enqueues them

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("start/", view(self.start_view), name="cases_importrun_start"),
            path(
                "<int:run_id>/report/",
                view(self.report_view),
                name="cases_importrun_report",
            ),
            path(
                "<int:run_id>/cancel/",
                view(self.cancel_view),
                name="cases_importrun_cancel",
            ),
            path(
                "<int:run_id>/progress/",
                view(self.progress_view),
                name="cases_importrun_progress",
            ),
            *super().get_urls(),
        ]

    def start_view(self, request: HttpRequest) -> HttpResponse:
        if not request.user.has_perm(permissions.RUN_IMPORT):
            raise PermissionDenied
        form = ImportStartForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            uploads = {
                option: import_upload_store(upload=request.FILES[field])
                for field, option in (
                    ("reports_upload", "reports_key"),
                    ("images_upload", "images_key"),
                )
                if field in request.FILES
            }
            run = import_run_create(
                user=request.user, options=form.options(uploads=uploads)
            )
            messages.success(request, f"Import {run.pk} is queued.")
            return redirect("admin:cases_importrun_report", run_id=run.pk)
        context = {
            **self.admin_site.each_context(request),
            "form": form,
            "opts": self.model._meta,
            "title": "Start an IU X-ray import",
        }
        return TemplateResponse(request, "admin/cases/importrun/start.html", context)

    def report_view(self, request: HttpRequest, run_id: int) -> HttpResponse:
        """The run's page; with ``?fragment=1`` only its status, which the page
        polls until the run ends."""
        run = self.viewable_run(request, run_id)
        status = {
            "run": run,
            "progress": import_progress(run),
            "summary": import_summary(run.report) if run.report else "",
        }
        if request.GET.get("fragment"):
            return TemplateResponse(
                request, "admin/cases/importrun/_status.html", status
            )
        context = {
            **self.admin_site.each_context(request),
            **status,
            "opts": self.model._meta,
            "title": f"Import {run.pk}",
            "progress_url": reverse("admin:cases_importrun_progress", args=[run.pk]),
        }
        return TemplateResponse(request, "admin/cases/importrun/report.html", context)

    def cancel_view(self, request: HttpRequest, run_id: int) -> HttpResponse:
        """POST: cancel a queued import, or stop a running one between items."""
        run = self.viewable_run(request, run_id)
        if request.method != "POST":
            return redirect("admin:cases_importrun_report", run_id=run.pk)
        error = import_run_cancel(run_id=run.pk, user=request.user)
        if error:
            messages.error(request, error)
        else:
            messages.success(request, f"Cancel of import {run.pk} requested.")
        return redirect("admin:cases_importrun_report", run_id=run.pk)

    def progress_view(self, request: HttpRequest, run_id: int) -> JsonResponse:
        return JsonResponse(import_run_progress(run=self.viewable_run(request, run_id)))

    def viewable_run(self, request: HttpRequest, run_id: int) -> ImportRun:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return get_object_or_404(ImportRun, pk=run_id)
