"""NETWORK_NAMESPACES: interfaces of named namespaces created while the agent runs are traced.

Topology: the agent runs in namespace H with NETWORK_NAMESPACES=/^<base>[AB]$/. After it has
started, the test creates namespaces A and B (``ip netns add``) and then a veth pair between
them; both ends must be traced, named ``<namespace>/<interface>``, with exact counts. Deleting
the namespaces must release everything the agent held for them: its file descriptors (TCX links,
netlink sockets, namespace fds) go back to the count before they existed, so nothing keeps the
deleted namespaces alive.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

try:
    from .netns import AgentRun, Namespace, add_veth, flow_totals, sh, unique
except ImportError:
    from netns import (  # type: ignore[no-redef]
        AgentRun,
        Namespace,
        add_veth,
        flow_totals,
        sh,
        unique,
    )

TRAFFIC = str(Path(__file__).with_name("traffic.py"))
ETH_IP_UDP4 = 14 + 20 + 8


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_for(predicate: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("mode", ["tcx", "tc"])
def test_veths_in_namespaces_created_after_start_are_traced_and_released(mode: str) -> None:
    base = unique("fkq")
    with Namespace.create(f"{base}H") as home:
        env = {"NETWORK_NAMESPACES": f"/^{base}[AB]$/", "TC_ATTACH_MODE": mode}
        with AgentRun(home, env) as agent:
            agent.wait_log("flowkit agent started")
            time.sleep(1.0)  # the informer's first look at /var/run/netns is done
            pid = agent.proc.pid
            baseline = fd_count(pid)
            a, b = Namespace(f"{base}A"), Namespace(f"{base}B")
            try:
                sh("ip", "netns", "add", a.name)
                sh("ip", "netns", "add", b.name)
                agent.wait_log(f"watching network namespace {a.name}")
                agent.wait_log(f"watching network namespace {b.name}")
                left, right = add_veth(a, b, f"{base}l", f"{base}r", subnet=77)
                agent.wait_traced(f"{a.name}/{left.ifname}")
                agent.wait_traced(f"{b.name}/{right.ifname}")
                sent = json.loads(a.run(sys.executable, TRAFFIC, "udp-send", right.ip4, "5353",
                                        "40000", "25", "100").stdout.splitlines()[-1])
                assert sent == {"sent": 25}
                frame = ETH_IP_UDP4 + 100
                assert wait_for(lambda: flow_totals(
                    agent.flows, Interface=f"{a.name}/{left.ifname}", SrcPort=40000,
                    DstPort=5353)[0] >= 25)
                time.sleep(1.5)  # one more eviction: nothing late
                assert flow_totals(agent.flows, Interface=f"{a.name}/{left.ifname}",
                                   SrcPort=40000, DstPort=5353, FlowDirection=1) == (25, 25 * frame)
                assert flow_totals(agent.flows, Interface=f"{b.name}/{right.ifname}",
                                   SrcPort=40000, DstPort=5353, FlowDirection=0) == (25, 25 * frame)
                # The same flow was not attributed to any interface of the agent's namespace.
                assert flow_totals(agent.flows, SrcPort=40000, DstPort=5353) == (50, 50 * frame)
                assert fd_count(pid) > baseline
            finally:
                a.delete()
                b.delete()
            agent.wait_log(f"stopped tracing interface {a.name}/{left.ifname}")
            agent.wait_log(f"stopped tracing interface {b.name}/{right.ifname}")
            agent.wait_log(f"network namespace {b.name} is gone")
            assert wait_for(lambda: fd_count(pid) == baseline), (fd_count(pid), baseline)
            held = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            assert not [h for h in held if h.startswith("net:")], held
            assert agent.proc.poll() is None
        assert agent.proc.returncode == 0, "\n".join(agent.log[-20:])
