"""Reading wrk's result line from load.lua."""

from __future__ import annotations

import pytest

from bench.wrk import WrkError, parse_output

SAMPLE = """Running 2s test @ http://127.0.0.1:1234/x
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms  300.00us   9.00ms   90.00%
  8000 requests in 2.00s, 1.20MB read
Requests/sec:   4000.00
BENCH_RESULT {"requests":8000,"duration_us":2000000,"bytes":1258291,\
"errors":{"connect":1,"read":2,"write":0,"status":3,"timeout":4},\
"latency_us":{"p50":1100,"p90":1500,"p99":4200,"max":9000,"mean":1200.5}}
"""


def test_result_line_gives_rate_latency_and_errors() -> None:
    result = parse_output(SAMPLE)
    assert result.requests == 8000
    assert result.rps == pytest.approx(4000.0)
    assert result.p50_ms == pytest.approx(1.1)
    assert result.p99_ms == pytest.approx(4.2)
    assert result.max_ms == pytest.approx(9.0)


def test_errors_are_socket_errors_plus_status_errors() -> None:
    result = parse_output(SAMPLE)
    assert result.socket_errors == 1 + 2 + 0 + 4
    assert result.status_errors == 3
    assert result.errors == 10
    assert result.as_dict()["errors"] == 10


def test_output_without_result_line_is_an_error() -> None:
    with pytest.raises(WrkError, match="no result line"):
        parse_output("Requests/sec: 10\n")
