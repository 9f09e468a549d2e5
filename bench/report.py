"""The results as JSON and as a Markdown table, with ratios and targets.

Only ratios between configurations of the same run carry targets: absolute
figures depend on the machine and its neighbours, ratios much less.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RATIO_CONNECTIONS = 32


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    at_least: bool
    bound: float

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value >= self.bound if self.at_least else value <= self.bound

    @property
    def text(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.bound:g}"


TARGETS = (
    Target("gateway / python_proxy", True, 0.90),
    Target("gateway_forward_auth / nginx_trivial_auth", True, 0.90),
    Target("gateway_miss / gateway", True, 0.60),
    Target("gateway p99 / python_proxy p99", False, 1.5),
    Target("revocation_ms.p99", False, 50),
    Target("verify_per_second.hit", True, 100_000),
)


def _figure(
    configurations: Mapping[str, Any], name: str, field: str, connections: int
) -> float | None:
    entry = configurations.get(name, {}).get("connections", {}).get(str(connections))
    return None if entry is None else float(entry[field])


def _divide(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


# The pairs behind the four ratios with targets: (name, numerator,
# denominator, figure).
RATIO_PAIRS = (
    ("gateway / python_proxy", "gateway", "python_proxy", "rps"),
    (
        "gateway_forward_auth / nginx_trivial_auth",
        "gateway_forward_auth",
        "nginx_trivial_auth",
        "rps",
    ),
    ("gateway_miss / gateway", "gateway_miss", "gateway", "rps"),
    ("gateway p99 / python_proxy p99", "gateway", "python_proxy", "p99_ms"),
)


def ratios(
    configurations: Mapping[str, Any], connections: int, *, paired: bool = True
) -> dict[str, Any]:
    """The four ratios with targets, at one connection count.

    Paired (the default): in each round the two configurations of a ratio
    run one right after the other, so each round gives one ratio of two
    runs a few seconds apart, and the figure is the median of those. A
    slowdown of the machine that lasts a minute then falls on both sides of
    a ratio instead of on one. Unpaired: the ratio of the two medians.
    """
    return {
        name: _ratio(configurations, a, b, field, connections, paired=paired)
        for name, a, b, field in RATIO_PAIRS
    }


def _ratio(
    configurations: Mapping[str, Any],
    a: str,
    b: str,
    field: str,
    connections: int,
    *,
    paired: bool,
) -> float | None:
    runs_a, runs_b = (_runs(configurations, n, connections) for n in (a, b))
    if paired and runs_a and len(runs_a) == len(runs_b):
        per_round = [
            x[field] / y[field] for x, y in zip(runs_a, runs_b, strict=True) if y[field]
        ]
        return round(statistics.median(per_round), 3) if per_round else None
    return _divide(
        _figure(configurations, a, field, connections),
        _figure(configurations, b, field, connections),
    )


def _runs(
    configurations: Mapping[str, Any], name: str, connections: int
) -> list[Mapping[str, Any]]:
    entry = configurations.get(name, {}).get("connections", {}).get(str(connections))
    return list(entry.get("runs", ())) if entry else []


def _dig(result: Mapping[str, Any], dotted: str) -> float | None:
    node: Any = result
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return None if node is None else float(node)


def evaluate_targets(result: Mapping[str, Any]) -> dict[str, Any]:
    """Each target with its value and whether it is met (None: not measured)."""
    evaluated = {}
    for target in TARGETS:
        if target.name in result.get("ratios", {}):
            value = result["ratios"][target.name]
        else:
            value = _dig(result, target.name)
        evaluated[target.name] = {
            "value": value,
            "target": target.text,
            "met": target.met(value),
        }
    return evaluated


def write(result: Mapping[str, Any], directory: Path, stem: str = "latest") -> None:
    """Write ``stem``.json and ``stem``.md, each replaced in one step."""
    directory.mkdir(parents=True, exist_ok=True)
    for suffix, text in (
        (".json", json.dumps(result, indent=2) + "\n"),
        (".md", markdown(result)),
    ):
        final = directory / (stem + suffix)
        temporary = final.with_suffix(suffix + ".tmp")
        temporary.write_text(text)
        os.replace(temporary, final)


# Markdown ----------------------------------------------------------------


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _mib(value: int | None) -> str:
    return "n/a" if not value else f"{value / 1048576:.1f}"


def _cpu(per_service: Mapping[str, float] | None) -> str:
    """Total CPU per request, and each process's share when there are several."""
    if not per_service or "total" not in per_service:
        return "n/a"
    parts = [(k, v) for k, v in per_service.items() if k != "total"]
    total = f"{per_service['total']:.1f}"
    if len(parts) < 2:
        return total
    return total + " (" + " + ".join(f"{k} {v:.1f}" for k, v in parts) + ")"


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def markdown(result: Mapping[str, Any]) -> str:
    method = result["method"]
    machine = result["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Run {result['created_at']} ({result['mode']} mode): "
        f"{method['rounds']} alternating rounds of {method['duration_s']:g} s per "
        f"configuration and connection count, after a {method['warmup_s']:g} s "
        f"warm-up. {machine['cpus']} CPUs ({machine['cpu_model']}); "
        f"{_pinning_text(method['pinning'])}",
        "",
        "## Targets",
        "",
        f"Ratios at {RATIO_CONNECTIONS} connections: in each round the two "
        "configurations of a ratio run back to back; the figure is the median "
        "of the rounds' ratios.",
        "",
        "| figure | value | target | verdict |",
        "| --- | ---: | :---: | --- |",
    ]
    for name, entry in result["targets"].items():
        value = entry["value"]
        shown = _number(value, 0 if value is not None and value > 100 else 3)
        lines.append(
            f"| {name} | {shown} | {entry['target']} | {_verdict(entry['met'])} |"
        )
    lines += [
        "",
        "## Configurations",
        "",
        "| configuration | connections | requests/s | p50 ms | p99 ms | errors "
        "| CPU us/request | peak RSS MiB | foreign CPU % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, config in result["configurations"].items():
        for connections, entry in config["connections"].items():
            lines.append(
                f"| {name} | {connections} | {_number(entry['rps'])} "
                f"| {entry['p50_ms']:.2f} | {entry['p99_ms']:.2f} "
                f"| {entry['errors']} | {_cpu(entry.get('cpu_us_per_request'))} "
                f"| {_mib(config.get('peak_rss_bytes'))} "
                f"| {_number(entry.get('foreign_cpu_pct'))} |"
            )
    lines += _other_figures(result)
    lines += ["", "## Configurations described", ""]
    for name, config in result["configurations"].items():
        lines.append(f"- `{name}`: {config['description']}.")
    lines += ["", "## Method", ""]
    lines += [f"- {note}" for note in method.get("notes", [])]
    return "\n".join(lines) + "\n"


def _pinning_text(pinning: Mapping[str, Any] | None) -> str:
    if not pinning:
        return "no CPU pinning (taskset or a second CPU missing)."
    return (
        f"proxies pinned to CPU {pinning['proxy_cpus']}, wrk and the upstream "
        f"to CPU {pinning['load_cpus']}."
    )


def _other_figures(result: Mapping[str, Any]) -> list[str]:
    lines = ["", "## Other figures", ""]
    verify = result.get("verify_per_second")
    if verify:
        lines.append(
            f"- Verifications per second, one core: cache hit "
            f"{_number(verify.get('hit'))}, cache miss {_number(verify.get('miss'))}"
            f" (real Redis, {verify.get('miss_concurrency', '?')} concurrent "
            f"lookups; {_number(verify.get('miss_sequential'))} one at a time)."
        )
    endpoints = result.get("forward_auth_cpu_us")
    if endpoints:
        lines.append(
            f"- Forward-auth endpoints alone (wrk straight at each, no nginx, "
            f"{endpoints['connections']} connections): CPU per answer "
            f"{endpoints['allow_all_us']:.1f} us for the allow-all endpoint, "
            f"{endpoints['gateway_us']:.1f} us for the gateway "
            f"(allow_all / gateway {endpoints['allow_all / gateway']:.3f})."
        )
    revocation = result.get("revocation_ms")
    if revocation:
        lines.append(
            f"- Revocation to refusal on the other replica, "
            f"{revocation['samples']} samples: p50 {revocation['p50']:.2f} ms, "
            f"p99 {revocation['p99']:.2f} ms, max {revocation['max']:.2f} ms "
            f"(one request through the replica takes {revocation['poll_rtt_ms']:.2f}"
            " ms)."
        )
    memory = result.get("memory")
    if memory:
        lines.append(
            f"- Memory: {_number(memory.get('redis_bytes_per_key'))} bytes of Redis "
            f"per key record with its indexes; "
            f"{_number(memory.get('process_bytes_per_cached_key'))} bytes of "
            f"process memory per cached key at "
            f"{_number(memory.get('cached_keys'))} cached keys."
        )
    configurations = result.get("configurations", {})
    signed = [
        _divide(
            _figure(configurations, "gateway_assertions", "rps", connections),
            _figure(configurations, "gateway", "rps", connections),
        )
        for connections in (RATIO_CONNECTIONS, 128)
    ]
    if signed[0] is not None:
        at_128 = f", {signed[1]:.3f} at 128" if signed[1] is not None else ""
        lines.append(
            f"- Signed identity assertions on (no target): gateway_assertions / "
            f"gateway {signed[0]:.3f} at {RATIO_CONNECTIONS} connections{at_128}."
        )
    extra = result.get("ratios_at_128")
    if extra:
        shown = ", ".join(f"{k} {_number(v, 3)}" for k, v in extra.items())
        lines.append(f"- The same ratios at 128 connections (no targets): {shown}.")
    return lines
