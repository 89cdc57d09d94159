"""``flowkit-agent top``: a live terminal view of the busiest flows.

It runs the usual pipeline (any tracer: ``ebpf`` on live interfaces, ``replay`` on a capture)
with a batch listener instead of the exporters, keeps per-flow totals and the rate of the last
eviction period, and redraws a table in place with rich. Keys:

====== ==============================================
``b``  sort by bytes per second (default)
``p``  sort by packets per second
``B``  sort by total bytes
``P``  sort by total packets
``/``  type a filter, Enter to apply (empty: none)
``q``  quit (Ctrl-C too)
====== ==============================================

A filter is a list of words; a row is shown when every word appears in it (case-insensitive):
``tcp 198.18.0.2``, ``egress :5201``, ``eth0``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import select
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flowkit.model import FlowBatch

SORT_KEYS = {"b": "bytes_rate", "p": "packets_rate", "B": "bytes", "P": "packets"}
SORT_TITLES = {"bytes_rate": "bytes/s", "packets_rate": "packets/s", "bytes": "total bytes",
               "packets": "total packets"}
DIRECTIONS = ("ingress", "egress")


@dataclass
class FlowRow:
    """One flow's totals and its rate over the last eviction period."""

    interface: str
    direction: str
    protocol: str
    source: str
    destination: str
    bytes: int = 0
    packets: int = 0
    bytes_rate: float = 0.0
    packets_rate: float = 0.0
    seen: float = 0.0

    def text(self) -> str:
        """What a filter matches against."""
        return " ".join((self.interface, self.direction, self.protocol, self.source,
                         self.destination)).lower()


def _endpoint(address: str, port: int, with_port: bool) -> str:
    if not with_port:
        return address
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class FlowBoard:
    """Per-flow totals and rates fed by batches (thread-safe)."""

    def __init__(self, period: float, keep: float = 60.0) -> None:
        self.period = period
        self.keep = keep
        self._rows: dict[tuple[Any, ...], FlowRow] = {}
        self._lock = threading.Lock()
        self.batches = 0

    def add(self, batch: FlowBatch) -> None:
        """Fold one evicted batch into the board."""
        from flowkit.arrow import PROTOCOL_NAMES

        now = time.monotonic()
        window: dict[tuple[Any, ...], list[int]] = {}
        rows = []
        for flow in batch:
            ports = flow.proto in (6, 17, 132)
            # An interface is its index in its namespace (NETWORK_NAMESPACES): equal indexes
            # in two namespaces are two interfaces, as the encoders key their names.
            key = (flow.netns, flow.if_index, flow.direction, flow.proto, str(flow.src_ip),
                   flow.src_port, str(flow.dst_ip), flow.dst_port, flow.eth_protocol)
            rows.append((key, flow, ports))
            acc = window.setdefault(key, [0, 0])
            acc[0] += flow.bytes
            acc[1] += flow.packets
        with self._lock:
            self.batches += 1
            for row in self._rows.values():
                row.bytes_rate = row.packets_rate = 0.0
            for key, flow, ports in rows:
                found = self._rows.get(key)
                if found is None:
                    protocol = PROTOCOL_NAMES.get(flow.proto, str(flow.proto)) if flow.proto \
                        else f"0x{flow.eth_protocol:04x}"
                    row = FlowRow(flow.interface or str(flow.if_index),
                                  DIRECTIONS[flow.direction & 1], protocol,
                                  _endpoint(str(flow.src_ip), flow.src_port, ports),
                                  _endpoint(str(flow.dst_ip), flow.dst_port, ports))
                    self._rows[key] = row
                else:
                    row = found
                row.bytes += flow.bytes
                row.packets += flow.packets
                row.seen = now
            for key, (nbytes, npackets) in window.items():
                row = self._rows[key]
                row.bytes_rate = nbytes / self.period
                row.packets_rate = npackets / self.period
            for key in [k for k, r in self._rows.items() if now - r.seen > self.keep]:
                del self._rows[key]

    def top(self, sort: str, words: list[str], limit: int) -> tuple[list[FlowRow], int]:
        """The first ``limit`` rows by ``sort`` that match every word, and how many match."""
        with self._lock:
            rows = [r for r in self._rows.values()
                    if all(w in r.text() for w in words)]
        rows.sort(key=lambda r: (getattr(r, sort), r.bytes), reverse=True)
        return rows[:limit], len(rows)


def _human(value: float, unit: str = "") -> str:
    for prefix in ("", "k", "M", "G", "T"):
        if abs(value) < 1000 or prefix == "T":
            text = f"{value:.0f}" if prefix == "" else f"{value:.1f}"
            return f"{text} {prefix}{unit}".rstrip()
        value /= 1000
    return str(value)


class TopView:
    """The rich rendering and the keyboard handling of ``top``."""

    def __init__(self, board: FlowBoard, sort: str = "bytes_rate", words: str = "",
                 source: str = "") -> None:
        self.board = board
        self.sort = sort
        self.filter = words
        self.typing: str | None = None
        self.source = source
        self.quit = threading.Event()

    def key(self, char: str) -> None:
        """Handle one key press."""
        if self.typing is not None:
            if char in ("\r", "\n"):
                self.filter, self.typing = self.typing.strip(), None
            elif char == "\x1b":
                self.typing = None
            elif char in ("\x7f", "\b"):
                self.typing = self.typing[:-1]
            elif char.isprintable():
                self.typing += char
            return
        if char in SORT_KEYS:
            self.sort = SORT_KEYS[char]
        elif char == "/":
            self.typing = ""
        elif char in ("q", "\x03"):
            self.quit.set()

    def render(self, height: int) -> Any:
        """The screen: a header line and the table."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        rows, matching = self.board.top(self.sort, self.filter.lower().split(),
                                        max(1, height - 6))
        table = Table(expand=True, box=None, header_style="bold reverse", pad_edge=False)
        for title, justify in (("#", "right"), ("INTERFACE", "left"), ("DIR", "left"),
                               ("PROTO", "left"), ("SOURCE", "left"), ("DESTINATION", "left"),
                               ("BYTES/S", "right"), ("PKTS/S", "right"), ("BYTES", "right"),
                               ("PACKETS", "right")):
            table.add_column(title, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        for rank, row in enumerate(rows, 1):
            table.add_row(str(rank), row.interface, row.direction, row.protocol, row.source,
                          row.destination, _human(row.bytes_rate * 8, "b"),
                          _human(row.packets_rate), _human(row.bytes, "B"),
                          str(row.packets))
        prompt = f"filter: {self.typing}_" if self.typing is not None else (
            f"filter: {self.filter or '(none)'}")
        header = Text.assemble(
            ("flowkit top", "bold"), f"  {self.source}  sort: {SORT_TITLES[self.sort]}  ",
            prompt, f"  flows: {matching}  batches: {self.board.batches}", "\n",
            ("keys: b bytes/s  p packets/s  B bytes  P packets  / filter  q quit", "dim"),
        )
        return Group(header, table)


@contextlib.contextmanager
def _raw_terminal() -> Iterator[bool]:
    if not sys.stdin.isatty():
        yield False
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_top(argv: list[str]) -> int:
    """``flowkit-agent top [--sort KEY] [--filter WORDS] [agent settings...]``."""
    import flowkit
    from flowkit.cli import _fail, configure_logging, prepare_config
    from flowkit.privileges import PrivilegeError

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--sort", choices=list(SORT_TITLES), default="bytes_rate")
    parser.add_argument("--filter", default="")
    own, rest = parser.parse_known_args(argv)
    prepared = prepare_config(rest, prog="flowkit-agent top",
                              defaults={"cache_active_timeout": "1s"})
    if isinstance(prepared, int):
        return prepared
    # The terminal is the output: no stdout exporter under the table.
    pipeline = dataclasses.replace(
        prepared, exporters=tuple(e for e in prepared.exporters if e.name != "stdout"))
    config = pipeline.config
    configure_logging("error" if config.log_level in ("info", "debug", "trace")
                      else config.log_level)
    agent = flowkit.Agent(pipeline)
    board = FlowBoard(config.cache_active_timeout)
    agent.add_batch_listener(board.add)
    source = f"tracer={config.tracer}"
    view = TopView(board, own.sort, own.filter, source)
    try:
        agent.start()
    except PrivilegeError as exc:
        return _fail(str(exc), 1)
    except Exception as exc:
        agent.shutdown()
        return _fail(f"cannot start: {exc}", 1)
    from rich.console import Console
    from rich.live import Live

    console = Console()
    finished = False
    try:
        with _raw_terminal() as interactive, Live(
            view.render(console.size.height), console=console, screen=interactive,
            auto_refresh=False, transient=False,
        ) as live:
            while not view.quit.is_set():
                if interactive:
                    ready, _, _ = select.select([sys.stdin], [], [], 0.25)
                    if ready:
                        for char in os.read(sys.stdin.fileno(), 64).decode(errors="ignore"):
                            view.key(char)
                else:
                    time.sleep(0.25)
                if agent.stop_requested.is_set() and not finished:
                    # The tracer is done (a replay reached the end of its capture): shutting
                    # down drains the last flows into the board; the view stays until `q`.
                    agent.shutdown()
                    finished = True
                    if not interactive:
                        break
                live.update(view.render(console.size.height), refresh=True)
            if finished and not interactive:
                live.update(view.render(console.size.height), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        agent.shutdown()
    return 0
