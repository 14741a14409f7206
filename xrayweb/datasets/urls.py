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
]
