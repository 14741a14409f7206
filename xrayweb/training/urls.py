from __future__ import annotations

from django.urls import path

from xrayweb.training import views

urlpatterns = [
    path("", views.training_home, name="training_home"),
    path("runs/<int:pk>/", views.training_run_detail, name="training_run_detail"),
    path(
        "runs/<int:pk>/status/", views.training_run_status, name="training_run_status"
    ),
    path(
        "runs/<int:pk>/loss.png",
        views.training_run_loss_plot,
        name="training_run_loss_plot",
    ),
    path(
        "runs/<int:pk>/samples/<str:name>",
        views.training_run_sample,
        name="training_run_sample",
    ),
    path(
        "runs/<int:pk>/cancel/", views.training_run_cancel, name="training_run_cancel"
    ),
    path("evaluations/", views.evaluations_compare, name="evaluations_compare"),
    path(
        "evaluations/running/",
        views.evaluations_pending,
        name="evaluations_pending",
    ),
    path(
        "evaluations/<int:pk>/cancel/",
        views.evaluation_cancel,
        name="evaluation_cancel",
    ),
    path(
        "evaluations/<int:pk>/ssim.png",
        views.evaluation_histogram,
        name="evaluation_histogram",
    ),
]
