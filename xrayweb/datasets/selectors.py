"""Reads of datasets: only the owner's."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from xrayweb.datasets.models import Dataset


def datasets_of(user: AbstractBaseUser) -> QuerySet[Dataset]:
    return Dataset.objects.filter(created_by=user).select_related("model_version")
