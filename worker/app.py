"""The Celery app. Settings come from Django's settings under the CELERY_ prefix.

One worker per queue, each a prefork pool of one child (which enforces time limits):

    celery -A worker.app worker -Q gpu -c 1
    celery -A worker.app worker -Q train -c 1
    celery -A worker.app worker -Q cpu -c 1
    celery -A worker.app worker -Q control -c 1
    celery -A worker.app beat
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xrayweb.settings")

app = Celery("xrayweb", include=["worker.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")
