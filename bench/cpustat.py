"""CPU time taken from us while a run was going: steal and foreign load.

On a virtual machine the hypervisor can run someone else on "our" CPU
(steal time); on a shared machine other processes can (foreign load: busy
CPU time minus that of the harness, everything it started, and Redis). Both
are recorded with every load run, so a noisy run can be told from a slow
configuration.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import descendants

# Fields of a "cpuN" line in /proc/stat, in order (proc(5)).
_USER, _NICE, _SYSTEM, _IDLE, _IOWAIT, _IRQ, _SOFTIRQ, _STEAL = range(8)


@dataclass(frozen=True, slots=True)
class Sample:
    ticks: dict[str, list[int]]


def parse(text: str) -> Sample:
    ticks = {}
    for line in text.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks[name[3:]] = [int(value) for value in fields]
    return Sample(ticks)


def sample() -> Sample:
    try:
        return parse(Path("/proc/stat").read_text())
    except OSError:
        return Sample({})


def steal_percent(before: Sample, after: Sample) -> dict[str, float]:
    """Per CPU, the share of elapsed ticks stolen by the hypervisor."""
    shares = {}
    for cpu, end in after.ticks.items():
        start = before.ticks.get(cpu)
        if start is None:
            continue
        deltas = [b - a for a, b in zip(start, end, strict=False)]
        total = sum(deltas[: _STEAL + 1])
        if total > 0:
            shares[cpu] = round(100 * deltas[_STEAL] / total, 1)
    return shares


_IDLE_FIELDS = (_IDLE, _IOWAIT)


def busy_seconds(before: Sample, after: Sample) -> float:
    """CPU seconds spent on anything but idling, over all CPUs (steal left out)."""
    tick = os.sysconf("SC_CLK_TCK")
    busy = 0
    for cpu, end in after.ticks.items():
        start = before.ticks.get(cpu)
        if start is None:
            continue
        deltas = [b - a for a, b in zip(start, end, strict=False)]
        busy += sum(d for i, d in enumerate(deltas[:_STEAL]) if i not in _IDLE_FIELDS)
    return busy / tick


def process_seconds(pid: int) -> float:
    """User and system CPU seconds of a running process; 0 when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name may hold spaces; the fields start after its ")".
    fields = text.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_seconds(extra_pids: Iterable[int] = ()) -> float:
    """CPU seconds of this process, its children (live or reaped) and extras."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = me.ru_utime + me.ru_stime + reaped.ru_utime + reaped.ru_stime
    pids = {*descendants(os.getpid()), *extra_pids}
    return total + sum(process_seconds(pid) for pid in pids)


@dataclass(frozen=True, slots=True)
class Window:
    """CPU counters at the start of a load run."""

    system: Sample
    own: float
    wall: float

    @classmethod
    def open(cls, extra_pids: Iterable[int] = ()) -> Window:
        return cls(sample(), own_seconds(extra_pids), time.monotonic())

    def close(self, extra_pids: Iterable[int] = ()) -> dict[str, Any]:
        """Steal per CPU, and the CPU share used by processes not ours."""
        end = sample()
        wall = time.monotonic() - self.wall
        foreign = busy_seconds(self.system, end) - (own_seconds(extra_pids) - self.own)
        cpus = max(1, len(end.ticks))
        return {
            "steal_pct": steal_percent(self.system, end),
            "foreign_cpu_pct": round(max(0.0, 100 * foreign / (wall * cpus)), 1),
        }
