"""Fair share: the dispatcher's order, and queue positions that agree with it."""

from __future__ import annotations

import re
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from xrayweb.generations.models import GenerationRequest
from xrayweb.jobs import dispatch
from xrayweb.jobs.models import DispatchLock, Status


def job(user, version, *, sent_minutes_ago: float | None = None, status=Status.QUEUED):
    """A generation row; ``sent_minutes_ago`` marks it sent to the broker then."""
    sent = None
    if sent_minutes_ago is not None:
        sent = timezone.now() - timedelta(minutes=sent_minutes_ago)
    return GenerationRequest.objects.create(
        user=user,
        model_version=version,
        prompt="Clear lungs.",
        seed=1,
        steps=2,
        guidance_scale=7.5,
        scheduler="dpmpp",
        width=64,
        height=64,
        status=status,
        enqueued_at=sent,
    )


@pytest.fixture
def users(django_user_model):
    return [django_user_model.objects.create_user(n) for n in ("ann", "ben", "cat")]


@pytest.fixture
def queue(users, tiny_version):
    """ann was served a minute ago, cat an hour ago, ben never; ann has 5 waiting,
    ben 1, cat 2; one of ann's jobs is sent and not yet claimed."""
    ann, ben, cat = users
    job(ann, tiny_version, sent_minutes_ago=1, status=Status.SUCCEEDED)
    job(cat, tiny_version, sent_minutes_ago=60, status=Status.SUCCEEDED)
    sent = job(ann, tiny_version, sent_minutes_ago=0.5)
    waiting = {
        "ann": [job(ann, tiny_version) for _ in range(5)],
        "cat": [job(cat, tiny_version) for _ in range(2)],
        "ben": [job(ben, tiny_version)],
    }
    return sent, waiting


def test_the_least_recently_served_user_goes_first_round_robin(queue):
    _, waiting = queue
    ann, cat, ben = waiting["ann"], waiting["cat"], waiting["ben"]

    order = [w.pk for w in dispatch.fair_order([GenerationRequest], limit=6)]

    expected = [ben[0], cat[0], ann[0], cat[1], ann[1], ann[2]]
    assert order == [j.pk for j in expected]


def test_queue_positions_follow_the_dispatch_order(queue):
    sent, waiting = queue
    everyone = [j for jobs in waiting.values() for j in jobs]
    order = [w.pk for w in dispatch.fair_order([GenerationRequest], limit=100)]

    positions = {j.pk: dispatch.queue_position(j) for j in everyone}

    assert dispatch.queue_position(sent) == 1  # sent: ahead of every waiting job
    assert [positions[pk] for pk in order] == list(range(2, 2 + len(order)))


def test_fair_order_costs_a_fixed_number_of_queries(
    queue, django_assert_max_num_queries, django_user_model, tiny_version
):
    for n in range(30):  # more users waiting must not mean more queries
        job(django_user_model.objects.create_user(f"u{n}"), tiny_version)

    with django_assert_max_num_queries(3):
        dispatch.fair_order([GenerationRequest], limit=10)
    # Counted afresh: per kind on the gpu queue, the grouped counts and the last
    # service, and one count of the owner's own jobs ahead (none go before
    # a generation request from the dataset chunks).
    with django_assert_max_num_queries(5):
        dispatch.queue_position(queue[1]["ann"][-1])


def dataset_chunks(user, version, n: int) -> list:
    """A dataset of ``user`` with ``n`` queued chunks of one prompt each."""
    from xrayweb.datasets.models import Dataset, DatasetChunk

    dataset = Dataset.objects.create(
        name="set", created_by=user, model_version=version, seed=0, source="typed"
    )
    return [
        DatasetChunk.objects.create(dataset=dataset, index=i, start=i, stop=i + 1)
        for i in range(n)
    ]


def test_an_owners_own_requests_go_before_their_datasets_chunks(users, tiny_version):
    """ann's chunks are older than her request, yet her request goes first; ben's
    single request still gets its turn in the round robin."""
    from xrayweb.datasets.models import DatasetChunk

    ann, ben, _ = users
    chunks = dataset_chunks(ann, tiny_version, 3)
    mine = job(ann, tiny_version)
    theirs = job(ben, tiny_version)
    models = dispatch.models_on(dispatch.queue_of(DatasetChunk))
    assert set(models) == {GenerationRequest, DatasetChunk}

    order = [(w.model, w.pk) for w in dispatch.fair_order(models, limit=10)]

    assert order == [
        (GenerationRequest, mine.pk),
        (GenerationRequest, theirs.pk),
        *[(DatasetChunk, chunk.pk) for chunk in chunks],
    ]
    positions = [dispatch.queue_position(j) for j in [mine, theirs, *chunks]]
    assert positions == [1, 2, 3, 4, 5]


def test_queue_position_costs_a_fixed_number_of_queries_with_datasets_waiting(
    queue, users, tiny_version, django_assert_max_num_queries
):
    chunks = dataset_chunks(users[0], tiny_version, 2)

    # Its owner is behind a relation (+1), and the owner's generation requests go
    # before it as well as older chunks (+2).
    with django_assert_max_num_queries(7):
        position = dispatch.queue_position(chunks[-1])
    order = dispatch.fair_order(dispatch.models_on("gpu"), limit=100)
    assert position == 1 + [w.pk for w in order].index(chunks[-1].pk) + 1


def test_it_reuses_a_queues_counts_for_the_snapshot_age_then_counts_again(
    queue, settings, django_user_model, tiny_version, django_assert_max_num_queries
):
    settings.XRAY_QUEUE_SNAPSHOT_S = 60
    dispatch._snapshots.clear()
    _, waiting = queue
    last_of_ann = waiting["ann"][-1]
    first = dispatch.queue_position(last_of_ann)
    newcomer = django_user_model.objects.create_user("dan")
    job(newcomer, tiny_version)  # ahead of ann's last job once counted

    with django_assert_max_num_queries(1):  # only ann's own requests ahead counted
        assert dispatch.queue_position(last_of_ann) == first
    settings.XRAY_QUEUE_SNAPSHOT_S = 0
    assert dispatch.queue_position(last_of_ann) == first + 1


def test_a_new_owners_first_job_is_placed_by_when_they_were_last_served(
    queue, settings, django_user_model, tiny_version
):
    """An owner with nothing waiting when the snapshot was taken: their last
    service is looked up, so the position matches a fresh count."""
    settings.XRAY_QUEUE_SNAPSHOT_S = 60
    dispatch._snapshots.clear()
    _, waiting = queue
    dispatch.queue_position(waiting["ann"][0])  # the snapshot, before dan's job
    dan = django_user_model.objects.create_user("dan")
    job(dan, tiny_version, sent_minutes_ago=0.1, status=Status.SUCCEEDED)
    mine = job(dan, tiny_version)

    cached = dispatch.queue_position(mine)
    settings.XRAY_QUEUE_SNAPSHOT_S = 0
    assert cached == dispatch.queue_position(mine)
    order = [w.pk for w in dispatch.fair_order([GenerationRequest], limit=100)]
    assert cached == 1 + order.index(mine.pk) + 1


def test_the_status_fragment_asks_for_slower_polls_further_back_in_the_queue(
    client, queue, users
):
    """Ann's last job is 9th in line: her page polls every 3 s; Ben's single job
    goes first: every second."""
    _, waiting = queue
    ann, ben, _ = users

    def poll_after(user, pk: int) -> int:
        client.force_login(user)
        html = client.get(f"/requests/{pk}/status/").content.decode()
        return int(re.search(r'data-poll-after="(\d+)"', html).group(1))

    assert dispatch.queue_position(waiting["ann"][-1]) == 9
    assert poll_after(ann, waiting["ann"][-1].pk) == 3000
    assert dispatch.queue_position(waiting["ben"][0]) == 2
    assert poll_after(ben, waiting["ben"][0].pk) == 1000


def in_another_connection(action) -> None:
    """Run ``action`` in a thread of its own, so on its own database connection."""

    def run() -> None:
        try:
            action()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)


@pytest.mark.django_db(transaction=True)
def test_a_dispatch_that_finds_the_lock_held_does_not_wait_for_it(
    users, tiny_version, sent
):
    queue_name = dispatch.queue_of(GenerationRequest)
    DispatchLock.objects.create(queue=queue_name)  # as after the first dispatch
    waiting = job(users[0], tiny_version)
    holding, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with transaction.atomic():
            assert dispatch._lock(queue_name, timezone.now())
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=lambda: in_another_connection(hold_the_lock))
    holder.start()
    assert holding.wait(30)
    started = time.monotonic()
    skipped = dispatch.dispatch(queue_name)
    waited = time.monotonic() - started
    release.set()
    holder.join(30)

    assert (skipped, sent) == (0, [])
    assert waited < 2
    assert dispatch.dispatch(queue_name) == 1
    assert [args for _, args, _ in sent] == [[waiting.pk]]


@pytest.mark.django_db(transaction=True)
def test_the_lock_holder_looks_again_and_sends_a_job_submitted_meanwhile(
    users, tiny_version, sent, monkeypatch
):
    """Ben submits while Ann's job is being dispatched: his dispatch skips the held
    lock, and the holder's second look sends his job."""
    ann, ben, _ = users
    first = job(ann, tiny_version)
    real_fair_order = dispatch.fair_order
    submitted = []

    def fair_order_with_a_submit_meanwhile(models, limit):
        picked = real_fair_order(models, limit)
        if not submitted:
            in_another_connection(lambda: submitted.append(job(ben, tiny_version)))
        return picked

    monkeypatch.setattr(dispatch, "fair_order", fair_order_with_a_submit_meanwhile)

    assert dispatch.dispatch(dispatch.queue_of(GenerationRequest)) == 2
    assert [args for _, args, _ in sent] == [[first.pk], [submitted[0].pk]]
