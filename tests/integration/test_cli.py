"""``flowkit-agent`` as users run it: real processes, the synthetic tracer, exact flow counts.

The synthetic tracer needs no privileges; these tests are integration tests because they run
the installed command in subprocesses and deliver signals to it.
"""

from __future__ import annotations

import ipaddress
import json
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fk_cli_helpers import SYNTHETIC, AgentProcess, agent_command, clean_env, run

import flowkit
from flowkit.config import settings_table
from flowkit.plugins import PluginManager
from flowkit.synthetic import SYNTHETIC_IFNAME, synthetic_flow_key

pytestmark = pytest.mark.integration

NETOBSERV_INT_KEYS = (
    "Etype", "FlowDirection", "SrcPort", "DstPort", "Proto", "Bytes", "Packets",
    "TimeFlowStart", "TimeFlowEnd", "TimeFlowStartMs", "TimeFlowEndMs", "Flags", "IcmpType",
    "IcmpCode", "Dscp", "Sampling",
)
NETOBSERV_STR_KEYS = ("SrcMac", "DstMac", "SrcAddr", "DstAddr", "Interface")
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def expected_packets(records: int, flows: int = 8) -> Counter[tuple[str, str, int]]:
    totals: Counter[tuple[str, str, int]] = Counter()
    for n in range(records):
        key: dict[str, Any] = synthetic_flow_key(n % flows)
        totals[(str(key["src_ip"]), str(key["dst_ip"]), int(key["proto"]))] += 1
    return totals


def packets_by_flow(flows: list[dict[str, Any]]) -> Counter[tuple[str, str, int]]:
    totals: Counter[tuple[str, str, int]] = Counter()
    for f in flows:
        totals[(f["SrcAddr"], f["DstAddr"], f["Proto"])] += f["Packets"]
    return totals


def run_to_completion(records: int, args: tuple[str, ...] = (), **settings: str) -> AgentProcess:
    """Run until ``records`` synthetic packets are printed, then SIGTERM; must exit 0."""
    env = clean_env(SYNTHETIC, SYNTHETIC_MAX_RECORDS=str(records), SYNTHETIC_RATE="0",
                    CACHE_ACTIVE_TIMEOUT="100ms", **settings)
    with AgentProcess(args, env) as agent:
        agent.wait_for_packets(records)
        assert agent.stop() == 0, "".join(agent.stderr_lines)
    return agent


# -- informational commands --------------------------------------------------------------------


def test_version_prints_the_installed_version() -> None:
    result = run(["--version"], clean_env())
    assert result.returncode == 0
    assert result.stdout.strip() == f"flowkit-agent {flowkit.__version__}"


def test_help_lists_every_setting_and_the_commands() -> None:
    result = run(["--help"], clean_env())
    assert result.returncode == 0
    for info in settings_table(PluginManager(disabled=())).values():
        assert info.flag in result.stdout, info.flag
    for command in ("plugins", "check", "inspect"):
        assert command in result.stdout
    assert "flags > environment > file > defaults" in " ".join(result.stdout.split())


def test_plugins_prints_every_distribution_and_component_as_json() -> None:
    result = run(["plugins"], clean_env())
    assert result.returncode == 0, result.stderr
    described = json.loads(result.stdout)
    by_dist = {entry["distribution"]: entry for entry in described}
    own = by_dist["flowkit-ebpf"]
    assert own["version"] == flowkit.__version__
    assert set(own["components"]) == {"informer", "tracer", "accounter", "exporter"}
    names = {kind: {c["name"] for c in comps} for kind, comps in own["components"].items()}
    assert {"poll"} <= names["informer"]
    assert {"synthetic"} <= names["tracer"]
    assert {"python"} <= names["accounter"]
    assert {"stdout"} <= names["exporter"]
    assert {"stdout", "python-accounter", "synthetic", "poll"} <= set(own["plugins"])
    for entry in described:
        for comps in entry["components"].values():
            for component in comps:
                assert set(component) == {"name", "description"}
                assert component["description"]


# -- precedence --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "env", "file", "expected"),
    [("7", "5", "3", 7), (None, "5", "3", 5), (None, None, "3", 3), (None, None, None, 0)],
    ids=["flag-wins", "env-beats-file", "file-beats-default", "default"],
)
def test_precedence_is_flags_then_environment_then_file_then_defaults(
    tmp_path: Path, flag: str | None, env: str | None, file: str | None, expected: int
) -> None:
    # SAMPLING (core) and SYNTHETIC_PACKET_BYTES (a plugin's) show in every flow printed.
    args: list[str] = []
    settings: dict[str, str] = {}
    if file:
        config = tmp_path / "flowkit.yaml"
        config.write_text(f"sampling: {file}\nsynthetic_packet_bytes: {file}0\n")
        args += ["--config", str(config)]
    if env:
        settings.update(SAMPLING=env, SYNTHETIC_PACKET_BYTES=f"{env}0")
    if flag:
        args += [f"--sampling={flag}", "--synthetic-packet-bytes", f"{flag}0"]
    agent = run_to_completion(8, tuple(args), **settings)
    assert {f["Sampling"] for f in agent.flows} == {expected}
    assert {f["Bytes"] // f["Packets"] for f in agent.flows} == {expected * 10 or 100}


# -- configuration errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {"SAMPLING": "abc"}, "invalid setting SAMPLING='abc': .*valid integer"),
        (["--direction", "sideways"], {},
         "invalid setting DIRECTION='sideways': .*'both', 'ingress' or 'egress'"),
        ([], {"CACHE_ACTIVE_TIMEOUT": "5parsecs"},
         "invalid setting CACHE_ACTIVE_TIMEOUT='5parsecs': .*500ms, 5s or 1m30s"),
        (["--cache-max-flows=0"], {}, "invalid setting CACHE_MAX_FLOWS='0': .*greater than 0"),
        ([], {"METRICS_ENABLE": "maybe"},
         "invalid setting METRICS_ENABLE='maybe': .*true or false"),
        ([], {"METRICS_SERVER_PORT": "70000"},
         "invalid setting METRICS_SERVER_PORT='70000': .*less than or equal to 65535"),
        ([], {"INTERFACES": "/([/"}, "invalid setting INTERFACES='/\\(\\[/': .*regular expression"),
        ([], {"INTERFACE_IPS": "198.18.0.0/33"},
         "invalid setting INTERFACE_IPS='198.18.0.0/33': .*198.18.0.0/15 or fd00::/8"),
        ([], {"AGENT_IP": "agent"}, "invalid setting AGENT_IP='agent': .*not an IP address"),
        ([], {"LOG_LEVEL": "loud"}, "invalid setting LOG_LEVEL='loud': .*'debug', 'info'"),
        ([], {"EXPORT": "carrier-pigeon"},
         "invalid setting EXPORT='carrier-pigeon': unknown exporter .*available: .*stdout"),
        ([], {"EXPORT": ""}, "invalid setting EXPORT='': at least one exporter"),
        (["--tracer", "nope"], {}, "invalid setting TRACER='nope': .*available: .*synthetic"),
        ([], {"ACCOUNTER": "nope"}, "invalid setting ACCOUNTER='nope': .*available: .*python"),
        ([], {"LISTEN_INTERFACES": "nope"},
         "invalid setting LISTEN_INTERFACES='nope': .*available: .*poll"),
        ([], {"SYNTHETIC_RATE": "-1"},
         "invalid setting SYNTHETIC_RATE='-1': .*greater than or equal to 0"),
        ([], {"DEDUPER": "lastCome"},
         "invalid setting DEDUPER='lastCome': .*'none' or 'firstCome'"),
        ([], {"NETWORK_NAMESPACES": "/([/"},
         "invalid setting NETWORK_NAMESPACES='/\\(\\[/': .*regular expression"),
        ([], {"NETWORK_NAMESPACES": "blue"},
         "invalid settings: NETWORK_NAMESPACES needs LISTEN_INTERFACES=watch"),
        (["--no-such-flag"], {},
         "unrecognized arguments: --no-such-flag; see flowkit-agent --help"),
        (["--sampling"], {}, "argument --sampling: expected one argument"),
        (["--config", "/nonexistent/flowkit.yaml"], {},
         "cannot read config file /nonexistent/flowkit.yaml: No such file or directory"),
    ],
    ids=lambda v: None if isinstance(v, list | dict) else v.split(":", 1)[0][:40],
)
def test_a_bad_setting_exits_2_with_one_line_before_anything_starts(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    result = run(args, clean_env(SYNTHETIC, **{"SYNTHETIC_RATE": "0", **env}))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert re.fullmatch(f"flowkit-agent: {expected}.*", lines[0]), lines[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sampling: [1\n", "is not valid YAML"),
        ("- sampling\n", "must be a mapping of setting: value"),
        ("warp_speed: 9\n", "unknown key 'warp_speed' in config file"),
        ("direction: up\n", "invalid setting DIRECTION='up'"),
    ],
)
def test_a_bad_config_file_exits_2_with_a_clear_message(
    tmp_path: Path, text: str, expected: str
) -> None:
    config = tmp_path / "flowkit.yaml"
    config.write_text(text)
    result = run(["--config", str(config)], clean_env(SYNTHETIC))
    assert result.returncode == 2
    assert result.stdout == ""
    assert expected in result.stderr
    assert result.stderr.startswith("flowkit-agent: ")


# -- running and stopping ----------------------------------------------------------------------


def test_sigterm_exits_0_after_printing_every_flow_produced_before_it() -> None:
    agent = run_to_completion(200)
    assert agent.packets == 200
    assert packets_by_flow(agent.flows) == expected_packets(200)
    records = agent.log_records()
    assert any("flowkit agent stopped" in r.get("msg", "") for r in records)
    assert not [r for r in records if r.get("level") in ("error", "critical")]


def test_sigterm_exports_the_flows_not_evicted_yet() -> None:
    # Nothing is evicted before the signal: the final drain must print all of it.
    env = clean_env(SYNTHETIC, SYNTHETIC_MAX_RECORDS="120", SYNTHETIC_RATE="0",
                    CACHE_ACTIVE_TIMEOUT="1h")
    with AgentProcess([], env) as agent:
        agent.wait_for_log("flowkit agent started")
        assert agent.flows == []
        assert agent.stop(signal.SIGTERM) == 0
    assert packets_by_flow(agent.flows) == expected_packets(120)


def test_sigint_stops_as_orderly_as_sigterm() -> None:
    env = clean_env(SYNTHETIC, SYNTHETIC_MAX_RECORDS="40", SYNTHETIC_RATE="0",
                    CACHE_ACTIVE_TIMEOUT="1h")
    with AgentProcess([], env) as agent:
        agent.wait_for_log("flowkit agent started")
        assert agent.stop(signal.SIGINT) == 0
    assert agent.packets == 40


def test_a_closed_stdout_ends_the_agent_quietly() -> None:
    # The equivalent of `flowkit-agent | head -n 3`, with an endless stream of flows.
    env = clean_env(SYNTHETIC, SYNTHETIC_RATE="0", CACHE_ACTIVE_TIMEOUT="50ms")
    proc = subprocess.Popen(agent_command(), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        head = [proc.stdout.readline() for _ in range(3)]
        proc.stdout.close()
        status = proc.wait(30)
        stderr = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert all(json.loads(line)["Packets"] > 0 for line in head)
    assert status == 0, stderr
    assert "Traceback" not in stderr
    assert "BrokenPipe" not in stderr
    assert "Exception ignored" not in stderr
    levels = {json.loads(line)["level"] for line in stderr.splitlines()}
    assert levels <= {"info"}, stderr


def test_a_shell_pipeline_into_head_ends_with_status_0() -> None:
    command = " ".join(agent_command()) + " | head -n 2; echo \"status=${PIPESTATUS[0]}\""
    env = clean_env(SYNTHETIC, SYNTHETIC_RATE="0", CACHE_ACTIVE_TIMEOUT="50ms")
    result = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True,
                            timeout=60)
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert lines[-1] == "status=0"
    assert "Traceback" not in result.stderr


# -- the JSON on stdout ------------------------------------------------------------------------


def test_stdout_json_has_every_netobserv_key_with_the_right_types_and_values() -> None:
    before_ms = time.time_ns() // 1_000_000
    agent = run_to_completion(30, SYNTHETIC_FLOWS="3", SYNTHETIC_PACKET_BYTES="64",
                              SAMPLING="1", AGENT_IP="198.18.0.254")
    after_ms = time.time_ns() // 1_000_000
    assert agent.flows

    expected_by_src: dict[str, dict[str, Any]] = {
        str(synthetic_flow_key(i)["src_ip"]): synthetic_flow_key(i) for i in range(3)
    }
    for flow in agent.flows:
        assert set(flow) == {*NETOBSERV_INT_KEYS, *NETOBSERV_STR_KEYS, "AgentIP"}
        for key in NETOBSERV_INT_KEYS:
            assert type(flow[key]) is int, key
        for key in NETOBSERV_STR_KEYS:
            assert type(flow[key]) is str, key
        want = expected_by_src[flow["SrcAddr"]]
        assert flow["Etype"] == 0x0800
        assert flow["FlowDirection"] == want["direction"]
        assert flow["FlowDirection"] in (0, 1)
        assert MAC.match(flow["SrcMac"])
        assert MAC.match(flow["DstMac"])
        assert flow["SrcMac"] == ":".join(f"{b:02x}" for b in want["src_mac"])
        assert flow["DstMac"] == ":".join(f"{b:02x}" for b in want["dst_mac"])
        assert isinstance(ipaddress.ip_address(flow["SrcAddr"]), ipaddress.IPv4Address)
        assert flow["DstAddr"] == str(want["dst_ip"])
        assert (flow["SrcPort"], flow["DstPort"], flow["Proto"]) == (
            want["src_port"], want["dst_port"], want["proto"]
        )
        assert (flow["Flags"], flow["IcmpType"], flow["IcmpCode"]) == (
            want["flags"], want["icmp_type"], want["icmp_code"]
        )
        assert flow["Bytes"] == 64 * flow["Packets"]
        assert flow["Interface"] == SYNTHETIC_IFNAME
        assert before_ms <= flow["TimeFlowStartMs"] <= flow["TimeFlowEndMs"] <= after_ms
        assert flow["TimeFlowStart"] == flow["TimeFlowStartMs"] // 1000
        assert flow["TimeFlowEnd"] == flow["TimeFlowEndMs"] // 1000
        assert flow["Dscp"] == 0
        assert flow["Sampling"] == 1
        assert flow["AgentIP"] == "198.18.0.254"
    assert packets_by_flow(agent.flows) == expected_packets(30, flows=3)


def test_agent_ip_is_absent_unless_configured() -> None:
    agent = run_to_completion(8)
    assert all("AgentIP" not in flow for flow in agent.flows)


def test_every_stdout_line_is_one_json_object() -> None:
    agent = run_to_completion(16)
    assert len(agent.stdout_lines) == len(agent.flows)
    for line in agent.stdout_lines:
        assert line.endswith("\n")
        assert line.count("\n") == 1
        assert isinstance(json.loads(line), dict)
