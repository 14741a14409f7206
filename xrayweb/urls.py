from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from xrayweb.api import pages as api_pages
from xrayweb.health import healthz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "password/",
        auth_views.PasswordChangeView.as_view(
            template_name="registration/password_change.html"
        ),
        name="password_change",
    ),
    path(
        "password/done/",
        auth_views.PasswordChangeDoneView.as_view(
            template_name="registration/password_changed.html"
        ),
        name="password_change_done",
    ),
    path("", include("xrayweb.generations.urls")),
    path("cases/", include("xrayweb.cases.urls")),
    path("training/", include("xrayweb.training.urls")),
    path("datasets/", include("xrayweb.datasets.urls")),
    path("api/", include("xrayweb.api.urls")),
    path("tokens/", api_pages.tokens, name="api_tokens"),
]

# Standalone pages: they render without the database (see xrayweb/errors.py).
handler400 = "xrayweb.errors.bad_request"
handler404 = "xrayweb.errors.not_found"
handler500 = "xrayweb.errors.server_error"
