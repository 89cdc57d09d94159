"""Nothing is lost under load: every packet trafgen sends is in an exported flow.

trafgen runs in namespace L on one core and sends on L's end of the veth; the agent traces R's
end on the other core and drains every second (CACHE_ACTIVE_TIMEOUT=1s).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

try:
    from .netns import AgentRun, Endpoint, Pair, flow_totals
except ImportError:
    from netns import AgentRun, Endpoint, Pair, flow_totals  # type: ignore[no-redef]

FRAME = 60  # trafgen frames below: 14 + 20 + 8 + 18


def trafgen_config(path: Path, left: Endpoint, right: Endpoint, dport: int,
                   distinct_sports: int = 0) -> Path:
    sport = f"dinc(10000, {10000 + distinct_sports - 1})" if distinct_sports else "40000"
    path.write_text(
        f"{{ eth(da={right.mac}, sa={left.mac}), "
        f"ipv4(saddr={left.ip4}, daddr={right.ip4}, ttl=64), "
        f"udp(sport={sport}, dport={dport}), fill(0x00, 18) }}\n"
    )
    return path


def run_trafgen(left: Endpoint, config: Path, *, seconds: float = 0, count: int = 0) -> int:
    """Send with one trafgen worker (trafgen pins it to CPU 0); return the packets it sent."""
    args = ["trafgen", "--dev", left.ifname, "--conf", str(config), "--cpus", "1", "--qdisc-path"]
    if count:
        args += ["-n", str(count)]
    cmd = left.ns.cmd(*args)
    if seconds:
        cmd = ["timeout", "-s", "INT", str(seconds), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    match = re.search(r"(\d+) packets outgoing", proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    return int(match.group(1))


def drops(pair: Pair) -> int:
    """Packets the veth pair dropped between trafgen and R's ingress hook."""
    return (pair.left.ns.link_stats(pair.left.ifname)["tx"]["dropped"]
            + pair.right.ns.link_stats(pair.right.ifname)["rx"]["dropped"])


def test_ten_seconds_at_full_rate_lose_nothing(tmp_path: Path) -> None:
    with Pair.create("fkB") as pair:
        config = trafgen_config(tmp_path / "load.cfg", pair.left, pair.right, 7777)
        with AgentRun(pair.right.ns, {"INTERFACES": pair.right.ifname}, taskset="0") as agent:
            agent.wait_traced(pair.right.ifname)
            dropped_before = drops(pair)
            sent = run_trafgen(pair.left, config, seconds=10)
            dropped = drops(pair) - dropped_before
            assert agent.stop() == 0
        packets, nbytes = flow_totals(agent.flows, DstPort=7777, Proto=17, FlowDirection=0)
        assert sent > 100_000
        assert packets == sent - dropped
        assert nbytes == packets * FRAME
        # Drains ran while the traffic flowed: the flow was exported several times.
        assert len([f for f in agent.flows if f["DstPort"] == 7777]) >= 5


@pytest.mark.parametrize("mode", ["tcx", "tc"])
def test_a_full_flow_map_spills_to_the_ring_buffer_without_loss(tmp_path: Path,
                                                                mode: str) -> None:
    flows = 5000
    with Pair.create("fkB") as pair:
        config = trafgen_config(tmp_path / "many.cfg", pair.left, pair.right, 7778, flows)
        env = {"INTERFACES": pair.right.ifname, "CACHE_MAX_FLOWS": "64", "TC_ATTACH_MODE": mode}
        with AgentRun(pair.right.ns, env) as agent:
            agent.wait_traced(pair.right.ifname)
            dropped_before = drops(pair)
            sent = run_trafgen(pair.left, config, count=flows)
            dropped = drops(pair) - dropped_before
            assert agent.stop() == 0
        assert (sent, dropped) == (flows, 0)
        ours = [f for f in agent.flows if f["DstPort"] == 7778 and f["FlowDirection"] == 0]
        assert sum(f["Packets"] for f in ours) == flows
        assert sum(f["Bytes"] for f in ours) == flows * FRAME
        assert {f["SrcPort"] for f in ours} == set(range(10000, 10000 + flows))
