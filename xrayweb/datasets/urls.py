from __future__ import annotations

from django.urls import path

from xrayweb.datasets import views

urlpatterns = [
    path("", views.datasets_home, name="datasets_home"),
    path("<int:pk>/", views.dataset_detail, name="dataset_detail"),
    path("<int:pk>/cancel/", views.dataset_cancel, name="dataset_cancel"),
    path("<int:pk>/export/", views.dataset_export, name="dataset_export"),
    path(
        "<int:pk>/exports/<int:export_id>/download/",
        views.dataset_download,
        name="dataset_download",
    ),
    path("<int:pk>/report/", views.dataset_report, name="dataset_report"),
    path(
        "<int:pk>/reports/<int:report_id>/pairs/<int:index>/<str:side>.png",
        views.dataset_report_pair,
        name="dataset_report_pair",
    ),
    path(
        "<int:pk>/reports/<int:report_id>/nearest.csv",
        views.dataset_report_csv,
        name="dataset_report_csv",
    ),
]
