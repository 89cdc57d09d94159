"""FLOW_FILTER_RULES parsing: what the kernel map receives and how mistakes are reported."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flowkit.filters import (
    FILTER_KEY_DTYPE,
    FILTER_RULES_DTYPE,
    MAX_RULES,
    FilterRuleError,
    parse_filter_rules,
)
from flowkit.native._lib import ffi


def test_dtypes_match_the_c_structs() -> None:
    assert ffi.sizeof("struct fk_filter_rules") == FILTER_RULES_DTYPE.itemsize == 368
    assert ffi.sizeof("struct fk_filter_rule") == FILTER_RULES_DTYPE["rules"].base.itemsize


def decode(text: str) -> list[tuple[int, bytes, np.void]]:
    out = []
    for key, value in parse_filter_rules(text).map_entries():
        k = np.frombuffer(key, FILTER_KEY_DTYPE)[0]
        out.append((int(k["prefix_len"]), bytes(k["ip"]), np.frombuffer(value,
                                                                          FILTER_RULES_DTYPE)[0]))
    return out


def test_ipv4_cidrs_become_ipv4_mapped_prefixes() -> None:
    ((prefix, ip, rules),) = decode('[{"ip_cidr": "198.18.0.0/15", "action": "Reject"}]')
    assert prefix == 96 + 15
    assert ip == bytes(10) + b"\xff\xff" + bytes([198, 18, 0, 0])
    assert int(rules["rules"][0]["action"]) == 2


def test_rules_of_one_cidr_share_an_entry_in_order() -> None:
    ((_, _, rules),) = decode(json.dumps([
        {"ip_cidr": "fd00::/8", "protocol": "TCP", "action": "Reject"},
        {"ip_cidr": "fd00::/8", "sample": 10}]))
    first, second = rules["rules"][0], rules["rules"][1]
    assert (int(first["proto"]), int(first["action"])) == (6, 2)
    assert (int(second["sample"]), int(second["action"])) == (10, 1)
    assert int(rules["rules"][2]["action"]) == 0  # unused slot


def test_port_forms() -> None:
    ((_, _, rules),) = decode(json.dumps([
        {"source_port": 53, "destination_port_range": "80-443", "ports": "22,8080"}]))
    rule = rules["rules"][0]
    assert (int(rule["src_port"]["kind"]), int(rule["src_port"]["lo"])) == (1, 53)
    assert (int(rule["dst_port"]["lo"]), int(rule["dst_port"]["hi"])) == (80, 443)
    assert rule["any_port"]["list"].tolist() == [22, 8080, 22, 22]


def test_peer_cidr_is_stored_masked() -> None:
    ((_, _, rules),) = decode('[{"peer_cidr": "198.18.1.7/24"}]')
    rule = rules["rules"][0]
    assert bytes(rule["peer_ip"])[12:] == bytes([198, 18, 1, 0])
    assert bytes(rule["peer_mask"]) == b"\xff" * 15 + b"\x00"


def test_no_rules_means_no_filtering() -> None:
    assert not parse_filter_rules("")
    assert not parse_filter_rules("[]")


@pytest.mark.parametrize(("text", "message"), [
    ("[{", "not valid JSON"),
    ('{"ip_cidr": "198.18.0.0/15"}', "must be a JSON list"),
    ('[{"ip_cidr": "198.18.0.0/15"}, 7]', "rule 1: a rule must be a JSON object"),
    ('[{"ipcidr": "198.18.0.0/15"}]', "rule 0, key 'ipcidr': unknown key"),
    ('[{"ip_cidr": "198.18.0.0/33"}]', "rule 0, key 'ip_cidr'"),
    ('[{"port_range": "80"}]', "rule 0, key 'port_range'"),
    ('[{"port_range": "90-80"}]', "start is above its end"),
    ('[{"port": 70000}]', "rule 0, key 'port': port 70000 is out of range"),
    ('[{"port": 1, "ports": "2,3"}]', "rule 0, key 'ports': conflicts with 'port'"),
    ('[{"ports": "1,2,3,4,5"}]', "1 to 4 ports"),
    ('[{"protocol": "IGMP"}]', "rule 0, key 'protocol'"),
    ('[{"direction": "Both"}]', "rule 0, key 'direction'"),
    ('[{"tcp_flags": "SYNACK"}]', "rule 0, key 'tcp_flags'"),
    ('[{"drops": "yes"}]', "rule 0, key 'drops'"),
    ('[{"sample": -1}]', "rule 0, key 'sample'"),
    ('[{"peer_ip": "198.18.0.0/16"}]', "use peer_cidr"),
    ('[{"peer_ip": "198.18.0.1", "peer_cidr": "198.18.0.0/16"}]', "key 'peer_cidr': conflicts"),
    (json.dumps([{"ip_cidr": "fd00::/8"}] * 5), "rule 4, key 'ip_cidr': more than 4 rules"),
    (json.dumps([{"port": i + 1} for i in range(MAX_RULES + 1)]), "too many rules"),
])
def test_mistakes_name_the_rule_and_key(text: str, message: str) -> None:
    with pytest.raises(FilterRuleError, match=None) as info:
        parse_filter_rules(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
