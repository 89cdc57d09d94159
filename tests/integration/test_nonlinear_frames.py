"""Frames whose headers are not in the linear area, as trafgen sends them, on real veths.

trafgen (AF_PACKET TX ring) builds skbs that carry only the Ethernet header in the linear area;
the IP and transport headers sit in page fragments. The program pulls those headers into the
linear area (IPv4 and IPv6) or copies them (VLAN-tagged frames on the sending side, frames
shorter than its header window). One agent traces the sending end's egress, another the
receiving end's ingress; every frame must be counted exactly once on each, with its addresses,
ports, TCP flags and byte count.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from netns import AgentRun, Endpoint, Pair, merged

pytestmark = pytest.mark.integration

ETH, VLAN_TAG, IPV4, IPV6, UDP, TCP = 14, 4, 20, 40, 8, 20


def send(left: Endpoint, config: Path, count: int) -> None:
    """Send ``count`` frames of ``config`` with trafgen (one process, TX ring, through the qdisc
    layer so that the egress hook sees them: trafgen bypasses it by default)."""
    proc = subprocess.run(
        left.ns.cmd("trafgen", "--dev", left.ifname, "--conf", str(config), "--cpus", "1",
                    "--qdisc-path", "-n", str(count)),
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(r"(\d+) packets outgoing", proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    assert int(match.group(1)) == count, proc.stdout + proc.stderr


def test_nonlinear_frames_are_counted_exactly_on_egress_and_ingress(tmp_path: Path) -> None:
    with Pair.create("fkN") as pair:
        left, right = pair.left, pair.right
        eth = f"eth(da={right.mac}, sa={left.mac})"
        v4 = f"ipv4(saddr={left.ip4}, daddr={right.ip4}, ttl=64)"
        v6 = f"ipv6(saddr={left.ip6}, daddr={right.ip6}, hoplimit=64)"
        # (source port, config, frames, length on the wire, IP version)
        cases = [
            (41001, f"{{ {eth}, {v4}, udp(sport=41001, dport=7001), fill(0x00, 18) }}",
             300, ETH + IPV4 + UDP + 18, 4),
            (41002, f"{{ {eth}, {v4}, tcp(sport=41002, dport=7002, syn) }}",
             200, ETH + IPV4 + TCP, 4),
            (41003, f"{{ {eth}, {v6}, udp(sport=41003, dport=7003), fill(0x00, 10) }}",
             250, ETH + IPV6 + UDP + 10, 6),
            (41004, f"{{ {eth}, {v6}, tcp(sport=41004, dport=7004, syn) }}",
             120, ETH + IPV6 + TCP, 6),
            # A VLAN tag: the sending side copies the headers; the receiving side sees the
            # frame untagged (the tag moves to the skb's metadata before the TC hook).
            (41005, f"{{ {eth}, vlan(id=100), {v4}, udp(sport=41005, dport=7005), "
                    "fill(0x00, 18) }", 150, ETH + VLAN_TAG + IPV4 + UDP + 18, 4),
            # Shorter than the header window: copied, not pulled.
            (41006, f"{{ {eth}, {v4}, udp(sport=41006, dport=7006) }}",
             100, ETH + IPV4 + UDP, 4),
        ]
        sender = AgentRun(left.ns, {"INTERFACES": left.ifname, "DIRECTION": "egress"})
        receiver = AgentRun(right.ns, {"INTERFACES": right.ifname, "DIRECTION": "ingress"})
        with sender, receiver:
            sender.wait_traced(left.ifname)
            receiver.wait_traced(right.ifname)
            for sport, config, count, _, _ in cases:
                path = tmp_path / f"{sport}.cfg"
                path.write_text(config + "\n")
                send(left, path, count)
            assert sender.stop() == 0
            assert receiver.stop() == 0

        for sport, _, count, length, version in cases:
            src, dst = (left.ip4, right.ip4) if version == 4 else (left.ip6, right.ip6)
            tagged = sport == 41005
            for agent, direction, ifname, frame in (
                (sender, 1, left.ifname, length),
                (receiver, 0, right.ifname, length - VLAN_TAG if tagged else length),
            ):
                flow = merged(agent.flows, SrcPort=sport, FlowDirection=direction)
                where = f"port {sport} on {ifname}"
                assert flow, f"{where}: no flow"
                assert (flow["Packets"], flow["Bytes"]) == (count, count * frame), where
                assert (flow["SrcAddr"], flow["DstAddr"]) == (src, dst), where
                assert flow["DstPort"] == sport - 41000 + 7000, where
                assert flow["Interface"] == ifname, where
                assert flow["Etype"] == (0x0800 if version == 4 else 0x86DD), where
                assert flow["SrcMac"].lower() == left.mac, where
                if sport in (41002, 41004):
                    assert flow["Proto"] == 6, where
                    assert flow["Flags"] == 0x02, where
                else:
                    assert flow["Proto"] == 17, where
