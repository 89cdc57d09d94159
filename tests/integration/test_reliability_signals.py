"""What the agent says about itself: every situation a user must know of is one JSON log line.

Real agents, real namespaces, a real Kafka-protocol broker (Tansu): a broker that comes back is
logged as such; packets the kernel could not keep (flow map and ring buffer both full) are
logged, at most once per interval, with the count the metrics have; a ``tc`` start does not
print libbpf's "Exclusivity flag on" warning; a deprecated variable is warned about in JSON
like every other line; a filter that matches no interface is warned about.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

try:
    from .fk_cli_helpers import SYNTHETIC, AgentProcess, clean_env
    from .netns import AgentRun, Namespace, Pair, flow_totals
except ImportError:
    from fk_cli_helpers import SYNTHETIC, AgentProcess, clean_env  # type: ignore[no-redef]
    from netns import AgentRun, Namespace, Pair, flow_totals  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

TRAFFIC = str(Path(__file__).with_name("traffic.py"))


def json_lines(lines: list[str]) -> list[dict[str, Any]]:
    """Every line parsed as JSON: a line that is not JSON fails the test."""
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a log line is not JSON: {line!r}")
    return out


def messages(lines: list[str], text: str) -> list[dict[str, Any]]:
    return [r for r in json_lines(lines) if text in r.get("msg", "")]


# -- the Kafka exporter says when the broker is back ---------------------------------------------


def test_the_kafka_exporter_logs_that_the_broker_is_back(kafka_broker: Any) -> None:
    pytest.importorskip("confluent_kafka")
    kafka_broker.create_topic("fk-back")
    env = clean_env(SYNTHETIC, EXPORT="kafka", KAFKA_BROKERS=kafka_broker.bootstrap,
                    KAFKA_TOPIC="fk-back", KAFKA_ENCODING="json", SYNTHETIC_FLOWS="2",
                    SYNTHETIC_RATE="100", CACHE_ACTIVE_TIMEOUT="200ms")
    with AgentProcess([], env) as agent:
        agent.wait_for_log("flowkit agent started")
        assert kafka_broker.consume("fk-back", 2, settle=0)
        kafka_broker.stop()
        agent.wait_for_log("brokers are down")
        assert not [line for line in agent.stderr_lines if "reachable again" in line]
        kafka_broker.start()
        agent.wait_for_log("reachable again", timeout=60)
        assert agent.stop() == 0
    back = messages(agent.stderr_lines, "reachable again")
    assert len(back) == 1, back
    assert back[0]["level"] == "info"
    assert back[0]["msg"] == (f"kafka: brokers {kafka_broker.bootstrap} are reachable again; "
                              "delivering")
    down = [r for r in json_lines(agent.stderr_lines) if "brokers are down" in r["msg"]]
    assert all(r["level"] == "warning" for r in down)
    assert "Traceback" not in "".join(agent.stderr_lines)


# -- kernel ring-buffer loss is logged, rate-limited ---------------------------------------------


def _burst(left: Any, right: Any, agent: AgentRun, sport_base: int, flows: int) -> None:
    """``flows`` one-packet UDP flows into ``right`` while the agent cannot read the ring."""
    agent.proc.send_signal(signal.SIGSTOP)
    try:
        left.ns.run(sys.executable, TRAFFIC, "udp-many", right.ip4, str(sport_base), str(flows))
    finally:
        agent.proc.send_signal(signal.SIGCONT)


def test_packets_the_kernel_could_not_keep_are_logged_once_per_interval() -> None:
    """A one-flow map and a one-page ring buffer, with the agent frozen while 300 new flows
    arrive: the program keeps one in the map and a few dozen in the ring, the rest is lost,
    and the agent says so once it runs again. A second loss within the interval is not logged
    at once but at the stop: every lost packet is in a log line, and the lines' counts plus
    the packets exported are exactly what was sent."""
    sent = 300
    with Pair.create("fkL") as pair:
        left, right = pair.left, pair.right
        env = {"INTERFACES": right.ifname, "DIRECTION": "ingress", "CACHE_MAX_FLOWS": "1",
               "EBPF_RINGBUF_SIZE": str(os.sysconf("SC_PAGE_SIZE")),
               "CACHE_ACTIVE_TIMEOUT": "300ms"}
        with AgentRun(right.ns, env) as agent:
            agent.wait_traced(right.ifname)
            # Resolve the neighbour first: only the test's UDP packets cross during the bursts.
            left.ns.run("ping", "-c", "1", "-W", "2", right.ip4)
            _burst(left, right, agent, 20000, sent)
            agent.wait_log("packets lost since the start")
            _burst(left, right, agent, 30000, sent)  # more loss, within the same interval
            time.sleep(1.5)  # several evictions later
            assert len(messages(agent.log, "packets lost")) == 1  # rate-limited
            assert agent.stop() == 0
        kept, _ = flow_totals(agent.flows, SrcAddr=left.ip4, DstAddr=right.ip4, Proto=17)
    first, last = messages(agent.log, "packets lost")
    assert first["level"] == last["level"] == "warning"
    lost = [int(r["msg"].split(" ")[1]) for r in (first, last)]
    assert first["msg"].startswith(f"kernel: {lost[0]} packets lost since the start "
                                   f"({lost[0]} in all): the flow map (CACHE_MAX_FLOWS=1) and "
                                   "the ring buffer were both full; raise CACHE_MAX_FLOWS or "
                                   "EBPF_RINGBUF_SIZE"), first
    assert "packets lost in the last " in last["msg"]
    assert f"({sum(lost)} in all)" in last["msg"]
    assert 0 < lost[0] < sent
    assert 0 < lost[1] < sent
    assert kept + sum(lost) == 2 * sent


# -- a tc start prints no libbpf warning ---------------------------------------------------------


def test_a_tc_start_prints_no_exclusivity_warning_and_only_json() -> None:
    with Pair.create("fkX") as pair:
        right = pair.right
        env = {"INTERFACES": right.ifname, "TC_ATTACH_MODE": "tc"}
        with AgentRun(right.ns, env) as agent:
            agent.wait_traced(right.ifname)
            assert agent.stop() == 0
        assert "clsact" not in right.ns.qdiscs(right.ifname)
    records = json_lines(agent.log)
    assert not [r for r in records if "Exclusivity" in r["msg"]], records
    assert not [r for r in records if r["level"] in ("warning", "error", "critical")], records


# -- the deprecation warning is a JSON log line --------------------------------------------------


def test_a_deprecated_variable_is_warned_about_in_a_json_line() -> None:
    env = clean_env(SYNTHETIC, EXPORT="grpc", FLOWS_TARGET_HOST="127.0.0.1",
                    TARGET_PORT="9", SYNTHETIC_RATE="0", SYNTHETIC_MAX_RECORDS="1")
    with AgentProcess([], env) as agent:
        agent.wait_for_log("flowkit agent started")
        assert agent.stop() == 0
    records = json_lines(agent.stderr_lines)
    deprecated = [r for r in records if "deprecated" in r["msg"]]
    assert deprecated == [{**deprecated[0], "level": "warning",
                           "msg": "FLOWS_TARGET_HOST is deprecated; use TARGET_HOST"}]
    assert records[0] is deprecated[0]  # logged while the settings are read, before the start


# -- a filter that matches no interface is warned about ------------------------------------------


def test_a_filter_that_matches_no_interface_is_warned_about_until_one_appears() -> None:
    with Namespace.create() as ns:
        env = {"INTERFACES": "fkwant0", "EXCLUDE_INTERFACES": "lo"}
        with AgentRun(ns, env) as agent:
            line = agent.wait_log("no interface matches", timeout=30)
            ns.ip("link", "add", "fkwant0", "type", "veth", "peer", "name", "fkwant1")
            agent.wait_traced("fkwant0")
            assert agent.stop() == 0
    record = json.loads(line)
    assert record["level"] == "warning"
    assert record["msg"] == ("no interface matches INTERFACES=fkwant0 EXCLUDE_INTERFACES=lo: "
                             "nothing is traced until one appears")
    assert len(messages(agent.log, "no interface matches")) == 1
