"""Interfaces of named network namespaces are named alike by every encoder.

Topology: the agent runs in namespace H with NETWORK_NAMESPACES=/^<base>[AB]$/; a veth pair
joins A and B, and both ends have the interface index 7, as has a veth in H itself: three
interfaces share one index, and only the namespace tells them apart. The agent exports to
stdout, to IPFIX over UDP and to OTLP over HTTP (receivers on 127.0.0.1 inside H); A sends UDP
to B. Every exporter must name A's end ``<A>/<left>`` and B's end ``<B>/<right>``, as the stdout
(NetObserv JSON) encoder does, never H's own interface that has the same index. ``flowkit-agent
top`` is checked the same way, with a router namespace in between so that two interfaces of
index 7 see the same datagrams in the same direction.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

try:
    from .netns import AgentRun, Namespace, add_veth, agent_command, flow_totals, unique
except ImportError:
    from netns import (  # type: ignore[no-redef]
        AgentRun,
        Namespace,
        add_veth,
        agent_command,
        flow_totals,
        unique,
    )

pytest.importorskip("ipfix")
pytest.importorskip("opentelemetry.proto")
pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
TRAFFIC = str(HERE / "traffic.py")
COLLECTOR = str(HERE / "ipfix_collector.py")
INDEX = 7
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def made_in(ns: Namespace, make: Callable[[], T]) -> T:
    """``make()`` run on a thread that entered ``ns``: the sockets it creates live there."""
    out: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/var/run/netns/{ns.name}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {ns.name}")
            finally:
                os.close(fd)
            out.append(make())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if errors:
        raise errors[0]
    return out[0]


class UdpSink:
    """Keeps every datagram that arrives on ``sock`` (IPFIX messages)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.port = int(sock.getsockname()[1])
        self.datagrams: list[bytes] = []
        sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                self.datagrams.append(self.sock.recv(65535))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def ipfix_records(datagrams: list[bytes]) -> list[dict[str, Any]]:
    """The data records of the messages, decoded by the PyPI ``ipfix`` package."""
    result = subprocess.run([sys.executable, COLLECTOR, "decode-udp"], check=True, text=True,
                            input="".join(d.hex() + "\n" for d in datagrams),
                            capture_output=True, timeout=60)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    return [r for r in records if "sourceTransportPort" in r]


def otlp_records(bodies: list[bytes]) -> list[dict[str, Any]]:
    """The attributes of every OTLP log record posted to /v1/logs."""
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
    from test_otlp_exporter import attributes

    out = []
    for body in bodies:
        request = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
        for resource in request.resource_logs:
            for scope in resource.scope_logs:
                out.extend(attributes(record.attributes) for record in scope.log_records)
    return out


@pytest.fixture
def three_namespaces() -> Iterator[tuple[Namespace, Namespace, Namespace, str]]:
    base = unique("fkN")
    with Namespace.create(f"{base}H") as home, Namespace.create(f"{base}A") as a, \
            Namespace.create(f"{base}B") as b:
        yield home, a, b, base


def test_ipfix_and_otlp_name_namespaced_interfaces_as_stdout_does(
    three_namespaces: tuple[Namespace, Namespace, Namespace, str],
) -> None:
    from test_otlp_exporter import _HttpReceiver

    home, a, b, base = three_namespaces
    home.ip("link", "add", f"{base}d", "index", str(INDEX), "type", "veth", "peer", "name",
            f"{base}e", "index", str(INDEX + 1))
    for name in (f"{base}d", f"{base}e"):
        home.ip("link", "set", name, "up")
    left, right = add_veth(a, b, f"{base}l", f"{base}r", subnet=79, index=INDEX)
    assert a.ifindex(left.ifname) == b.ifindex(right.ifname) == home.ifindex(f"{base}d")
    a_name, b_name = f"{a.name}/{left.ifname}", f"{b.name}/{right.ifname}"

    def bound_udp() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        return sock

    ipfix_sink = UdpSink(made_in(home, bound_udp))
    otlp = made_in(home, _HttpReceiver)
    env = {"NETWORK_NAMESPACES": f"/^{base}[AB]$/", "EXPORT": "stdout,ipfix+udp,otlp",
           "TARGET_HOST": "127.0.0.1", "TARGET_PORT": str(ipfix_sink.port),
           "OTLP_ENDPOINT": f"http://127.0.0.1:{otlp.server_address[1]}",
           "OTLP_PROTOCOL": "http/protobuf"}
    try:
        with AgentRun(home, env) as agent:
            agent.wait_traced(a_name)
            agent.wait_traced(b_name)
            agent.wait_traced(f"{base}d")
            sent = json.loads(a.run(sys.executable, TRAFFIC, "udp-send", right.ip4, "5353",
                                    "40000", "25", "100").stdout.splitlines()[-1])
            assert sent == {"sent": 25}
            deadline = time.monotonic() + 20
            while flow_totals(agent.flows, SrcPort=40000)[0] < 50 and \
                    time.monotonic() < deadline:
                time.sleep(0.2)
            assert agent.stop() == 0, "\n".join(agent.log[-20:])
        time.sleep(0.5)  # the last datagrams and requests are in
    finally:
        ipfix_sink.close()
        otlp.shutdown()

    # Ground truth: the stdout (NetObserv JSON) encoder, egress at A's end, ingress at B's.
    printed = {(f["FlowDirection"], f["Interface"]) for f in agent.flows
               if f["SrcPort"] == 40000}
    assert printed == {(1, a_name), (0, b_name)}
    assert flow_totals(agent.flows, SrcPort=40000)[0] == 50

    ipfix = {(r["flowDirection"], r["interfaceName"]) for r in ipfix_records(ipfix_sink.datagrams)
             if r["sourceTransportPort"] == 40000}
    assert ipfix == printed

    bodies = [body for path, _headers, body in otlp.requests if path == "/v1/logs"]
    otlp_names = {(r["network.io.direction"], r["network.interface.name"])
                  for r in otlp_records(bodies) if r["source.port"] == 40000}
    assert otlp_names == {("transmit", a_name), ("receive", b_name)}


def test_top_keeps_equal_indexes_of_two_namespaces_apart() -> None:
    """R routes from A to B; R's end towards A and B's end both have index 7, and both see A's
    datagrams entering. ``top --direction ingress`` in H must show two rows, one per interface,
    each named ``<namespace>/<interface>`` (a board keyed by index alone merged them into one
    row under one name)."""
    from test_top import Tmux, rows

    base = unique("fkT")
    with Namespace.create(f"{base}H") as home, Namespace.create(f"{base}A") as a, \
            Namespace.create(f"{base}R") as r, Namespace.create(f"{base}B") as b:
        _left, r_in = add_veth(a, r, f"{base}a", f"{base}i", subnet=80, index=(INDEX + 1, INDEX))
        _r_out, right = add_veth(r, b, f"{base}o", f"{base}b", subnet=81,
                                 index=(INDEX + 2, INDEX))
        assert r.ifindex(r_in.ifname) == b.ifindex(right.ifname) == INDEX
        r.sysctl("net.ipv4.ip_forward", "1")
        a.ip("route", "add", "198.18.81.0/24", "via", r_in.ip4)
        b.ip("route", "add", "198.18.80.0/24", "via", _r_out.ip4)
        names = (f"{r.name}/{r_in.ifname}", f"{b.name}/{right.ifname}")
        tmux = Tmux(["env", "-u", "COLUMNS", "-u", "LINES", "TERM=xterm-256color",
                     f"NETWORK_NAMESPACES=/^{base}[ARB]$/", "CACHE_ACTIVE_TIMEOUT=1s",
                     *home.cmd(*agent_command(), "top", "--direction", "ingress")])
        try:
            def shown(lines: list[str], port: str) -> set[str]:
                return {cells[1] for cells in rows(lines) if f":{port}" in " ".join(cells)}

            # Warm-up datagrams until both interfaces are traced (each shows a row).
            tmux.wait_for(lambda lines: any("flowkit top" in line for line in lines))
            deadline = time.monotonic() + 30
            while shown(tmux.screen(), "40006") != set(names):
                assert time.monotonic() < deadline, "\n".join(tmux.screen())
                a.run(sys.executable, TRAFFIC, "udp-send", right.ip4, "5353", "40006", "1",
                      "100")
                time.sleep(0.5)
            sent = json.loads(a.run(sys.executable, TRAFFIC, "udp-send", right.ip4, "5353",
                                    "40007", "30", "100").stdout.splitlines()[-1])
            assert sent == {"sent": 30}

            screen = tmux.wait_for(lambda lines: shown(lines, "40007") == set(names) and all(
                cells[-1] == "30" for cells in rows(lines) if ":40007" in " ".join(cells)),
                timeout=30)
        finally:
            tmux.kill()
    table = [cells for cells in rows(screen) if ":40007" in " ".join(cells)]
    assert sorted(cells[1] for cells in table) == sorted(names)
    assert all(cells[2] == "ingress" and cells[-1] == "30" for cells in table), table
