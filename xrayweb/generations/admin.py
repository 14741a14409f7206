from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from xrayweb.generations import model_files, services
from xrayweb.generations.models import GenerationImage, GenerationRequest, ModelVersion
from xrayweb.jobs import permissions

WAITS_FOR_ACTIVATION = (
    "This model version is withdrawn until someone in the 'operators' group "
    "activates it."
)


class ModelVersionForm(forms.ModelForm):
    class Meta:
        model = ModelVersion
        fields = (
            "name",
            "kind",
            "source",
            "revision",
            "config",
            "metrics",
            "is_active",
        )

    def clean_source(self) -> str:
        source = self.cleaned_data["source"]
        if self.instance.files_key:
            return source  # a trained folder: workers load it from storage, checked
        try:
            model_files.model_source_check(source)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None
        return source


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    form = ModelVersionForm
    list_display = ("name", "kind", "source", "revision", "lora_sha256", "is_active")
    list_filter = ("kind", "is_active")
    actions = ["activate", "withdraw"]
    # Stored files are written by training only; their hashes are what workers check.
    readonly_fields = ("lora_key", "lora_sha256", "files_key", "files_sha256")

    def get_readonly_fields(self, request: HttpRequest, obj=None) -> tuple[str, ...]:
        fields = super().get_readonly_fields(request, obj)
        if not self.has_activate_permission(request):
            return (*fields, "is_active")
        return fields

    def save_model(
        self,
        request: HttpRequest,
        obj: ModelVersion,
        form: forms.ModelForm,
        change: bool,
    ) -> None:
        active = services.model_version_save(
            version=obj, user=request.user, adding=not change, changed=form.changed_data
        )
        if not active and not self.has_activate_permission(request):
            self.message_user(request, WAITS_FOR_ACTIVATION, messages.WARNING)

    def has_activate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(permissions.ACTIVATE_MODEL)

    @admin.action(permissions=["activate"], description="Activate: offer to users")
    def activate(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_active(request, queryset, True)

    @admin.action(permissions=["activate"], description="Withdraw: stop offering")
    def withdraw(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_active(request, queryset, False)

    def _set_active(self, request: HttpRequest, queryset: QuerySet, on: bool) -> None:
        count = services.model_version_set_active(
            versions=queryset, user=request.user, active=on
        )
        state = "active" if on else "withdrawn"
        self.message_user(request, f"{count} model versions {state}.", messages.SUCCESS)


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
