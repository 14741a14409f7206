"""/api/v1/ routes, the OpenAPI schema and its docs (served from the project's own
static files, so they work offline)."""

from __future__ import annotations

from django.urls import include, path, re_path
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerView,
)
from rest_framework.routers import SimpleRouter

from xrayweb.api import datasets, staff, views

FILE_SUFFIXES = (r"\.png", r"\.zip")


class ApiRouter(SimpleRouter):
    """DRF's router, without the trailing slash after a file name (…/0.png)."""

    def get_urls(self) -> list:
        return [
            _file_route(url) if _is_file(str(url.pattern)) else url
            for url in super().get_urls()
        ]


def _is_file(pattern: str) -> bool:
    return any(suffix in pattern for suffix in FILE_SUFFIXES)


def _file_route(url):
    regex = str(url.pattern).removesuffix("/$") + "$"
    return re_path(regex, url.callback, name=url.name)


router = ApiRouter()
router.register("cases", views.CaseViewSet, basename="api-case")
router.register("models", views.ModelVersionViewSet, basename="api-model")
router.register("generations", views.GenerationViewSet, basename="api-generation")
router.register("datasets", datasets.DatasetViewSet, basename="api-dataset")
router.register("tokens", views.TokenViewSet, basename="api-token")
router.register("imports", staff.ImportViewSet, basename="api-import")
router.register("training-runs", staff.TrainingRunViewSet, basename="api-training-run")
router.register("evaluations", staff.EvaluationViewSet, basename="api-evaluation")

urlpatterns = [
    path("v1/", include(router.urls)),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path(
        "docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"
    ),
    path(
        "redoc/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"
    ),
]
