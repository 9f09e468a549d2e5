"""Starting, watching and stopping the processes a run needs.

Every process is started in a session of its own, so one signal reaches the
whole tree (nginx workers, uvicorn workers), and with ``PR_SET_PDEATHSIG``
so that it dies with the harness even if the harness is killed outright.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class StartError(RuntimeError):
    """A process did not come up; the message carries the tail of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinning_available() -> bool:
    """True when ``taskset`` exists and at least two CPUs are ours to use."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return shutil.which("taskset") is not None and usable >= 2


def pinned(command: Sequence[str], cpus: str | None) -> list[str]:
    """The command, run by ``taskset`` on ``cpus`` when pinning is wanted."""
    if cpus is None:
        return list(command)
    return ["taskset", "--cpu-list", cpus, *command]


def _die_with_parent() -> None:
    # Runs in the child between fork and exec. Survives taskset's exec, and
    # nginx's master passes it on by stopping its workers when it gets it.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Service:
    """One started process (and its children), with its log in a file."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def __repr__(self) -> str:
        return f"Service({self.name!r}, pid={self.pid})"

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, what: str) -> StartError:
        tail = self.log_tail()
        detail = f"\n--- last lines of {self.log_path.name} ---\n{tail}" if tail else ""
        return StartError(f"{self.name}: {what}.{detail}")

    def tree(self) -> list[int]:
        """The process and all its descendants that are still running."""
        return [self.pid, *descendants(self.pid)] if self.alive() else []

    def peak_rss(self) -> int:
        """Sum of the peak resident sizes (VmHWM) of the process tree, bytes."""
        return sum(peak_rss_of(pid) for pid in self.tree())

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to the whole session; SIGKILL what is left after timeout."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        # Children may outlive their parent (uvicorn workers, nginx workers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)
        self._log.close()


class Supervisor:
    """Owns every service of a run and stops them all, newest first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.services: list[Service] = []

    def start(
        self,
        name: str,
        command: Sequence[str],
        *,
        cpus: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Service:
        log_path = self.log_dir / f"{name}.log"
        service = Service(
            name, pinned(command, cpus), log_path=log_path, env=env, cwd=cwd
        )
        self.services.append(service)
        return service

    def stop_all(self) -> None:
        while self.services:
            self.services.pop().stop()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()


def descendants(pid: int) -> list[int]:
    """Every descendant of pid, from /proc/<pid>/task/*/children."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in _listdir(f"/proc/{parent}/task"):
            try:
                text = Path(f"/proc/{parent}/task/{task}/children").read_text()
            except OSError:
                continue
            children = [int(child) for child in text.split()]
            found.extend(children)
            pending.extend(children)
    return found


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def peak_rss_of(pid: int) -> int:
    """VmHWM of one process in bytes; 0 when it is gone."""
    return _status_field(pid, "VmHWM")


def rss_of(pid: int) -> int:
    """VmRSS of one process in bytes; 0 when it is gone."""
    return _status_field(pid, "VmRSS")


def _status_field(pid: int | str, field: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def wait_for_port(service: Service, port: int, timeout: float = 15.0) -> None:
    """Until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise service.fail(f"exited with status {service.process.returncode}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        time.sleep(0.05)
    raise service.fail(f"did not listen on port {port} within {timeout:.0f} s")


def http_status(
    url: str, headers: Mapping[str, str] | None = None, timeout: float = 2.0
) -> int:
    """The status of a GET, following no redirects; 0 if no answer."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    opener = urllib.request.build_opener(_NoRedirect())
    try:
        with opener.open(request, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def wait_for_http(
    service: Service, url: str, want: int = 200, timeout: float = 20.0
) -> None:
    """Until a GET of url answers with the status ``want``."""
    deadline = time.monotonic() + timeout
    status = 0
    while time.monotonic() < deadline:
        if not service.alive():
            raise service.fail(f"exited with status {service.process.returncode}")
        status = http_status(url)
        if status == want:
            return
        time.sleep(0.1)
    raise service.fail(
        f"answered {url} with {status or 'nothing'} instead of {want} "
        f"within {timeout:.0f} s"
    )


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt, so cleanup runs."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {
        sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
