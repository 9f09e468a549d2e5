"""The small pieces of arithmetic behind the figures."""

from __future__ import annotations

import pytest

from bench import cpustat, profile, throughput
from bench.stats import percentile
from bench.wrk import WrkResult

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


def test_cpu_per_request_is_per_process_and_in_all() -> None:
    before = {"front-nginx": 1.0, "auth": 2.0}
    after = {"front-nginx": 1.5, "auth": 3.0}
    per_request = throughput.cpu_per_request(before, after, 20_000)
    assert per_request == {"front-nginx": 25.0, "auth": 50.0, "total": 75.0}
    # A process that went away counts nothing rather than a negative time.
    assert throughput.cpu_per_request(before, {"auth": 2.5}, 10_000) == {
        "front-nginx": 0.0,
        "auth": 50.0,
        "total": 50.0,
    }
    assert throughput.cpu_per_request(before, after, 0) == {}
    assert throughput.cpu_per_request({}, {}, 1000) == {}


def test_series_summary_takes_the_median_cpu_of_the_rounds() -> None:
    series = throughput.Series()
    for rps, auth in ((100.0, 30.0), (110.0, 50.0), (90.0, 31.0)):
        series.runs.append(WrkResult(1000, 10.0, rps, 1.0, 2.0, 3.0, 4.0, 0, 0, 0))
        series.noise.append({"foreign_cpu_pct": 1.0, "steal_pct": {}})
        series.cpu.append({"auth": auth, "total": auth + 10})
    summary = series.summary()
    assert summary["cpu_us_per_request"] == {"auth": 31.0, "total": 41.0}
    assert summary["runs"][1]["cpu_us_per_request"] == {"auth": 50.0, "total": 60.0}
