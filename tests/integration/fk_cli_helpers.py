"""Running real ``flowkit-agent`` processes in tests: a clean environment, output collectors.

Every process started here is killed (by its own pid) when its ``with`` block ends, also when
the test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

AGENT = Path(sys.executable).with_name("flowkit-agent")

# What every run of the agent in these tests uses: no privileges, no real interfaces traced.
SYNTHETIC = {
    "TRACER": "synthetic",
    "ACCOUNTER": "python",
    "LISTEN_INTERFACES": "poll",
    "LISTEN_POLL_PERIOD": "1h",
}

_KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")


def agent_command() -> list[str]:
    """The installed ``flowkit-agent`` script of the interpreter running the tests."""
    if not AGENT.exists():
        pytest.fail(f"{AGENT} does not exist: install flowkit into this environment (make setup)")
    return [str(AGENT)]


def clean_env(extra: Mapping[str, str] | None = None, **settings: str) -> dict[str, str]:
    """The process environment without any setting of the caller's shell, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if k in _KEPT}
    env.update(extra or {})
    env.update(settings)
    return env


def run(args: Sequence[str], env: Mapping[str, str], timeout: float = 30,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the agent to completion (commands and configuration errors end by themselves)."""
    return subprocess.run([*agent_command(), *args], env=dict(env), capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


class AgentProcess:
    """A running agent whose standard output (JSON flows) and error are collected by threads."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str],
                 cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen([*agent_command(), *args], env=dict(env), cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.flows: list[dict[str, Any]] = []
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, is_stdout: bool) -> None:
        for line in stream:
            with self._changed:
                if is_stdout:
                    self.stdout_lines.append(line)
                    self.flows.append(json.loads(line))
                else:
                    self.stderr_lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def packets(self) -> int:
        """Packets in every flow printed so far."""
        with self._changed:
            return sum(int(f["Packets"]) for f in self.flows)

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
        """Wait until ``condition()`` holds; fail (showing standard error) when it does not."""
        with self._changed:
            # Readers notify at the end of output too, so an agent that exits ends the wait.
            self._changed.wait_for(lambda: condition() or self.proc.poll() is not None, timeout)
            ok = condition()
        if not ok:
            status = self.proc.poll()
            pytest.fail(f"{what}: not reached (agent exit status {status}); agent stderr:\n"
                        f"{''.join(self.stderr_lines)}")

    def wait_for_packets(self, count: int, timeout: float = 20) -> None:
        """Wait until flows holding ``count`` packets in all were printed."""
        self.wait_until(lambda: sum(int(f["Packets"]) for f in self.flows) >= count,
                        f"{count} packets on stdout", timeout)

    def wait_for_log(self, text: str, timeout: float = 20) -> None:
        """Wait until a line of standard error contains ``text``."""
        self.wait_until(lambda: any(text in line for line in self.stderr_lines),
                        f"log line {text!r}", timeout)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``signum`` and return the exit status once the output is fully read."""
        self.proc.send_signal(signum)
        return self.wait(timeout)

    def wait(self, timeout: float = 30) -> int:
        status = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return status

    def log_records(self) -> list[dict[str, Any]]:
        """Standard error lines parsed as the CLI's JSON log records (others skipped)."""
        records = []
        for line in self.stderr_lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for reader in self._readers:
            reader.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
