"""Network namespaces and veth pairs for integration tests.

Everything created here is named with a per-process prefix (``fk<pid>``, see :func:`unique`)
and deleted by name when its context manager exits, also when the test fails. Addresses come
only from 198.18.0.0/15 and fd00::/8; traffic stays between namespaces the test created.

Typical use::

    with Pair.create(prefix="fkB") as pair:          # two namespaces joined by a veth pair
        pair.left.run("ping", "-c1", pair.right_ip4)
        agent = pair.right.popen(["flowkit-agent"], env=...)

or the ``netns_pair`` fixture (tests/integration/conftest.py re-exports it).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

_counter = itertools.count()

IPV4_NET = "198.18"
IPV6_NET = "fd00"


def unique(prefix: str = "fk") -> str:
    """A short name unique to this process: ``<prefix><pid % 10000><n>`` (fits IFNAMSIZ)."""
    name = f"{prefix}{os.getpid() % 10000}{next(_counter)}"
    if len(name) > 12:
        raise ValueError(f"name prefix {prefix!r} too long for interface names")
    return name


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing output; raise with its stderr if it fails and ``check``."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def have_root() -> bool:
    """True when the tests may create namespaces and load eBPF programs."""
    return os.geteuid() == 0 and shutil.which("ip") is not None


@dataclass
class Namespace:
    """A network namespace created (and deleted) by the test."""

    name: str

    @classmethod
    @contextlib.contextmanager
    def create(cls, name: str | None = None) -> Iterator[Namespace]:
        """Create a namespace with ``lo`` up; delete it (and its interfaces) on exit."""
        ns = cls(name or unique("fkn"))
        sh("ip", "netns", "add", ns.name)
        try:
            ns.ip("link", "set", "lo", "up")
            yield ns
        finally:
            ns.delete()

    def delete(self) -> None:
        """Kill processes still running in the namespace, then delete it. Idempotent."""
        pids = sh("ip", "netns", "pids", self.name, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        sh("ip", "netns", "delete", self.name, check=False)

    def cmd(self, *args: str) -> list[str]:
        """``args`` prefixed to run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def run(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace."""
        return sh(*self.cmd(*args), check=check, timeout=timeout)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``ip -n <ns> args``."""
        return sh("ip", "-n", self.name, *args, check=check)

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process inside the namespace (the caller stops it)."""
        return subprocess.Popen(self.cmd(*args), **kwargs)

    def sysctl(self, key: str, value: str) -> None:
        """Set a sysctl inside the namespace."""
        self.run("sysctl", "-qw", f"{key}={value}")

    def ifindex(self, ifname: str) -> int:
        """Index of ``ifname`` inside the namespace."""
        return int(json.loads(self.ip("-j", "link", "show", "dev", ifname).stdout)[0]["ifindex"])

    def link_stats(self, ifname: str) -> dict[str, dict[str, int]]:
        """``{"rx": {...}, "tx": {...}}`` counters of ``ifname`` (packets, bytes, dropped...)."""
        info = json.loads(self.ip("-s", "-j", "link", "show", "dev", ifname).stdout)[0]
        stats = info["stats64"]
        return {"rx": dict(stats["rx"]), "tx": dict(stats["tx"])}

    def tc_filters(self, ifname: str) -> str:
        """``tc filter show`` output for both clsact hooks of ``ifname`` ("" when none)."""
        out = []
        for hook in ("ingress", "egress"):
            proc = self.run("tc", "filter", "show", "dev", ifname, hook, check=False)
            out.append(proc.stdout)
        return "".join(out)

    def qdiscs(self, ifname: str) -> str:
        """``tc qdisc show`` output for ``ifname``."""
        return self.run("tc", "qdisc", "show", "dev", ifname).stdout


@dataclass
class Endpoint:
    """One end of a veth pair: namespace, interface name, MAC and addresses."""

    ns: Namespace
    ifname: str
    mac: str
    ip4: str
    ip6: str

    @property
    def ifindex(self) -> int:
        """Interface index inside its namespace."""
        return self.ns.ifindex(self.ifname)


def quiet_ipv6(ns: Namespace, ifname: str) -> None:
    """Make an interface send as little IPv6 background traffic as possible (no DAD, no RS)."""
    for key, value in (("accept_dad", "0"), ("dad_transmits", "0"), ("router_solicitations", "0"),
                       ("accept_ra", "0")):
        ns.sysctl(f"net.ipv6.conf.{ifname}.{key}", value)


def add_veth(
    left: Namespace,
    right: Namespace,
    left_name: str,
    right_name: str,
    subnet: int = 0,
    host: tuple[int, int] = (1, 2),
    offload: bool = True,
    index: int | tuple[int, int] | None = None,
) -> tuple[Endpoint, Endpoint]:
    """A veth pair between two namespaces, up, with static MACs, 198.18.<subnet>.<host>/24 and
    fd00::<subnet>:<host>/64 (nodad) addresses and permanent neighbour entries (no ARP/ND).

    ``offload=False`` turns off TSO/GSO/GRO so that every skb is one wire packet; ``index``
    gives both ends that interface index (each in its own namespace), or (left, right) indexes.
    """
    pair = (index, index) if isinstance(index, int) else index
    at_left = ("index", str(pair[0])) if pair else ()
    at_right = ("index", str(pair[1])) if pair else ()
    sh("ip", "link", "add", left_name, *at_left, "netns", left.name, "type", "veth", "peer",
       "name", right_name, *at_right, "netns", right.name)
    ends = []
    for ns, name, h in ((left, left_name, host[0]), (right, right_name, host[1])):
        mac = f"02:fb:{subnet // 256:02x}:{subnet % 256:02x}:00:{h:02x}"
        ns.ip("link", "set", "dev", name, "address", mac)
        # Before the link comes up, so that no router solicitation or DAD probe is sent.
        ns.sysctl(f"net.ipv6.conf.{name}.accept_dad", "0")
        ns.sysctl(f"net.ipv6.conf.{name}.router_solicitations", "0")
        ns.sysctl(f"net.ipv6.conf.{name}.accept_ra", "0")
        ip4 = f"{IPV4_NET}.{subnet}.{h}"
        ip6 = str(ipaddress.IPv6Address(f"{IPV6_NET}::{subnet:x}:{h:x}"))
        ns.ip("addr", "add", f"{ip4}/24", "dev", name)
        ns.ip("addr", "add", f"{ip6}/64", "dev", name, "nodad")
        if not offload:
            ns.run("ethtool", "-K", name, "tso", "off", "gso", "off", "gro", "off", check=False)
        ends.append(Endpoint(ns, name, mac, ip4, ip6))
    a, b = ends
    for me, peer in ((a, b), (b, a)):
        me.ns.ip("neigh", "replace", peer.ip4, "lladdr", peer.mac, "dev", me.ifname, "nud",
                 "permanent")
        me.ns.ip("neigh", "replace", peer.ip6, "lladdr", peer.mac, "dev", me.ifname, "nud",
                 "permanent")
    for e in ends:
        e.ns.ip("link", "set", "dev", e.ifname, "up")
    return a, b


@dataclass
class Pair:
    """Two namespaces joined by one veth pair (``left.ifname`` <-> ``right.ifname``)."""

    left: Endpoint
    right: Endpoint
    namespaces: list[Namespace] = field(default_factory=list)

    @classmethod
    @contextlib.contextmanager
    def create(cls, prefix: str = "fk", offload: bool = True) -> Iterator[Pair]:
        """Create the namespaces and the veth pair; delete everything on exit."""
        base = unique(prefix)
        with Namespace.create(f"{base}L") as left_ns, Namespace.create(f"{base}R") as right_ns:
            left, right = add_veth(left_ns, right_ns, f"{base}l", f"{base}r", offload=offload)
            yield cls(left, right, [left_ns, right_ns])


@contextlib.contextmanager
def veth_in(ns: Namespace, count: int, prefix: str) -> Iterator[list[str]]:
    """``count`` veth pairs inside ``ns`` (``<prefix><i>a``/``b``), deleted on exit."""
    names = []
    try:
        for i in range(count):
            name = f"{prefix}{i}"
            ns.ip("link", "add", f"{name}a", "type", "veth", "peer", "name", f"{name}b")
            names.append(name)
        yield names
    finally:
        for name in names:
            ns.ip("link", "del", f"{name}a", check=False)


# -- flowkit-agent as a subprocess ------------------------------------------------------------
def agent_command() -> list[str]:
    """The ``flowkit-agent`` of the running interpreter's environment."""
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("flowkit-agent")
    return [str(exe)] if exe.exists() else ["flowkit-agent"]


class AgentRun:
    """``flowkit-agent`` (stdout exporter) running inside a namespace.

    Flows printed on stdout are collected in :attr:`flows`; log lines in :attr:`log`. Use as a
    context manager: the agent is stopped with SIGTERM on exit (SIGKILL if it hangs).
    """

    def __init__(self, ns: Namespace, env: dict[str, str] | None = None,
                 args: Sequence[str] = (), taskset: str | None = None) -> None:
        import threading

        base = {"EXPORT": "stdout", "TRACER": "ebpf", "ACCOUNTER": "native",
                "LISTEN_INTERFACES": "watch", "CACHE_ACTIVE_TIMEOUT": "1s", "LOG_LEVEL": "info"}
        full_env = {**os.environ, **base, **(env or {})}
        cmd = [*agent_command(), *args]
        if taskset:
            cmd = ["taskset", "-c", taskset, *cmd]
        self.ns = ns
        self.flows: list[dict[str, Any]] = []
        self.log: list[str] = []
        self._cond = threading.Condition()
        self.proc = ns.popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, bufsize=1)
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read(self, stream: Any, flows: bool) -> None:
        for line in stream:
            with self._cond:
                if flows:
                    with contextlib.suppress(ValueError):
                        self.flows.append(json.loads(line))
                else:
                    self.log.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_log(self, text: str, timeout: float = 30) -> str:
        """Wait for a log line containing ``text`` (raise with the log if the agent exits)."""
        import time

        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.log:
                    if text in line:
                        return line
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"agent log never said {text!r} (exit {self.proc.poll()}):\n"
                        + "\n".join(self.log[-40:])
                    )
                self._cond.wait(0.2)

    def wait_traced(self, ifname: str, timeout: float = 30) -> None:
        """Wait until the agent traces ``ifname``."""
        self.wait_log(f"tracing interface {ifname} ", timeout)

    def stop(self, sig: int = 15, timeout: float = 30) -> int:
        """Send ``sig``, wait for exit and for the output readers; return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for t in self._threads:
            t.join(10)
        return self.proc.returncode

    def __enter__(self) -> AgentRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def flow_totals(flows: Sequence[dict[str, Any]], **match: Any) -> tuple[int, int]:
    """(packets, bytes) summed over flows whose JSON keys equal ``match``."""
    packets = nbytes = 0
    for f in flows:
        if all(f.get(k) == v for k, v in match.items()):
            packets += f["Packets"]
            nbytes += f["Bytes"]
    return packets, nbytes


def merged(flows: Sequence[dict[str, Any]], **match: Any) -> dict[str, Any]:
    """The flows matching ``match`` merged into one (packets/bytes summed, flags OR-ed)."""
    out: dict[str, Any] = {}
    for f in flows:
        if not all(f.get(k) == v for k, v in match.items()):
            continue
        if not out:
            out = dict(f)
            continue
        out["Packets"] += f["Packets"]
        out["Bytes"] += f["Bytes"]
        out["Flags"] |= f["Flags"]
    return out
