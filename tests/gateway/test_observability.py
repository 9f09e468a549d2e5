"""The access log and the metrics; and the checker that keeps logs clean."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest

from gateway import keys, observability
from gateway.server import Context
from tests.conftest import PEPPER, secret_leaks
from tests.gateway.conftest import KeyMaker, bearer

FIELDS = {
    "time",
    "request_id",
    "method",
    "path",
    "status",
    "duration_ms",
    "upstream_ms",
    "outcome",
    "user_id",
    "key_id",
    "client",
}


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [
        orjson.loads(record.getMessage())
        for record in caplog.records
        if record.name == "gateway.access"
    ]


async def test_each_request_writes_one_json_access_line_without_the_key(
    client: httpx.AsyncClient, make_key: KeyMaker, caplog: pytest.LogCaptureFixture
) -> None:
    record, key = await make_key("alice")
    caplog.set_level(logging.INFO, logger="gateway.access")
    await client.get(f"/rpa/x?api_key={key}", headers=bearer(key))
    await client.get("/rpa/y", headers={"X-Request-ID": "mine-1"})
    proxied, refused = access_lines(caplog)
    assert set(proxied) == FIELDS
    assert proxied["outcome"] == "proxied"
    assert proxied["path"] == "/rpa/x"
    assert proxied["user_id"] == "alice" and proxied["key_id"] == record.id
    assert isinstance(proxied["upstream_ms"], float)
    assert proxied["client"] == "127.0.0.1"
    assert refused["status"] == 401 and refused["request_id"] == "mine-1"
    assert refused["user_id"] is None and refused["upstream_ms"] is None
    assert all(key not in r.getMessage() for r in caplog.records)


async def test_metrics_count_outcomes_cache_use_and_latency(
    client: httpx.AsyncClient, context: Context, make_key: KeyMaker
) -> None:
    _, key = await make_key()
    for _ in range(3):
        await client.get("/x", headers=bearer(key))
    await client.get("/x")
    await client.get("/_gateway/auth", headers=bearer(key))
    context.sync_metrics()
    text = context.metrics.render()[0].decode()
    assert 'rpa_gateway_requests_total{outcome="proxied"} 3.0' in text
    assert 'rpa_gateway_requests_total{outcome="unauthorized"} 1.0' in text
    assert 'rpa_gateway_requests_total{outcome="auth-allowed"} 1.0' in text
    assert "rpa_gateway_cache_misses_total 1.0" in text
    assert "rpa_gateway_cache_hits_total 3.0" in text
    assert "rpa_gateway_upstream_seconds_count 3.0" in text
    assert "rpa_gateway_auth_seconds_count 5.0" in text
    assert "rpa_gateway_redis_errors_total 0.0" in text


def test_the_log_checker_finds_keys_peppers_and_url_passwords() -> None:
    """The session-wide check would be worthless if it could not see a leak."""
    key = keys.generate_key()
    lines = [
        ("a", f"verified {key}"),
        ("b", f"pepper is {PEPPER}"),
        ("c", "connecting to redis://user:hunter2@redis:6379/0"),
        ("d", "rpa_ followed by nothing secret"),
        ("e", "a mistyped " + key[:-1] + ("0" if key[-1] != "0" else "1")),
    ]
    leaks = secret_leaks(lines)
    assert [leak.split(":")[0] for leak in leaks] == ["a", "b", "c"]
    assert all(key not in leak and PEPPER not in leak for leak in leaks)


def test_batched_histograms_expose_exactly_what_direct_observations_would() -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from gateway.observability import BatchedHistogram

    values = [0.0001, 0.0005, 0.0007, 0.003, 0.02, 0.4, 7.0, 31.0, 0.0025]
    buckets = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.5, 1.0, 30.0)
    direct_registry, batched_registry = CollectorRegistry(), CollectorRegistry()
    direct = Histogram("h", "h", buckets=buckets, registry=direct_registry)
    batched = BatchedHistogram(
        Histogram("h", "h", buckets=buckets, registry=batched_registry)
    )
    for value in values[:5]:
        direct.observe(value)
        batched.observe(value)
    batched.flush()
    for value in values[5:]:
        direct.observe(value)
        batched.observe(value)

    def samples(registry: CollectorRegistry) -> list[tuple[bytes, float]]:
        pairs = []
        for line in generate_latest(registry).splitlines():
            # The creation time differs, rightly; comments carry no values.
            if b"_created" in line or line.startswith(b"#"):
                continue
            name, _, value = line.rpartition(b" ")
            pairs.append((name, pytest.approx(float(value))))
        return pairs

    assert samples(batched_registry) != samples(direct_registry)
    batched.flush()
    batched.flush()  # an empty flush adds nothing
    assert samples(batched_registry) == samples(direct_registry)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    loggers = [logging.getLogger(), observability.access_logger]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    yield
    for lg, (handlers, level, propagate) in zip(loggers, saved, strict=True):
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def test_batched_access_lines_are_made_at_write_time_in_order(
    restore_logging: None,
) -> None:
    stream = io.StringIO()
    observability.configure_logging("warning", True, stream=stream)
    before = datetime.now(UTC)
    observability.log_access(
        "id-1",
        "GET",
        '/odd "path"\\é',
        200,
        0.0012345,
        None,
        "auth-allowed",
        "alice",
        "k1",
        "127.0.0.1",
    )
    observability.access_logger.info("%s", '{"already":"made"}')
    observability.log_access(
        "id-2", "POST", "/rpa/x", 502, 0.5, 0.25, "upstream-refused", None, None, None
    )
    assert stream.getvalue() == ""  # nothing is written per request
    observability.flush_access_log()
    first, made, second = (
        orjson.loads(line) for line in stream.getvalue().splitlines()
    )
    assert set(first) == FIELDS and set(second) == FIELDS
    assert first["path"] == '/odd "path"\\é' and first["duration_ms"] == 1.234
    assert first["upstream_ms"] is None and first["user_id"] == "alice"
    assert made == {"already": "made"}
    assert second["status"] == 502 and second["upstream_ms"] == 250.0
    assert second["client"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    logged = datetime.fromisoformat(first["time"].replace("Z", "+00:00"))
    assert before - timedelta(seconds=0.001) <= logged <= datetime.now(UTC)


def test_access_log_off_writes_nothing(restore_logging: None) -> None:
    stream = io.StringIO()
    observability.configure_logging("warning", False, stream=stream)
    observability.log_access(
        "id-1", "GET", "/x", 200, 0.001, None, "proxied", "alice", "k1", "127.0.0.1"
    )
    observability.flush_access_log()
    assert stream.getvalue() == ""
