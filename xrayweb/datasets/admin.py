from __future__ import annotations

from django.contrib import admin

from xrayweb.datasets.models import (
    Dataset,
    DatasetChunk,
    DatasetExport,
    DatasetReport,
)


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "name",
        "created_by",
        "status",
        "prompts_total",
        "chunks_done",
    )
    list_filter = ("status", "source")
    raw_id_fields = ("created_by",)


@admin.register(DatasetChunk)
class DatasetChunkAdmin(admin.ModelAdmin):
    list_display = ("id", "dataset", "index", "start", "stop", "status", "attempt")
    list_filter = ("status",)
    raw_id_fields = ("dataset",)


@admin.register(DatasetExport)
class DatasetExportAdmin(admin.ModelAdmin):
    list_display = ("id", "dataset", "status", "archive", "size_bytes")
    list_filter = ("status",)
    raw_id_fields = ("dataset",)


@admin.register(DatasetReport)
class DatasetReportAdmin(admin.ModelAdmin):
    list_display = ("id", "dataset", "status", "split", "phase")
    list_filter = ("status",)
    raw_id_fields = ("dataset",)
