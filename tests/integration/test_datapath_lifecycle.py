"""Attach/detach life cycle: stale filters of a killed agent, interface churn, selection,
sampling."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from pathlib import Path

try:
    from .netns import AgentRun, Namespace, Pair, flow_totals, sh, veth_in
except ImportError:
    from netns import (  # type: ignore[no-redef]
        AgentRun,
        Namespace,
        Pair,
        flow_totals,
        sh,
        veth_in,
    )

TRAFFIC = str(Path(__file__).with_name("traffic.py"))


def flowkit_filter_ids(ns: Namespace, ifname: str) -> set[str]:
    """Program ids of the flowkit tc filters on ``ifname``."""
    return set(re.findall(r"flowkit_\w+:\[(\d+)\]", ns.tc_filters(ifname)))


def test_sigkill_leaves_filters_that_the_next_start_removes() -> None:
    with Pair.create("fkB") as pair:
        right = pair.right
        env = {"TC_ATTACH_MODE": "tc", "INTERFACES": right.ifname}
        first = AgentRun(right.ns, env)
        first.wait_traced(right.ifname)
        first.stop(sig=9)
        stale = flowkit_filter_ids(right.ns, right.ifname)
        assert len(stale) == 2  # what a killed agent leaves: its ingress and egress filters
        with AgentRun(right.ns, env) as second:
            second.wait_traced(right.ifname)
            current = flowkit_filter_ids(right.ns, right.ifname)
            assert len(current) == 2
            assert not current & stale
            assert second.stop() == 0
        assert flowkit_filter_ids(right.ns, right.ifname) == set()


def _program_ids(pid: int) -> set[int]:
    """Ids of the BPF programs process ``pid`` holds."""
    ids = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        with contextlib.suppress(OSError):
            if m := re.search(r"^prog_id:\s+(\d+)", info.read_text(), re.MULTILINE):
                ids.add(int(m.group(1)))
    return ids


def _links_of(programs: set[int]) -> set[int]:
    links = json.loads(sh("bpftool", "-j", "link", "show").stdout or "[]")
    return {link["id"] for link in links if link.get("prog_id") in programs}


def test_sigkill_in_tcx_mode_leaves_no_link() -> None:
    with Pair.create("fkB") as pair:
        right = pair.right
        agent = AgentRun(right.ns, {"TC_ATTACH_MODE": "tcx", "INTERFACES": right.ifname})
        agent.wait_traced(right.ifname)
        programs = _program_ids(agent.proc.pid)
        assert len(_links_of(programs)) == 2
        agent.stop(sig=9)
        deadline = time.monotonic() + 10
        while _links_of(programs) and time.monotonic() < deadline:
            time.sleep(0.1)  # the kernel releases links once the killed process is reaped
        assert not _links_of(programs)


def _fd_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _churn(agent: AgentRun, ns: Namespace, prefix: str, pairs: int) -> None:
    with veth_in(ns, pairs, prefix) as names:
        for name in names:
            for end in "ab":
                agent.wait_traced(f"{name}{end}")
    for name in names:
        for end in "ab":
            agent.wait_log(f"stopped tracing interface {name}{end} ")


def test_interface_churn_traces_every_new_veth_and_returns_to_baseline() -> None:
    with Namespace.create() as ns:
        prefix = "c" + ns.name[3:]
        env = {"INTERFACES": f"/^{prefix}/"}
        with AgentRun(ns, env) as agent:
            agent.wait_log("flowkit agent started")
            pid = agent.proc.pid
            _churn(agent, ns, f"{prefix}w", 20)  # warm-up: imports, caches, pools
            fds, rss = _fd_count(pid), _rss_kb(pid)
            _churn(agent, ns, f"{prefix}x", 200)
            assert _fd_count(pid) == fds
            assert _rss_kb(pid) < rss + 8 * 1024
            assert not [line for line in ns.run("tc", "filter", "show").stdout.splitlines()
                        if "flowkit" in line]
            traced = [line for line in agent.log if "tracing interface" in line
                      and "stopped" not in line]
            assert len(traced) == 2 * (20 + 200)
            assert agent.stop() == 0


def test_interfaces_and_exclude_interfaces_select_the_traced_veths() -> None:
    with Namespace.create() as ns, veth_in(ns, 3, "fkBs") as names:
        env = {"INTERFACES": "/^fkBs/", "EXCLUDE_INTERFACES": f"{names[1]}a,/b$/"}
        with AgentRun(ns, env) as agent:
            agent.wait_log("flowkit agent started")
            # Interfaces are reported in order: once one created after the start is traced,
            # every existing one has been considered.
            with veth_in(ns, 1, "fkBsz") as late:
                agent.wait_traced(f"{late[0]}a")
            traced = {m.group(1) for line in agent.log
                      if (m := re.search(r"tracing interface (\S+) ", line))}
            assert traced == {f"{names[0]}a", f"{names[2]}a", "fkBsz0a"}
            assert agent.stop() == 0


def test_sampling_keeps_about_one_packet_in_n_and_records_n() -> None:
    sent = 8000
    with Pair.create("fkB") as pair:
        left, right = pair.left, pair.right
        with AgentRun(right.ns, {"SAMPLING": "4", "INTERFACES": right.ifname}) as agent:
            agent.wait_traced(right.ifname)
            left.ns.run(sys.executable, TRAFFIC, "udp-send", right.ip4, "5009", "40009",
                        str(sent), "10")
            assert agent.stop() == 0
        ours = [f for f in agent.flows if f["DstPort"] == 5009 and f["FlowDirection"] == 0]
        assert ours
        assert {f["Sampling"] for f in ours} == {4}
        packets, _ = flow_totals(ours)
        # Binomial(8000, 1/4): mean 2000, standard deviation 39; 8 deviations never fail.
        assert abs(packets - sent / 4) < 8 * 39
