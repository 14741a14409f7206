"""Reads for the generation pages."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.paginator import Page, Paginator
from django.db.models import Q, QuerySet

from xrayweb.cases.models import Case
from xrayweb.generations.models import GenerationImage, GenerationRequest
from xrayweb.jobs import dispatch

CASE_RESULTS = 20


def requests_visible_to(user: AbstractBaseUser) -> QuerySet[GenerationRequest]:
    """Owners see their own requests; staff see everyone's."""
    requests = GenerationRequest.objects.select_related("model_version", "case")
    return requests if user.is_staff else requests.filter(user=user)


def queue_position(request: GenerationRequest) -> int | None:
    """Where a queued request stands in the fair-share order (1: next)."""
    return dispatch.queue_position(request)


def images_visible_to(user: AbstractBaseUser) -> QuerySet[GenerationImage]:
    images = GenerationImage.objects.select_related("request")
    return images if user.is_staff else images.filter(request__user=user)


def history_page(
    *,
    user: AbstractBaseUser,
    page: str | int | None,
    page_size: int,
    status: str = "",
    model_version: int | None = None,
    case: str = "",
) -> Page:
    """The user's own requests, newest first, filtered, one page of them.

    A page that is not a number shows the first page, one past the end the last.
    """
    requests = GenerationRequest.objects.filter(user=user).select_related(
        "model_version", "case"
    )
    if status:
        requests = requests.filter(status=status)
    if model_version is not None:
        requests = requests.filter(model_version_id=model_version)
    if case:
        requests = requests.filter(case__uid__iexact=case)
    requests = requests.prefetch_related("images").order_by("-created_at", "-id")
    return Paginator(requests, page_size).get_page(page)


def case_search(query: str, limit: int = CASE_RESULTS) -> QuerySet[Case]:
    """Cases whose uid, report text or MeSH terms contain ``query``."""
    query = query.strip()
    if not query:
        return Case.objects.none()
    return (
        Case.objects.filter(
            Q(uid__iexact=query)
            | Q(impression__icontains=query)
            | Q(findings__icontains=query)
            | Q(mesh_text__icontains=query)
        )
        .prefetch_related("images")
        .order_by("uid")[:limit]
    )
