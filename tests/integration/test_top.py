"""``flowkit-agent top`` used as a person would: in tmux, read back with ``capture-pane``.

Namespaces L and R joined by a veth pair; L sends two UDP flows to R at known rates: flow A
(source port 41001) many small datagrams, flow B (source port 41002) fewer large ones, so B leads
by bytes per second and A by packets per second. ``top`` runs in R inside a tmux session.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from .netns import Pair, agent_command, unique
except ImportError:
    from netns import Pair, agent_command, unique  # type: ignore[no-redef]

TRAFFIC = str(Path(__file__).with_name("traffic.py"))
SENDER = """
import socket, sys, time
dst, end = sys.argv[1], time.monotonic() + float(sys.argv[2])
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(("", 41001))
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.bind(("", 41002))
tick = time.monotonic()
while tick < end:
    for _ in range(15):
        a.sendto(b"a" * 18, (dst, 5001))
    for _ in range(2):
        b.sendto(b"b" * 1400, (dst, 5001))
    tick += 0.01
    time.sleep(max(0.0, tick - time.monotonic()))
"""


class Tmux:
    """A detached tmux session running one command, on a tmux server of its own."""

    def __init__(self, command: list[str]) -> None:
        self.name = unique("fktop")
        self.tmux = ["tmux", "-L", self.name, "-f", "/dev/null"]
        subprocess.run([*self.tmux, "new-session", "-d", "-s", self.name, "-x", "200", "-y",
                        "40", shlex.join(command) + "; echo EXITED $?; sleep 60"], check=True)

    def screen(self) -> list[str]:
        out = subprocess.run([*self.tmux, "capture-pane", "-p", "-t", self.name],
                             capture_output=True, text=True, check=True).stdout
        return out.splitlines()

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, predicate: object, timeout: float = 20) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.screen()
            if predicate(lines):  # type: ignore[operator]
                return lines
            if time.monotonic() > deadline:
                raise AssertionError("screen never matched:\n" + "\n".join(lines))
            time.sleep(0.3)

    def kill(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], check=False, capture_output=True)


def rows(lines: list[str]) -> list[list[str]]:
    """Table rows (rank first) under the header line."""
    out = []
    for line in lines:
        cells = line.split()
        if cells and cells[0].isdigit() and len(cells) >= 9:
            out.append(cells)
    return out


def top_source(lines: list[str]) -> str | None:
    table = rows(lines)
    return table[0][4] if table else None


@pytest.fixture
def scene() -> Iterator[tuple[Pair, Tmux]]:
    with Pair.create("fkTp", offload=False) as pair:
        left, right = pair.left, pair.right
        sink = right.ns.popen([sys.executable, TRAFFIC, "udp-sink", "5001", "60"],
                              stdout=subprocess.PIPE, text=True)
        sender = left.ns.popen([sys.executable, "-c", SENDER, right.ip4, "60"])
        # rich sizes its output from COLUMNS/LINES when set (pytest's may be): use the pane's.
        tmux = Tmux(["env", "-u", "COLUMNS", "-u", "LINES", "TERM=xterm-256color",
                     *right.ns.cmd(*agent_command(), "top", "--interfaces", right.ifname,
                                   "--direction", "ingress")])
        try:
            yield pair, tmux
        finally:
            tmux.kill()
            for proc in (sender, sink):
                proc.kill()
                proc.wait(10)


def test_top_shows_the_busiest_flow_first_and_keys_change_the_sort(
    scene: tuple[Pair, Tmux]
) -> None:
    pair, tmux = scene
    a, b = f"{pair.left.ip4}:41001", f"{pair.left.ip4}:41002"
    destination = f"{pair.right.ip4}:5001"

    lines = tmux.wait_for(lambda s: len(rows(s)) >= 2 and top_source(s) == b)
    assert "sort: bytes/s" in lines[0]
    first = rows(lines)[0]
    assert first[1:6] == [pair.right.ifname, "ingress", "UDP", b, destination]

    tmux.keys("p")
    lines = tmux.wait_for(lambda s: "sort: packets/s" in s[0] and top_source(s) == a)
    assert rows(lines)[1][4] == b

    tmux.keys("B")
    tmux.wait_for(lambda s: "sort: total bytes" in s[0] and top_source(s) == b)

    tmux.keys("/", "4", "1", "0", "0", "1", "Enter")
    lines = tmux.wait_for(lambda s: "filter: 41001" in s[0] and rows(s)
                          and {r[4] for r in rows(s)} == {a})
    assert "flows: 1 " in lines[0]

    tmux.keys("q")
    lines = tmux.wait_for(lambda s: any(line.startswith("EXITED") for line in s))
    assert "EXITED 0" in lines
