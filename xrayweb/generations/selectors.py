"""Reads for the generation pages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet

from xrayweb.cases.models import Case
from xrayweb.generations.forms import BIGINT_MAX
from xrayweb.generations.models import GenerationImage, GenerationRequest
from xrayweb.jobs import dispatch
from xrayweb.jobs.progress import Progress, job_progress

CASE_RESULTS = 20
# History shows "more than 1,000 requests" past this: counting every row of a long
# history costs more than the page itself.
HISTORY_COUNT_CAP = 1000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CURSOR_TEXT = re.compile(r"([0-9]{1,17})-([0-9]{1,19})")
BAD_CURSOR = (
    "must be a history position from a newer/older link (digits-digits), got {value!r}"
)


def requests_visible_to(user: AbstractBaseUser) -> QuerySet[GenerationRequest]:
    """Owners see their own requests; staff see everyone's."""
    requests = GenerationRequest.objects.select_related("model_version", "case")
    return requests if user.is_staff else requests.filter(user=user)


def requests_of(
    *,
    user: AbstractBaseUser,
    status: str = "",
    model_version: int | None = None,
    case: int | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> QuerySet[GenerationRequest]:
    """The user's own requests (staff included), filtered, with their images."""
    requests = GenerationRequest.objects.filter(user=user)
    if status:
        requests = requests.filter(status=status)
    if model_version is not None:
        requests = requests.filter(model_version_id=model_version)
    if case is not None:
        requests = requests.filter(case_id=case)
    if created_after is not None:
        requests = requests.filter(created_at__gte=created_after)
    if created_before is not None:
        requests = requests.filter(created_at__lt=created_before)
    return requests.select_related("model_version", "case").prefetch_related("images")


def queue_position(request: GenerationRequest) -> int | None:
    """Where a queued request stands in the fair-share order (1: next)."""
    return dispatch.queue_position(request)


POLL_MS, POLL_QUEUED_MS = 1000, 3000


def poll_after_ms(position: int | None) -> int:
    """How long the status page waits before its next poll: a second while the
    job runs or is among the next two to start; three seconds further back,
    where the wait is longer than that and fifty pages polling each second would
    cost the web more than the position gains from it."""
    if position is None or position <= 2:
        return POLL_MS
    return POLL_QUEUED_MS


def generation_progress(request: GenerationRequest) -> Progress:
    """Denoising steps done, ETA, queue place or duration, for the status box."""
    return job_progress(
        request,
        done=request.progress_step,
        total=request.progress_total,
        unit="denoising steps",
        eta=request.eta_s,
    )


def images_visible_to(user: AbstractBaseUser) -> QuerySet[GenerationImage]:
    images = GenerationImage.objects.select_related("request")
    return images if user.is_staff else images.filter(request__user=user)


@dataclass(frozen=True)
class HistoryCursor:
    """A place in the history order (newest first): one row's created_at and id.

    As text, microseconds since the epoch and the id, both in ASCII digits, so a link
    carries it without escaping: ``1764770000123456-42``.
    """

    created_at: datetime
    pk: int

    @classmethod
    def of(cls, request: GenerationRequest) -> HistoryCursor:
        return cls(request.created_at, request.pk)

    @classmethod
    def parse(cls, text: str) -> HistoryCursor:
        """The cursor ``text`` names; ValueError naming the value otherwise."""
        found = CURSOR_TEXT.fullmatch(text)
        if not found or not 1 <= int(found.group(2)) <= BIGINT_MAX:
            raise ValueError(BAD_CURSOR.format(value=text[:100]))
        micros = timedelta(microseconds=int(found.group(1)))
        return cls(EPOCH + micros, int(found.group(2)))

    def __str__(self) -> str:
        return f"{(self.created_at - EPOCH) // timedelta(microseconds=1)}-{self.pk}"


@dataclass(frozen=True)
class HistoryPage:
    """One page of a user's history and the cursors of its neighbours (None at an
    end); iterating it gives the page's requests."""

    requests: list[GenerationRequest]
    newer: HistoryCursor | None
    older: HistoryCursor | None
    total: int
    total_capped: bool

    def __iter__(self) -> Iterator[GenerationRequest]:
        return iter(self.requests)

    def __len__(self) -> int:
        return len(self.requests)


def history_page(
    *,
    user: AbstractBaseUser,
    page_size: int,
    before: HistoryCursor | None = None,
    after: HistoryCursor | None = None,
    status: str = "",
    model_version: int | None = None,
    case: str = "",
    prompt: str = "",
) -> HistoryPage:
    """The user's own requests, newest first, filtered (``prompt``: text the prompt
    contains, any case): the page just older than
    ``before``, just newer than ``after``, else the newest page.

    Keyset pages: each costs one index range scan however deep it is, where an
    OFFSET page would read every row before it. Past the newest rows, ``after``
    gives the newest page.
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
    if prompt.strip():
        requests = requests.filter(prompt__icontains=prompt.strip())
    total = requests.order_by()[: HISTORY_COUNT_CAP + 1].count()
    requests = requests.prefetch_related("images")
    if after is not None:
        newer = list(_newer_than(requests, after)[: page_size + 1])
        if len(newer) > page_size:
            rows = newer[:page_size][::-1]
            return _page(rows, has_newer=True, has_older=True, total=total)
        before = None  # fewer than a page is newer: show the newest page
    if before is not None:
        requests = _older_than(requests, before)
    rows = list(requests.order_by("-created_at", "-id")[: page_size + 1])
    return _page(
        rows[:page_size],
        has_newer=before is not None,
        has_older=len(rows) > page_size,
        total=total,
    )


def _older_than(requests: QuerySet, cursor: HistoryCursor) -> QuerySet:
    # The plain bound on created_at lets the (user, created_at) index start the scan
    # at the cursor; the OR only breaks ties between rows created the same instant.
    return requests.filter(created_at__lte=cursor.created_at).filter(
        Q(created_at__lt=cursor.created_at) | Q(pk__lt=cursor.pk)
    )


def _newer_than(requests: QuerySet, cursor: HistoryCursor) -> QuerySet:
    return (
        requests.filter(created_at__gte=cursor.created_at)
        .filter(Q(created_at__gt=cursor.created_at) | Q(pk__gt=cursor.pk))
        .order_by("created_at", "id")
    )


def _page(
    rows: list[GenerationRequest], *, has_newer: bool, has_older: bool, total: int
) -> HistoryPage:
    return HistoryPage(
        requests=rows,
        newer=HistoryCursor.of(rows[0]) if rows and has_newer else None,
        older=HistoryCursor.of(rows[-1]) if rows and has_older else None,
        total=min(total, HISTORY_COUNT_CAP),
        total_capped=total > HISTORY_COUNT_CAP,
    )


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
