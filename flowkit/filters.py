"""FLOW_FILTER_RULES: NetObserv's in-kernel flow filters, parsed, checked and encoded for the
eBPF program's ``filter_rules`` LPM trie (``struct fk_filter_rules`` in csrc/flow.h).

Semantics (NetObserv's): once rules are set, a packet is kept only if a rule accepts it. The
rules of the longest ``ip_cidr`` prefix holding the packet's source address are tried first, in
the order given, and the first whose other conditions all hold decides (``action``); when none
does, the same is done with the destination address; a packet no rule matches is not kept.
``peer_ip``/``peer_cidr`` constrain the other address. ``drops: true`` makes a rule match only
packets the kernel drops (ENABLE_PKT_DROPS). ``sample: N`` keeps 1 packet in N of the flows the
rule accepts (their ``Sampling`` says N).

Every mistake is reported as one :class:`FilterRuleError` naming the rule's index (counting
from 0) and the key, before anything is loaded.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flowkit.model import FlowArray

__all__ = [
    "FILTER_KEY_DTYPE",
    "FILTER_RULES_DTYPE",
    "FILTER_RULE_DTYPE",
    "MAX_RULES",
    "RULES_PER_PREFIX",
    "FilterRuleError",
    "FilterRules",
    "parse_filter_rules",
]

MAX_RULES = 64
"""Rules FLOW_FILTER_RULES may hold."""
RULES_PER_PREFIX = 4
"""Rules that may share one ``ip_cidr`` (``FK_FILTER_RULES_PER_PREFIX``)."""

ACCEPT, REJECT = 1, 2
MATCH_ICMP_TYPE, MATCH_ICMP_CODE, MATCH_DROPS = 0x01, 0x02, 0x04

FILTER_KEY_DTYPE = np.dtype([("prefix_len", "<u4"), ("ip", "u1", (16,))])
"""``struct fk_filter_key``: an LPM trie key (IPv4 as IPv4-mapped IPv6, prefix + 96)."""

PORT_MATCH_DTYPE = np.dtype(
    [("lo", "<u2"), ("hi", "<u2"), ("list", "<u2", (4,)), ("kind", "u1"), ("pad", "u1", (3,))]
)
FILTER_RULE_DTYPE = np.dtype(
    [
        ("peer_ip", "u1", (16,)),
        ("peer_mask", "u1", (16,)),
        ("sample", "<u4"),
        ("tcp_flags", "<u2"),
        ("action", "u1"),
        ("direction", "u1"),
        ("proto", "u1"),
        ("icmp_type", "u1"),
        ("icmp_code", "u1"),
        ("match", "u1"),
        ("src_port", PORT_MATCH_DTYPE),
        ("dst_port", PORT_MATCH_DTYPE),
        ("any_port", PORT_MATCH_DTYPE),
    ]
)
"""``struct fk_filter_rule`` (92 bytes)."""
FILTER_RULES_DTYPE = np.dtype([("rules", FILTER_RULE_DTYPE, (RULES_PER_PREFIX,))])
"""``struct fk_filter_rules``: the value of one prefix (368 bytes)."""

_PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1, "ICMPv6": 58}
_DIRECTIONS = {"Ingress": 1, "Egress": 2}
_ACTIONS = {"Accept": ACCEPT, "Reject": REJECT}
_TCP_FLAGS = {
    "FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08, "ACK": 0x10, "URG": 0x20, "ECE": 0x40,
    "CWR": 0x80, "SYN-ACK": 0x100, "FIN-ACK": 0x200, "RST-ACK": 0x400,
}  # fmt: skip
# Keys giving a port condition, by the port they constrain.
_PORT_KEYS = {
    "src_port": ("source_port", "source_port_range", "source_ports"),
    "dst_port": ("destination_port", "destination_port_range", "destination_ports"),
    "any_port": ("port", "port_range", "ports"),
}
_KEYS = frozenset(
    {"direction", "ip_cidr", "protocol", "icmp_type", "icmp_code", "peer_ip", "peer_cidr",
     "action", "tcp_flags", "drops", "sample"}
    | {key for keys in _PORT_KEYS.values() for key in keys}
)  # fmt: skip
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


class FilterRuleError(ValueError):
    """A FLOW_FILTER_RULES mistake; the message names the rule index and the key."""


def _fail(index: int | None, key: str | None, message: str) -> FilterRuleError:
    where = "" if index is None else f"rule {index}" + (f", key {key!r}" if key else "")
    return FilterRuleError(f"{where}: {message}" if where else message)


def _network(index: int, key: str, text: Any) -> tuple[int, bytes]:
    """(prefix length over 128 bits, 16 network bytes) of a CIDR or address."""
    if not isinstance(text, str):
        raise _fail(index, key, f"expected an address or CIDR string, got {text!r}")
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise _fail(index, key, f"{text!r} is not a valid CIDR (like 198.18.0.0/15 or "
                                "fd00::/8)") from None
    if isinstance(net, ipaddress.IPv4Network):
        return 96 + net.prefixlen, _V4_MAPPED + net.network_address.packed
    return net.prefixlen, net.network_address.packed


def _mask(prefix: int) -> bytes:
    return ((1 << 128) - (1 << (128 - prefix))).to_bytes(16, "big") if prefix else bytes(16)


def _port(index: int, key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise _fail(index, key, f"{value!r} is not a port number")
    try:
        port = int(str(value).strip())
    except ValueError:
        raise _fail(index, key, f"{value!r} is not a port number") from None
    if not 0 < port <= 0xFFFF:
        raise _fail(index, key, f"port {port} is out of range (1-65535)")
    return port


def _uint(index: int, key: str, value: Any, top: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _fail(index, key, f"expected an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise _fail(index, key, f"expected an integer, got {value!r}") from None
    if not 0 <= number <= top:
        raise _fail(index, key, f"{number} is out of range (0-{top})")
    return number


def _choice(index: int, key: str, value: Any, choices: dict[str, int]) -> int:
    if value not in choices:
        raise _fail(index, key, f"{value!r} is not one of {', '.join(choices)}")
    return choices[value]


def _port_match(index: int, rule: dict[str, Any], keys: tuple[str, str, str], out: Any) -> None:
    single, ranged, _listed = keys
    given = [k for k in keys if k in rule]
    if len(given) > 1:
        raise _fail(index, given[1], f"conflicts with {given[0]!r}: give one of {', '.join(keys)}")
    if not given:
        return
    key = given[0]
    value = rule[key]
    if key == single:
        port = _port(index, key, value)
        out["kind"], out["lo"], out["hi"] = 1, port, port
    elif key == ranged:
        parts = str(value).split("-")
        if len(parts) != 2:
            raise _fail(index, key, f"{value!r} is not a range like 80-443")
        lo, hi = (_port(index, key, p) for p in parts)
        if lo > hi:
            raise _fail(index, key, f"{value!r}: the range's start is above its end")
        out["kind"], out["lo"], out["hi"] = 1, lo, hi
    else:
        items = [p for p in str(value).split(",") if p.strip()]
        if not 1 <= len(items) <= 4:
            raise _fail(index, key, f"{value!r}: give 1 to 4 ports separated by commas")
        ports = [_port(index, key, p) for p in items]
        out["kind"] = 2
        out["list"] = ports + [ports[0]] * (4 - len(ports))


@dataclass(frozen=True)
class FilterRules:
    """Validated rules, grouped by prefix as the kernel map wants them."""

    count: int
    entries: tuple[tuple[bytes, bytes], ...]  # (fk_filter_key, fk_filter_rules) bytes

    def __bool__(self) -> bool:
        return self.count > 0

    def map_entries(self) -> Iterable[tuple[bytes, bytes]]:
        """(key, value) pairs for the ``filter_rules`` LPM trie."""
        return self.entries


def _encode_rule(index: int, rule: Any, out: Any) -> tuple[int, bytes]:
    if not isinstance(rule, dict):
        raise _fail(index, None, f"a rule must be a JSON object, got {type(rule).__name__}")
    for key in rule:
        if key not in _KEYS:
            raise _fail(index, key, f"unknown key (known keys: {', '.join(sorted(_KEYS))})")
    prefix, network = _network(index, "ip_cidr", rule.get("ip_cidr", "::/0"))
    out["action"] = _choice(index, "action", rule.get("action", "Accept"), _ACTIONS)
    if "direction" in rule:
        out["direction"] = _choice(index, "direction", rule["direction"], _DIRECTIONS)
    if "protocol" in rule:
        out["proto"] = _choice(index, "protocol", rule["protocol"], _PROTOCOLS)
    match = 0
    if "icmp_type" in rule:
        out["icmp_type"] = _uint(index, "icmp_type", rule["icmp_type"], 255)
        match |= MATCH_ICMP_TYPE
    if "icmp_code" in rule:
        out["icmp_code"] = _uint(index, "icmp_code", rule["icmp_code"], 255)
        match |= MATCH_ICMP_CODE
    if "drops" in rule:
        if not isinstance(rule["drops"], bool):
            raise _fail(index, "drops", f"expected true or false, got {rule['drops']!r}")
        if rule["drops"]:
            match |= MATCH_DROPS
    out["match"] = match
    if "tcp_flags" in rule:
        out["tcp_flags"] = _choice(index, "tcp_flags", rule["tcp_flags"], _TCP_FLAGS)
    if "sample" in rule:
        out["sample"] = _uint(index, "sample", rule["sample"], 0xFFFF_FFFF)
    if "peer_ip" in rule and "peer_cidr" in rule:
        raise _fail(index, "peer_cidr", "conflicts with 'peer_ip': give one of them")
    for key in ("peer_ip", "peer_cidr"):
        if key in rule:
            text = rule[key]
            if key == "peer_ip" and isinstance(text, str) and "/" in text:
                raise _fail(index, key, f"{text!r} is a CIDR: use peer_cidr")
            peer_prefix, peer = _network(index, key, text)
            out["peer_mask"] = np.frombuffer(_mask(peer_prefix), "u1")
            out["peer_ip"] = np.frombuffer(peer, "u1")
    for field, keys in _PORT_KEYS.items():
        _port_match(index, rule, keys, out[field])
    key = np.zeros((), FILTER_KEY_DTYPE)
    key["prefix_len"] = prefix
    key["ip"] = np.frombuffer(network, "u1")
    return prefix, key.tobytes()


def parse_filter_rules(text: str | Sequence[Any] | None) -> FilterRules:
    """Check FLOW_FILTER_RULES (a JSON list, or the list itself) and encode it.

    Raises :class:`FilterRuleError` with one line naming the rule index and key.
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return FilterRules(0, ())
    if isinstance(text, str):
        try:
            rules = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _fail(None, None, f"not valid JSON: {exc.msg} at line {exc.lineno} column "
                                    f"{exc.colno}") from None
    else:
        rules = list(text)
    if not isinstance(rules, list):
        raise _fail(None, None, "must be a JSON list of rule objects, like "
                                '[{"ip_cidr": "198.18.0.0/15", "action": "Accept"}]')
    if len(rules) > MAX_RULES:
        raise _fail(MAX_RULES, None, f"too many rules: {len(rules)} given, at most {MAX_RULES}")
    groups: dict[bytes, FlowArray] = {}
    counts: dict[bytes, int] = {}
    for index, rule in enumerate(rules):
        row = np.zeros((), FILTER_RULE_DTYPE)
        _prefix, key = _encode_rule(index, rule, row)
        slot = counts.get(key, 0)
        if slot >= RULES_PER_PREFIX:
            raise _fail(index, "ip_cidr", f"more than {RULES_PER_PREFIX} rules for "
                                          f"{rule.get('ip_cidr', '::/0')!r}")
        value = groups.setdefault(key, np.zeros((), FILTER_RULES_DTYPE))
        value["rules"][slot] = row
        counts[key] = slot + 1
    entries = tuple((key, value.tobytes()) for key, value in groups.items())
    return FilterRules(len(rules), entries)
