"""Ratios, targets and the Markdown report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import report


def _config(rps32: float, p99: float) -> dict[str, Any]:
    entry = {
        "rps": rps32,
        "p50_ms": 1.0,
        "p99_ms": p99,
        "errors": 0,
        "cpu_us_per_request": {"front": 20.0, "auth": 30.5, "total": 50.5},
    }
    return {
        "description": "a configuration",
        "connections": {"32": entry, "128": {**entry, "rps": rps32 * 1.1}},
        "peak_rss_bytes": 50 * 1048576,
    }


CONFIGS = {
    "python_proxy": _config(4000, 10.0),
    "nginx_trivial_auth": _config(5000, 8.0),
    "gateway": _config(3800, 12.0),
    "gateway_miss": _config(2000, 20.0),
    "gateway_forward_auth": _config(4600, 9.0),
}


def _result() -> dict[str, Any]:
    result: dict[str, Any] = {
        "created_at": "2026-01-01T00:00:00+00:00",
        "mode": "quick",
        "machine": {"cpus": 2, "cpu_model": "test"},
        "method": {
            "rounds": 2,
            "duration_s": 2.0,
            "warmup_s": 1.0,
            "pinning": {"proxy_cpus": "0", "load_cpus": "1"},
            "notes": ["a note"],
        },
        "configurations": CONFIGS,
        "ratios": report.ratios(CONFIGS, 32),
        "revocation_ms": {
            "p50": 3.0,
            "p99": 60.0,
            "max": 70.0,
            "samples": 200,
            "poll_rtt_ms": 1.0,
        },
        "verify_per_second": {"hit": 150_000, "miss": 5000},
        "forward_auth_cpu_us": {
            "allow_all_us": 24.0,
            "gateway_us": 25.0,
            "allow_all / gateway": 0.96,
            "connections": 32,
        },
    }
    result["targets"] = report.evaluate_targets(result)
    return result


def test_ratios_have_exactly_the_four_names_at_32_connections() -> None:
    ratios = report.ratios(CONFIGS, 32)
    assert list(ratios) == [
        "gateway / python_proxy",
        "gateway_forward_auth / nginx_trivial_auth",
        "gateway_miss / gateway",
        "gateway p99 / python_proxy p99",
    ]
    assert ratios["gateway / python_proxy"] == pytest.approx(0.95)
    assert ratios["gateway_miss / gateway"] == pytest.approx(0.526, abs=1e-3)
    assert ratios["gateway p99 / python_proxy p99"] == pytest.approx(1.2)


def _rounds(*rps: float) -> dict[str, Any]:
    runs = [{"rps": value, "p99_ms": 10_000 / value} for value in rps]
    median = sorted(rps)[len(rps) // 2]
    summary = {"rps": median, "p99_ms": 10_000 / median, "runs": runs}
    return {"connections": {"32": summary}}


def test_a_ratio_is_the_median_of_the_rounds_ratios() -> None:
    # The machine slowed down in round 1 for both sides of the ratio, and
    # in round 2 for the gateway alone: the rounds' ratios see through it,
    # the ratio of the two medians does not.
    configurations = {
        "python_proxy": _rounds(2500, 5000, 5000),
        "gateway": _rounds(2400, 2400, 4800),
    }
    paired = report.ratios(configurations, 32)
    assert paired["gateway / python_proxy"] == pytest.approx(0.96)
    assert paired["gateway p99 / python_proxy p99"] == pytest.approx(1.042)
    unpaired = report.ratios(configurations, 32, paired=False)
    assert unpaired["gateway / python_proxy"] == pytest.approx(0.48)


def test_a_missing_configuration_gives_no_ratio() -> None:
    ratios = report.ratios({"gateway": CONFIGS["gateway"]}, 32)
    assert ratios["gateway / python_proxy"] is None


def test_targets_are_marked_met_missed_or_not_measured() -> None:
    targets = _result()["targets"]
    assert targets["gateway / python_proxy"]["met"] is True
    assert targets["gateway_miss / gateway"]["met"] is False
    assert targets["gateway p99 / python_proxy p99"]["met"] is True
    assert targets["revocation_ms.p99"] == {
        "value": 60.0,
        "target": "<= 50",
        "met": False,
    }
    assert targets["verify_per_second.hit"]["met"] is True
    assert len(targets) == 6


def test_unmeasured_target_is_none() -> None:
    result = _result()
    del result["verify_per_second"]
    assert report.evaluate_targets(result)["verify_per_second.hit"]["met"] is None


def test_markdown_names_every_target_and_configuration() -> None:
    text = report.markdown(_result())
    assert "| gateway_miss / gateway | 0.526 | >= 0.6 | **missed** |" in text
    assert "| 50.5 (front 20.0 + auth 30.5) |" in text
    assert "24.0 us for the allow-all endpoint, 25.0 us for the gateway" in text
    for name in CONFIGS:
        assert f"| {name} | 32 |" in text
    assert "p99 60.00 ms" in text


def test_write_replaces_both_files(tmp_path: Path) -> None:
    report.write(_result(), tmp_path)
    assert json.loads((tmp_path / "latest.json").read_text())["mode"] == "quick"
    assert (tmp_path / "latest.md").read_text().startswith("# Benchmark results")
    assert not list(tmp_path.glob("*.tmp"))
