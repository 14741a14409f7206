from __future__ import annotations

from django.urls import path

from xrayweb.generations import views

urlpatterns = [
    path("", views.generate, name="generate"),
    path("history/", views.history, name="history"),
    path("history/table/", views.history_table, name="history_table"),
    path("requests/<int:pk>/", views.request_detail, name="request_detail"),
    path("requests/<int:pk>/status/", views.request_status, name="request_status"),
    path("requests/<int:pk>/cancel/", views.request_cancel, name="request_cancel"),
    path("requests/<int:pk>/rerun/", views.request_rerun, name="request_rerun"),
    path("requests/<int:pk>/delete/", views.request_delete, name="request_delete"),
    path("requests/<int:pk>/images.zip", views.request_zip, name="request_zip"),
    path(
        "requests/<int:pk>/compare/<int:index>/", views.compare, name="request_compare"
    ),
    path(
        "media/results/<int:pk>/<str:kind>.png",
        views.result_image,
        name="result_image",
    ),
    path("media/cases/<int:pk>/<str:kind>.png", views.case_image, name="case_image"),
]
