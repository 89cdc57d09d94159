"""DEDUPER=firstCome: one record per conversation, however many interfaces saw its packets.

A packet that leaves a container crosses its veth, then the bridge (and maybe the physical
interface): every traced interface on the way makes a flow of it, with the same addresses, ports
and protocol but another interface and perhaps another direction. With ``firstCome`` the agent
reports such a flow once:

- Flows are grouped by what identifies the conversation: addresses, ports, protocol, ethertype,
  ICMP type/code — not the interface, its namespace, the direction or the MACs.
- The *first* interface of a group is the one that saw the conversation first: remembered from
  earlier batches for DEDUPER_FC_EXPIRY after its last packet of the conversation, else the
  interface whose flow in this batch started first.
- The flows of the first interface are kept; the others are dropped (counted in
  ``deduplicated_flows``), also in a batch where the first interface has no flow of the
  conversation (a packet counted just before an eviction on the first interface and just after
  it on the next). The first interface is remembered while it keeps seeing the conversation: when
  it has not for DEDUPER_FC_EXPIRY (a route changed), the next interface to see it takes over.
- Each kept flow lists every interface and direction of its group (its own first, then in order
  of first packet) in ``dup_if_index`` / ``dup_netns`` / ``dup_direction`` / ``dup_count`` —
  the JSON ``Interfaces`` / ``IfDirections`` lists and pbflow's ``dup_list``. At most
  :data:`MAX_INTERFACES` are listed.

Counts are not summed across interfaces: the kept record is the first interface's own, as in
NetObserv's agent.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np

from flowkit.model import FLOW_DTYPE, FlowArray

MAX_INTERFACES = 6
"""Interfaces listed per flow (``dup_*`` arrays of ``struct fk_flow_out``)."""

_CONVERSATION_FIELDS = (
    "src_ip", "dst_ip", "src_port", "dst_port", "eth_protocol", "proto", "icmp_type", "icmp_code",
)

Iface = tuple[int, int, int]  # if_index, netns, direction


class FirstComeDeduper:
    """Folds the flows of one batch that other interfaces saw first (see the module docs).

    ``expiry_s``: how long a conversation's first interface is remembered after its last
    packet. ``max_remembered``: bound of that memory (oldest forgotten first).
    """

    def __init__(self, expiry_s: float, max_remembered: int = 100_000) -> None:
        self.expiry_ns = int(expiry_s * 1e9)
        self.max_remembered = max_remembered
        self._first: OrderedDict[bytes, tuple[int, int, int]] = OrderedDict()
        """conversation -> (if_index, netns, last end_ns seen)"""
        self.folded = 0
        """Flows dropped so far because another interface reported their conversation."""

    def __len__(self) -> int:
        return len(self._first)

    def apply(self, array: FlowArray) -> FlowArray:
        """The batch's flows with duplicates folded (a new array; ``array`` is not changed)."""
        n = len(array)
        out: FlowArray
        if n == 0:
            out = np.zeros(0, dtype=FLOW_DTYPE)
            return out
        key = array["key"]
        conv = np.zeros(n, dtype=[(f, key.dtype[f]) for f in _CONVERSATION_FIELDS])
        for f in _CONVERSATION_FIELDS:
            conv[f] = key[f]
        raw = conv.tobytes()
        size = conv.dtype.itemsize
        if_index = key["if_index"].tolist()
        netns = key["netns"].tolist()
        direction = key["direction"].tolist()
        start = array["start_ns"].tolist()
        end = array["end_ns"].tolist()

        groups: dict[bytes, list[int]] = {}
        for i in sorted(range(n), key=start.__getitem__):
            groups.setdefault(raw[i * size:(i + 1) * size], []).append(i)

        kept: list[int] = []
        lists: dict[int, list[Iface]] = {}
        for conversation, rows in groups.items():
            remembered = self._first.get(conversation)
            first = (remembered[0], remembered[1]) if remembered else (
                if_index[rows[0]], netns[rows[0]])
            own = [i for i in rows if (if_index[i], netns[i]) == first]
            self.folded += len(rows) - len(own)
            if not own:
                # The first interface saw this conversation recently (else it would have been
                # forgotten) but not in this period: these flows are its duplicates.
                continue
            seen: list[Iface] = []
            for i in own + [i for i in rows if i not in own]:
                entry = (if_index[i], netns[i], direction[i])
                if entry not in seen:
                    seen.append(entry)
            for i in own:
                lists[i] = seen
            kept.extend(own)
            # Remembered while the first interface keeps seeing the conversation.
            self._first[conversation] = (first[0], first[1], max(end[i] for i in own))
            self._first.move_to_end(conversation)
        kept.sort()
        out = array[kept]  # a copy
        for row, i in enumerate(kept):
            entries = lists[i][:MAX_INTERFACES]
            out["dup_count"][row] = len(entries)
            for j, (index, ns, dirn) in enumerate(entries):
                out["dup_if_index"][row, j] = index
                out["dup_netns"][row, j] = ns
                out["dup_direction"][row, j] = dirn
        self._expire()
        return out

    def _expire(self) -> None:
        horizon = time.time_ns() - self.expiry_ns
        first = self._first
        while first:
            conversation, (_i, _n, last) = next(iter(first.items()))
            if last >= horizon and len(first) <= self.max_remembered:
                break
            del first[conversation]
