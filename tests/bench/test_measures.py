"""The small pieces of arithmetic behind the figures."""

from __future__ import annotations

import pytest

from bench import cpustat, profile
from bench.stats import percentile

STAT_BEFORE = """cpu  10 0 10 100 0 0 0 0 0 0
cpu0 5 0 5 50 0 0 0 0 0 0
cpu1 5 0 5 50 0 0 0 0 0 0
intr 1 2 3
"""
STAT_AFTER = """cpu  40 0 20 150 0 0 0 20 0 0
cpu0 25 0 10 60 0 0 0 5 0 0
cpu1 15 0 10 90 0 0 0 15 0 0
"""


def test_nearest_rank_p99_of_200_samples_is_the_second_largest() -> None:
    values = list(range(1, 201))
    assert percentile(values, 0.99) == 198
    assert percentile(values, 0.50) == 100
    assert percentile([7.0], 0.99) == 7.0


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="No values"):
        percentile([], 0.5)


def test_steal_is_a_share_of_each_cpus_ticks() -> None:
    before, after = cpustat.parse(STAT_BEFORE), cpustat.parse(STAT_AFTER)
    assert cpustat.steal_percent(before, after) == {"0": 12.5, "1": 21.4}


def test_busy_time_leaves_out_idle_and_steal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpustat.os, "sysconf", lambda name: 100)
    before, after = cpustat.parse(STAT_BEFORE), cpustat.parse(STAT_AFTER)
    # cpu0: 20 user + 5 system; cpu1: 10 user + 5 system; ticks of 1/100 s.
    assert cpustat.busy_seconds(before, after) == pytest.approx(0.40)


def test_profile_summary_counts_self_and_inclusive_time() -> None:
    collapsed = (
        "main (/x/app.py:1);handle (/x/site-packages/aiohttp/web.py:5) 3\n"
        "main (/x/app.py:1);log (/usr/lib/python3.11/logging/__init__.py:9) 1\n"
    )
    text = profile.summarize(collapsed)
    assert text.startswith("4 samples")
    assert " 75.0%  handle (aiohttp/web.py)" in text
    assert "100.0%  main (/x/app.py)" in text
    assert " 25.0%  log (logging/__init__.py)" in text
