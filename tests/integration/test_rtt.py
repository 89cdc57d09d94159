"""ENABLE_RTT on a path with a known delay.

This kernel has no sch_netem, so the delay is built here: namespaces A and B each hold one tap
device, and a relay thread in the test process (which keeps both tap file descriptors) copies
every frame from one tap to the other DELAY seconds after reading it. A TCP transfer from A to B
then sees a round-trip time of 2 * DELAY plus a little processing time; ``flowkit-agent`` in A
traces A's tap and must report it on the flow of B's acknowledgements.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import json
import os
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

try:
    from .netns import AgentRun, Namespace, sh, unique
except ImportError:
    from netns import AgentRun, Namespace, sh, unique  # type: ignore[no-redef]

TRAFFIC = str(Path(__file__).with_name("traffic.py"))
DELAY = 0.02  # seconds, each way
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000


def open_tap(name: str, ns: Namespace, mac: str, ip4: str) -> int:
    """A tap device moved into ``ns`` (up, addressed); returns its queue's file descriptor."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    sh("ip", "link", "set", name, "netns", ns.name)
    ns.ip("link", "set", "dev", name, "address", mac)
    ns.sysctl(f"net.ipv6.conf.{name}.disable_ipv6", "1")
    ns.ip("addr", "add", f"{ip4}/24", "dev", name)
    ns.ip("link", "set", "dev", name, "up")
    return fd


class DelayRelay:
    """Copies frames between two tap fds, each DELAY seconds after it was read."""

    def __init__(self, fd_a: int, fd_b: int, delay: float) -> None:
        self.peer = {fd_a: fd_b, fd_b: fd_a}
        self.delay = delay
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        pending: list[tuple[float, int, int, bytes]] = []
        sequence = 0
        while not self.stop.is_set():
            timeout = 0.05
            if pending:
                timeout = max(0.0, min(timeout, pending[0][0] - time.monotonic()))
            ready, _, _ = select.select(list(self.peer), [], [], timeout)
            now = time.monotonic()
            for fd in ready:
                with contextlib.suppress(BlockingIOError):
                    while True:
                        frame = os.read(fd, 65536)
                        heapq.heappush(pending, (now + self.delay, sequence, self.peer[fd], frame))
                        sequence += 1
            while pending and pending[0][0] <= time.monotonic():
                _, _, out, frame = heapq.heappop(pending)
                with contextlib.suppress(OSError):
                    os.write(out, frame)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@contextlib.contextmanager
def delayed_path() -> Iterator[tuple[Namespace, Namespace, str]]:
    base = unique("fkT")
    with Namespace.create(f"{base}A") as a, Namespace.create(f"{base}B") as b:
        tap_a, tap_b = f"{base}a", f"{base}b"
        fds = [open_tap(tap_a, a, "02:fb:00:03:00:01", "198.18.3.1"),
               open_tap(tap_b, b, "02:fb:00:03:00:02", "198.18.3.2")]
        a.ip("neigh", "replace", "198.18.3.2", "lladdr", "02:fb:00:03:00:02", "dev", tap_a,
             "nud", "permanent")
        b.ip("neigh", "replace", "198.18.3.1", "lladdr", "02:fb:00:03:00:01", "dev", tap_b,
             "nud", "permanent")
        relay = DelayRelay(fds[0], fds[1], DELAY)
        try:
            yield a, b, tap_a
        finally:
            relay.close()
            for fd in fds:
                os.close(fd)  # the taps go away with their last fd


def test_rtt_of_a_tcp_transfer_matches_the_path_delay() -> None:
    with delayed_path() as (a, b, tap_a):
        sink = b.popen([sys.executable, TRAFFIC, "tcp-sink", "5002"], stdout=subprocess.PIPE,
                       text=True)
        try:
            assert sink.stdout is not None
            assert sink.stdout.readline().strip() == '{"ready": true}'
            with AgentRun(a, {"INTERFACES": tap_a, "ENABLE_RTT": "true"}) as agent:
                agent.wait_traced(tap_a)
                a.run(sys.executable, TRAFFIC, "tcp-send", "198.18.3.2", "5002", "41020",
                      "200000")
                time.sleep(0.3)
                assert agent.stop() == 0
        finally:
            sink.kill()
            sink.wait(10)
    acks = [f for f in agent.flows
            if f.get("SrcPort") == 5002 and f.get("DstPort") == 41020 and "TimeFlowRttNs" in f]
    assert acks, agent.flows
    rtt = max(f["TimeFlowRttNs"] for f in acks)
    assert 2 * DELAY * 1e9 <= rtt < (2 * DELAY + 0.05) * 1e9
    # The sender's data flow (egress) carries no RTT: it is measured on received segments.
    data = [f for f in agent.flows if f.get("SrcPort") == 41020 and f.get("DstPort") == 5002]
    assert data
    assert all("TimeFlowRttNs" not in f for f in data), json.dumps(data)
