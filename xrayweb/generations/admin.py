from __future__ import annotations

from django.contrib import admin

from xrayweb.generations.models import GenerationImage, GenerationRequest, ModelVersion


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "source", "revision", "lora_sha256", "is_active")
    list_filter = ("kind", "is_active")


class GenerationImageInline(admin.TabularInline):
    model = GenerationImage
    extra = 0
    readonly_fields = ("index", "seed", "image", "diff_map", "ssim", "psnr")


@admin.register(GenerationRequest)
class GenerationRequestAdmin(admin.ModelAdmin):
    list_display = ("pk", "user", "status", "model_version", "case", "created_at")
    list_filter = ("status", "model_version")
    search_fields = ("prompt", "user__username", "case__uid")
    inlines = [GenerationImageInline]
