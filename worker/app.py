"""The Celery app. Settings come from Django's settings under the CELERY_ prefix.

celery -A worker.app worker -Q gpu,cpu --pool solo -B
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xrayweb.settings")

app = Celery("xrayweb", include=["worker.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")
