from django.contrib import admin

from xrayweb.jobs.models import UserQuota


@admin.register(UserQuota)
class UserQuotaAdmin(admin.ModelAdmin):
    list_display = ("user", "max_queued_jobs", "daily_pixel_steps")
    search_fields = ("user__username",)
    autocomplete_fields = ("user",)
