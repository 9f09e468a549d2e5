"""The access log and the Prometheus metrics.

One JSON line per request on ``gateway.access``: never the key, never the
query string (a key allowed in the query would land in the log), never a
header value. Lifecycle and failures go to ``gateway.error``.

With several worker processes the metrics use prometheus_client's
multiprocess mode: each worker writes its samples to memory-mapped files in
``PROMETHEUS_MULTIPROC_DIR`` and whichever worker answers ``/metrics`` sums
them. The verifier's own counters are plain integers on the hot path; a
background task copies their growth into the Prometheus counters.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from bisect import bisect_left
from typing import IO

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

access_logger = logging.getLogger("gateway.access")
error_logger = logging.getLogger("gateway.error")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Metrics:
    """The gateway's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        r = self.registry
        self.requests = Counter(
            "rpa_gateway_requests",
            "Requests on the gateway listener, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.auth_seconds = BatchedHistogram(
            Histogram(
                "rpa_gateway_auth_seconds",
                "Time to verify the key of a request.",
                buckets=_LATENCY_BUCKETS,
                registry=r,
            )
        )
        self.upstream_seconds = BatchedHistogram(
            Histogram(
                "rpa_gateway_upstream_seconds",
                "Time from sending a request upstream to its response headers.",
                buckets=_LATENCY_BUCKETS,
                registry=r,
            )
        )
        self.cache_hits = Counter(
            "rpa_gateway_cache_hits", "Key lookups answered by the cache.", registry=r
        )
        self.cache_misses = Counter(
            "rpa_gateway_cache_misses", "Key lookups that went to Redis.", registry=r
        )
        self.redis_errors = Counter(
            "rpa_gateway_redis_errors", "Key lookups that Redis failed.", registry=r
        )
        self.stale_served = Counter(
            "rpa_gateway_stale_served",
            "Keys accepted from the cache while Redis was unreachable.",
            registry=r,
        )
        self.invalidations = Counter(
            "rpa_gateway_invalidations",
            "Invalidation messages received from Redis.",
            registry=r,
        )
        self._outcomes: dict[str, int] = {}
        self._synced: dict[str, int] = {}

    def outcome(self, outcome: str) -> None:
        outcomes = self._outcomes
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    def flush(self) -> None:
        """Hand what requests counted since the last call to Prometheus."""
        outcomes, self._outcomes = self._outcomes, {}
        for outcome, count in outcomes.items():
            self.requests.labels(outcome).inc(count)
        self.auth_seconds.flush()
        self.upstream_seconds.flush()

    def sync_counter(self, name: str, counter: Counter, total: int) -> None:
        """Add to ``counter`` what ``total`` grew by since the last call."""
        delta = total - self._synced.get(name, 0)
        if delta > 0:
            counter.inc(delta)
        self._synced[name] = total

    def render(self) -> tuple[bytes, str]:
        if self.multiprocess:
            registry = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class BatchedHistogram:
    """Counts observations locally; ``flush`` adds them to a Histogram.

    ``Histogram.observe`` takes a lock and walks the buckets on each call:
    with a counter, about 8 microseconds a proxied request, a tenth of the
    gateway's own work. Here a request costs one bisect and two additions,
    and the server flushes every second and before each scrape. The flush
    adds to the histogram's own values (``_sum`` and the per-bucket
    ``_buckets``, prometheus_client's layout since 0.4), so multiprocess
    mode still sums every worker; a test compares the exposition with
    per-observation calls, so a change of that layout fails loudly.
    """

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self._bounds: list[float] = list(histogram._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def flush(self) -> None:
        counts, self._counts = self._counts, [0] * len(self._bounds)
        if not any(counts):
            return
        total, self._sum = self._sum, 0.0
        histogram = self.histogram
        histogram._sum.inc(total)
        for bucket, count in zip(histogram._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


AccessEntry = tuple[
    float,
    str,
    str,
    str,
    int,
    float,
    float | None,
    str,
    str | None,
    str | None,
    str | None,
]


def log_access(
    request_id: str,
    method: str,
    path: str,
    status: int,
    duration: float,
    upstream_duration: float | None,
    outcome: str,
    user_id: str | None,
    key_id: str | None,
    client: str | None,
) -> None:
    """Write the request's one access line, if the access log is on."""
    if not access_logger.isEnabledFor(logging.INFO):
        return
    entry: AccessEntry = (
        time.time(),
        request_id,
        method,
        path,
        status,
        duration,
        upstream_duration,
        outcome,
        user_id,
        key_id,
        client,
    )
    handlers = access_logger.handlers
    if len(handlers) == 1 and handlers[0] is _direct:
        # The configured batching handler alone: it gets the fields and
        # makes the line when it writes its batch. A LogRecord per request
        # cost about a quarter of the gateway's own CPU per request, and
        # making each line at once another 7 microseconds of 34 per
        # forward-auth answer under wrk, against 3 when timed alone.
        _direct.add_entry(entry)
    else:
        access_logger.info("%s", access_line(entry))


class _Clock:
    """RFC 3339 UTC times to the millisecond, each made once."""

    __slots__ = ("_millis", "_prefix", "_second", "_text")

    def __init__(self) -> None:
        self._millis = self._second = -1
        self._text = self._prefix = ""

    def text(self, moment: float) -> str:
        millis = int(moment * 1000)
        if millis != self._millis:
            second, part = divmod(millis, 1000)
            if second != self._second:
                self._second = second
                self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
            self._millis = millis
            self._text = f"{self._prefix}{part:03d}Z"
        return self._text


_clock = _Clock()


def access_line(entry: AccessEntry) -> str:
    """One access line as JSON: the fields in the order the log documents."""
    (
        moment,
        request_id,
        method,
        path,
        status,
        duration,
        upstream_duration,
        outcome,
        user_id,
        key_id,
        client,
    ) = entry
    return orjson.dumps(
        {
            "time": _clock.text(moment),
            "request_id": request_id,
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
            "upstream_ms": (
                None
                if upstream_duration is None
                else round(upstream_duration * 1000, 3)
            ),
            "outcome": outcome,
            "user_id": user_id,
            "key_id": key_id,
            "client": client,
        }
    ).decode()


class AccessLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes access lines in batches rather than one write per request.

    A write and flush per line was the largest single cost of a proxied
    request (about 90 microseconds of CPU of 290 measured with wrk).
    Lines are written when 256 are pending, by ``flush`` (called every
    second by the server and at exit), so the log lags by a second at most.
    """

    batch = 256

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self._pending: list[str | AccessEntry] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.add_entry(record.getMessage())
        except Exception:
            self.handleError(record)

    def add_entry(self, entry: str | AccessEntry) -> None:
        """A finished line, or the fields of one to be made at write time."""
        self._pending.append(entry)
        if len(self._pending) >= self.batch:
            self._write()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write()
        finally:
            self.release()

    def _write(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            lines = [
                entry if type(entry) is str else access_line(entry)  # type: ignore[arg-type]
                for entry in pending
            ]
            self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()


_direct: AccessLogHandler | None = None


def flush_access_log() -> None:
    for handler in access_logger.handlers:
        handler.flush()


def configure_logging(
    level: str = "info", access_log: bool = True, stream: IO[str] | None = None
) -> None:
    """Access lines bare on ``stream``; everything else with time and level."""
    out = stream or sys.stdout
    err = stream or sys.stderr
    global _direct
    _direct = AccessLogHandler(out)
    access_logger.handlers[:] = [_direct]
    access_logger.propagate = False
    access_logger.setLevel(logging.INFO if access_log else logging.WARNING)

    general = logging.StreamHandler(err)
    general.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [general]
    root.setLevel(level.upper())
    # uvicorn's own access log is off; its lifecycle lines stay useful.
    logging.getLogger("uvicorn.access").disabled = True
