"""Sampling profiles of a configuration's Python processes under load.

``python -m bench --profile gateway`` runs, after the measured rounds, one
extra load run of that configuration at 32 connections with py-spy attached
to each of its Python processes. py-spy pauses the process for each sample,
so that run's throughput is not reported. For each process it writes the
collapsed stacks (for flame graph tools) and a summary of where the time
went, by function, both self and inclusive.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bench.configs import REPO_ROOT, Setup
from bench.procs import descendants

RATE = 200
TOP = 30
_PREFIX = re.compile(r"^.*/(site-packages|python3\.\d+)/")


class ProfileError(RuntimeError):
    """py-spy is missing or failed."""


def _python_pids(setup: Setup) -> list[tuple[str, int]]:
    """The Python processes of the setup (nginx is skipped), workers included."""
    found = []
    for service in setup.services:
        for pid in [service.pid, *descendants(service.pid)]:
            try:
                exe = Path(f"/proc/{pid}/exe").resolve().name
            except OSError:
                continue
            if exe.startswith("python"):
                found.append((f"{service.name}-{pid}", pid))
    return found


def start(
    setup: Setup, duration: float, out_dir: Path
) -> list[tuple[str, Path, subprocess.Popen[bytes]]]:
    """py-spy on each Python process of setup, for ``duration`` seconds."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise ProfileError(
            "py-spy is not installed: '.venv/bin/pip install py-spy' adds it."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    started = []
    for label, pid in _python_pids(setup):
        path = out_dir / f"profile-{setup.name}-{label}.collapsed"
        command = [spy, "record", "--pid", str(pid), "--rate", str(RATE)]
        command += ["--duration", str(round(duration)), "--format", "raw"]
        command += ["--output", str(path)]
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        started.append((label, path, process))
    return started


def finish(started: list[tuple[str, Path, subprocess.Popen[bytes]]]) -> list[Path]:
    """Wait for every py-spy, then write a summary next to each profile."""
    summaries = []
    for label, path, process in started:
        _, err = process.communicate(timeout=120)
        if process.returncode != 0 or not path.exists():
            raise ProfileError(f"py-spy failed on {label}: {err.decode().strip()}")
        summary = path.with_suffix(".txt")
        summary.write_text(summarize(path.read_text()))
        summaries.append(summary)
    return summaries


def summarize(collapsed: str, top: int = TOP) -> str:
    """Self and inclusive shares by function, from collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "No samples.\n"
    lines = [f"{total} samples", "", "Self time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["", "Inclusive time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def _short(frame: str) -> str:
    """``function (path/to/file.py:12)`` with the path cut to its package."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rpartition(":")[0]
    file = _PREFIX.sub("", file.removeprefix(str(REPO_ROOT) + "/"))
    return f"{name} ({file})" if file else name
