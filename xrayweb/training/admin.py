from __future__ import annotations

from django.contrib import admin

from xrayweb.training.models import EvaluationChunk, EvaluationRun, TrainingRun


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "base", "status", "progress_step", "loss")
    list_filter = ("status",)
    readonly_fields = ("loss_history", "validation_history", "model_version")


@admin.register(EvaluationRun)
class EvaluationRunAdmin(admin.ModelAdmin):
    list_display = ("id", "model_version", "status", "chunks_done", "chunks_total")
    list_filter = ("status",)


@admin.register(EvaluationChunk)
class EvaluationChunkAdmin(admin.ModelAdmin):
    list_display = ("id", "evaluation", "index", "status")
