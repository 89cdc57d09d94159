"""Bad input at start: one clear line, the right exit status, no traceback, nothing attached.

Every case runs the installed ``flowkit-agent`` with the real eBPF tracer in ``tc`` mode inside a
namespace the test creates, told to trace a veth there, and then checks what a user would: the
exit status, that standard error is exactly one line naming the problem (no traceback), that
nothing was printed on standard output, and that no clsact qdisc or flowkit filter was left on
the interface. Bad configuration exits 2 before anything is attached.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

try:
    from .netns import Namespace, Pair, agent_command
except ImportError:
    from netns import Namespace, Pair, agent_command  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

_KEPT = ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV")


@pytest.fixture(scope="module")
def veth() -> Iterator[tuple[Namespace, str]]:
    """A namespace holding one end of a veth pair, and that end's name."""
    with Pair.create("fkB") as pair:
        yield pair.right.ns, pair.right.ifname


def start(ns: Namespace, ifname: str, env: dict[str, str | bytes], args: Sequence[str] = (),
          shell_prefix: str = "") -> subprocess.CompletedProcess[str]:
    """Run the agent to completion inside ``ns`` (each case ends by itself)."""
    full: dict[str, str | bytes] = {k: v for k, v in os.environ.items() if k in _KEPT}
    full.update({"EXPORT": "stdout", "TRACER": "ebpf", "ACCOUNTER": "native",
                 "LISTEN_INTERFACES": "watch", "TC_ATTACH_MODE": "tc", "INTERFACES": ifname,
                 "LOG_LEVEL": "info"})
    full.update(env)
    command = [*agent_command(), *args]
    if shell_prefix:
        command = ["bash", "-c", f'exec "$@" {shell_prefix}', "agent", *command]
    return subprocess.run(ns.cmd(*command), env=full, capture_output=True, text=True,
                          timeout=60)


def check_one_line(proc: subprocess.CompletedProcess[str], status: int, pattern: str,
                   ns: Namespace, ifname: str) -> str:
    """The exit status, exactly one line matching ``pattern``, no output, nothing attached."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == status, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert re.fullmatch(f"flowkit-agent: {pattern}", lines[0]), lines[0]
    assert proc.stdout == ""
    assert re.findall(r"flowkit_\w+", ns.tc_filters(ifname)) == []
    assert "clsact" not in ns.qdiscs(ifname)
    return lines[0]


# -- break 3: failures that used to be tracebacks ------------------------------------------------


def test_a_metrics_port_already_in_use_is_one_line(veth: tuple[Namespace, str]) -> None:
    ns, ifname = veth
    holder = ns.popen([sys.executable, "-c",
                       "import socket, sys, time\n"
                       "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
                       "print(s.getsockname()[1], flush=True); time.sleep(120)\n"],
                      stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        port = holder.stdout.readline().strip()
        proc = start(ns, ifname, {"METRICS_ENABLE": "true", "METRICS_SERVER_ADDRESS": "127.0.0.1",
                                  "METRICS_SERVER_PORT": port})
    finally:
        holder.kill()
        holder.wait(10)
    check_one_line(proc, 2, "invalid settings METRICS_SERVER_ADDRESS/METRICS_SERVER_PORT: "
                   f"cannot serve metrics on 127.0.0.1:{port}: Address already in use", ns, ifname)


def test_an_unresolvable_metrics_address_is_one_line(veth: tuple[Namespace, str]) -> None:
    # The namespace has no route out: the lookup fails without a packet leaving it.
    ns, ifname = veth
    proc = start(ns, ifname, {"METRICS_ENABLE": "true",
                              "METRICS_SERVER_ADDRESS": "no-such-host.invalid",
                              "METRICS_SERVER_PORT": "0"})
    check_one_line(proc, 2, "invalid settings METRICS_SERVER_ADDRESS/METRICS_SERVER_PORT: "
                   "cannot serve metrics on no-such-host.invalid:0: .+", ns, ifname)


def test_a_config_file_that_is_not_utf8_is_one_line(veth: tuple[Namespace, str],
                                                    tmp_path: Path) -> None:
    ns, ifname = veth
    config = tmp_path / "flowkit.yaml"
    config.write_bytes(b"sampling: 1\nagent_ip: \xff\xfe\n")
    proc = start(ns, ifname, {}, ["--config", str(config)])
    check_one_line(proc, 2, f"config file {re.escape(str(config))} is not UTF-8 text "
                   r"\(byte 22: invalid start byte\)", ns, ifname)


@pytest.mark.parametrize("text", [
    "sampling: " + "[" * 5000 + "]" * 5000 + "\n",
    "sampling:\n" + "".join("  " * depth + "k:\n" for depth in range(1, 3000)),
], ids=["flow", "block"])
def test_a_deeply_nested_config_file_is_one_line(veth: tuple[Namespace, str], tmp_path: Path,
                                                 text: str) -> None:
    ns, ifname = veth
    config = tmp_path / "flowkit.yaml"
    config.write_text(text)
    proc = start(ns, ifname, {}, ["--config", str(config)])
    check_one_line(proc, 2, f"config file {re.escape(str(config))} is nested too deeply; "
                   "settings are one level of key: value", ns, ifname)


def test_stdout_closed_at_start_is_one_line_and_unwinds(veth: tuple[Namespace, str]) -> None:
    ns, ifname = veth
    proc = start(ns, ifname, {}, shell_prefix=">&-")
    check_one_line(proc, 1, 'cannot start exporter "stdout" .*standard output is closed', ns,
                   ifname)


@pytest.mark.parametrize("command", ["plugins", "check"])
def test_a_command_that_prints_says_stdout_is_closed(veth: tuple[Namespace, str],
                                                     command: str) -> None:
    ns, ifname = veth
    proc = start(ns, ifname, {}, [command], shell_prefix=">&-")
    check_one_line(proc, 1, f"{command}: standard output is closed; nothing to print to", ns,
                   ifname)


# -- break 2: a failure inside the kernel at start ------------------------------------------------


def test_a_map_the_kernel_refuses_is_one_line_and_unwinds(veth: tuple[Namespace, str]) -> None:
    # With the memory limit lifted, 2^31 flows pass flowkit's own checks; the kernel refuses
    # the hash map (E2BIG: its bucket array would not fit) before allocating anything, after
    # the exporter was built and the maps before it in the object were created.
    ns, ifname = veth
    proc = start(ns, ifname, {"CACHE_MAX_FLOWS": str(1 << 31),
                              "EBPF_MEMORY_LIMIT": str(1 << 50)})
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "cannot join thread" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[-1].startswith("flowkit-agent: cannot start: "), lines
    assert "flows_a" in lines[-1], lines[-1]
    assert "Argument list too long" in lines[-1], lines[-1]
    assert len(lines) == 2, lines  # the start log line (memory of the maps), then the error
    assert "of kernel memory for the eBPF maps" in lines[0]
    assert proc.stdout == ""
    assert re.findall(r"flowkit_\w+", ns.tc_filters(ifname)) == []
    assert "clsact" not in ns.qdiscs(ifname)


# -- break 4: settings that used to be accepted and then misbehave ------------------------------


def _not_pem(tmp_path: Path) -> str:
    path = tmp_path / "ca.der"
    path.write_bytes(b"\x30\x82\x01\x0a\x02\x82\x01\x01\x00")  # the start of a DER certificate
    return str(path)


@pytest.mark.parametrize(("env", "pattern"), [
    ({"EXPORT": "stdout,stdout"}, "invalid setting EXPORT: 'stdout' is listed twice"),
    ({"CACHE_ACTIVE_TIMEOUT": "inf"},
     "invalid setting CACHE_ACTIVE_TIMEOUT='inf': 'inf' is not a finite duration; .*"),
    ({"CACHE_ACTIVE_TIMEOUT": "1000000000h"},
     "invalid setting CACHE_ACTIVE_TIMEOUT='1000000000h': must be at most 1h"),
    ({"CACHE_ACTIVE_TIMEOUT": "nan"}, "invalid setting CACHE_ACTIVE_TIMEOUT='nan': .*"),
    ({"SHUTDOWN_TIMEOUT": "1e308s"}, "invalid setting SHUTDOWN_TIMEOUT=.*"),
    ({"EXPORT": "kafka", "KAFKA_BROKERS": "::::"},
     r"invalid settings: KAFKA_BROKERS: '::::' is not host:port \(write an IPv6 address as "
     r"\[addr\]:port\)"),
    ({"INTERFACES": b"eth\xff\xfe"},
     r"invalid setting INTERFACES=b'eth\\xff\\xfe': not UTF-8 text \(byte 3\)"),
], ids=["stdout-twice", "timeout-inf", "timeout-huge", "timeout-nan",
        "shutdown-huge", "kafka-colons", "interfaces-not-utf8"])
def test_a_setting_accepted_before_but_wrong_exits_2_before_attaching(
    veth: tuple[Namespace, str], env: dict[str, str | bytes], pattern: str
) -> None:
    ns, ifname = veth
    check_one_line(start(ns, ifname, env), 2, pattern, ns, ifname)


@pytest.mark.parametrize(("exporter", "setting", "extra"), [
    ("grpc", "TARGET_TLS_CA_CERT_PATH", {"TARGET_HOST": "198.18.0.1", "TARGET_PORT": "9999"}),
    ("kafka", "KAFKA_TLS_CA_CERT_PATH", {"KAFKA_BROKERS": "198.18.0.1:9092",
                                         "KAFKA_ENABLE_TLS": "true"}),
    ("otlp", "OTLP_TLS_CA_CERT_PATH", {"OTLP_ENDPOINT": "198.18.0.1:4317"}),
])
def test_a_ca_file_that_is_not_pem_exits_2_before_attaching(
    veth: tuple[Namespace, str], tmp_path: Path, exporter: str, setting: str,
    extra: dict[str, str]
) -> None:
    ns, ifname = veth
    ca = _not_pem(tmp_path)
    proc = start(ns, ifname, {"EXPORT": exporter, setting: ca, **extra})
    check_one_line(proc, 2, f"invalid settings?:? .*{setting}.* {re.escape(ca)} is not a PEM "
                   r"certificate \(no '-----BEGIN CERTIFICATE-----' line\)", ns, ifname)
