"""``flowkit-agent`` with the ipfix exporters as a real process: bad settings, absent collectors.

The synthetic tracer produces a known number of flows without privileges; collectors are
absent on purpose (a free port on 127.0.0.1 nobody listens on).
"""

from __future__ import annotations

import ast
import json
import re
import socket
import time

import pytest

try:
    from .fk_cli_helpers import SYNTHETIC, AgentProcess, clean_env, run
except ImportError:
    from fk_cli_helpers import SYNTHETIC, AgentProcess, clean_env, run  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


def closed_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"EXPORT": "ipfix+sctp"}, "invalid setting EXPORT='ipfix\\+sctp': unknown exporter"),
        ({"EXPORT": "ipfix", "IPFIX_TRANSPORT": "sctp"}, "invalid setting IPFIX_TRANSPORT='sctp'"),
        ({"EXPORT": "ipfix+udp", "IPFIX_MTU": "150"},
         "invalid settings?: .*IPFIX_MTU=150 is too small for one IPFIX record"),
        ({"EXPORT": "ipfix+tcp", "IPFIX_TCP_MAX_MESSAGE": "100"},
         "invalid settings?: .*IPFIX_TCP_MAX_MESSAGE=100 is too small"),
        ({"EXPORT": "ipfix+udp", "IPFIX_OBSERVATION_DOMAIN_ID": "4294967296"},
         "invalid setting IPFIX_OBSERVATION_DOMAIN_ID='4294967296'"),
        ({"EXPORT": "ipfix+udp", "IPFIX_ENTERPRISE_NUMBER": "4294967296"},
         "invalid setting IPFIX_ENTERPRISE_NUMBER='4294967296'"),
        ({"EXPORT": "ipfix+udp", "IPFIX_ENTERPRISE_NUMBER": "32473", "IPFIX_MTU": "230"},
         "invalid settings?: .*IPFIX_MTU=230 is too small"),
        ({"EXPORT": "ipfix+udp", "TARGET_HOST": ""}, "invalid setting TARGET_HOST"),
        ({"EXPORT": "ipfix+tcp", "TARGET_PORT": ""}, "missing setting TARGET_PORT|invalid setting "
         "TARGET_PORT"),
    ],
    ids=lambda v: None if isinstance(v, dict) else v.split(" ")[2][:30],
)
def test_a_bad_ipfix_setting_exits_2_with_one_line(env: dict[str, str], expected: str) -> None:
    settings = {"TARGET_HOST": "127.0.0.1", "TARGET_PORT": "4739", **env}
    settings = {k: v for k, v in settings.items() if v != ""}
    if env.get("TARGET_HOST") == "":
        settings["TARGET_HOST"] = ""
    result = run([], clean_env(SYNTHETIC, SYNTHETIC_RATE="0", **settings))
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert re.match(f"flowkit-agent: ({expected})", lines[0]), lines[0]


def _stats(agent: AgentProcess) -> dict[str, float]:
    for record in agent.log_records():
        if record.get("msg", "").startswith("flowkit agent stopped: "):
            return dict(ast.literal_eval(record["msg"].split(": ", 1)[1]))
    raise AssertionError("no final statistics line")


def test_tcp_collector_down_buffers_bounded_counts_drops_and_logs_rarely() -> None:
    env = clean_env(
        SYNTHETIC, EXPORT="ipfix+tcp", TARGET_HOST="127.0.0.1",
        TARGET_PORT=str(closed_port(socket.SOCK_STREAM)), SYNTHETIC_FLOWS="50",
        SYNTHETIC_MAX_RECORDS="5000", SYNTHETIC_RATE="2000", CACHE_ACTIVE_TIMEOUT="200ms",
        IPFIX_BUFFER_MAX_FLOWS="100", IPFIX_RETRY_INITIAL_BACKOFF="20ms",
        IPFIX_RETRY_MAX_BACKOFF="100ms", SHUTDOWN_TIMEOUT="1s",
    )
    with AgentProcess([], env) as agent:
        time.sleep(3)  # ~30 connection attempts
        assert agent.stop() == 0
    stats = _stats(agent)
    assert stats["evicted_flows"] >= 200
    assert stats.get("ipfix_sent_flows", 0) == 0
    # Every evicted flow is counted: the buffer kept two batches of 50, later batches overflowed,
    # and the 100 kept were given up at shutdown.
    assert stats["dropped_flows"] == stats["evicted_flows"]
    assert stats["ipfix_send_errors"] >= 5
    errors = [r for r in agent.log_records() if "cannot connect" in r.get("msg", "")]
    assert 1 <= len(errors) <= 2, errors  # rate-limited: once, then at most every 30 s
    assert "Connection refused" in errors[0]["msg"]
    assert any("100 flows not delivered" in r.get("msg", "") for r in agent.log_records()), (
        agent.stderr_lines[-10:])
    assert any("buffer is full (IPFIX_BUFFER_MAX_FLOWS=100)" in r.get("msg", "")
               for r in agent.log_records())


def test_udp_collector_down_keeps_running_and_accounts_for_every_flow() -> None:
    env = clean_env(
        SYNTHETIC, EXPORT="ipfix+udp", TARGET_HOST="127.0.0.1",
        TARGET_PORT=str(closed_port(socket.SOCK_DGRAM)), SYNTHETIC_FLOWS="20",
        SYNTHETIC_MAX_RECORDS="2000", SYNTHETIC_RATE="2000", CACHE_ACTIVE_TIMEOUT="100ms",
    )
    with AgentProcess([], env) as agent:
        time.sleep(2.5)
        assert agent.proc.poll() is None
        assert agent.stop() == 0
    stats = _stats(agent)
    # UDP has no acknowledgements: a datagram the kernel took counts as sent; one it refused
    # (port unreachable reported) is tried again once, then dropped and counted.
    assert stats["evicted_flows"] > 0
    assert stats.get("ipfix_sent_flows", 0) + stats.get("dropped_flows", 0) == stats[
        "evicted_flows"
    ]
    assert stats["ipfix_send_errors"] >= 1
    problems = [r for r in agent.log_records() if "cannot send" in r.get("msg", "")]
    assert len(problems) <= 1
    assert json.dumps(problems)  # serialisable records, no tracebacks
    assert not any("Traceback" in line for line in agent.stderr_lines)
