"""What job pages say about progress: ETA from the pace so far, durations in words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from xrayweb.jobs.progress import eta_s
from xrayweb.jobs.templatetags.jobs import duration

START = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def test_it_estimates_the_time_left_from_the_pace_so_far():
    now = START + timedelta(seconds=40)
    assert eta_s(START, 4, 10, now) == 60.0  # 10 s a unit, 6 units left
    assert eta_s(START, 10, 10, now) == 0.0
    assert eta_s(START, 0, 10, now) is None  # no pace before the first unit
    assert eta_s(None, 3, 10, now) is None


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (4.24, "4.2 s"),
        (59.9, "59.9 s"),
        (185, "3 min 5 s"),
        (7620, "2 h 7 min"),
        (None, ""),
    ],
)
def test_it_says_a_duration_in_words(seconds, words):
    assert duration(seconds) == words
