"""Named network namespaces: ids in flows, selection and interface names (no privileges)."""

from __future__ import annotations

from flowkit.components import Interface
from flowkit.interfaces import InterfaceFilter
from flowkit.netns import NamespaceSelector, interface_key, netns_id, qualified_name


def test_namespace_ids_are_the_low_16_bits_of_dynamic_inodes() -> None:
    assert netns_id(0xF0000196) == 0x196
    assert netns_id(0xF000FFFF) == 0xFFFF


def test_inodes_flows_cannot_carry_have_no_id() -> None:
    assert netns_id(0xEFFFFFF9) is None  # the initial namespace's fixed inode
    assert netns_id(0xF0010001) is None  # beyond 16 bits of dynamic numbers
    assert netns_id(0xF0000000) is None  # 0 means "the agent's own namespace"


def test_interface_keys_keep_plain_indexes_in_the_own_namespace() -> None:
    assert interface_key(7) == 7
    assert interface_key(7, 0x196) == (0x196 << 32) | 7
    assert Interface("veth0", 7, netns="ns1", netns_id=0x196).key == interface_key(7, 0x196)


def test_interfaces_of_other_namespaces_are_named_namespace_slash_name() -> None:
    assert qualified_name("eth0", None) == "eth0"
    assert qualified_name("eth0", "ns1") == "ns1/eth0"
    assert Interface("eth0", 2, netns="ns1", netns_id=5).qualified_name == "ns1/eth0"
    assert Interface("eth0", 2).qualified_name == "eth0"


def test_namespace_selection_by_name_or_regex() -> None:
    selector = NamespaceSelector(["blue", "/^pod-/"])
    assert selector
    assert selector.selects("blue")
    assert selector.selects("pod-123")
    assert not selector.selects("blue2")
    assert not NamespaceSelector([])


def test_the_default_exclusion_of_lo_applies_in_every_namespace() -> None:
    flt = InterfaceFilter(exclude=["lo"])
    assert not flt.allows(Interface("lo", 1, netns="ns1", netns_id=3))
    assert flt.allows(Interface("veth0", 2, netns="ns1", netns_id=3))


def test_interfaces_filter_matches_the_qualified_name_too() -> None:
    flt = InterfaceFilter(include=["/^ns1\\//"])
    assert flt.allows(Interface("eth0", 2, netns="ns1", netns_id=3))
    assert not flt.allows(Interface("eth0", 2, netns="ns2", netns_id=4))
    assert not flt.allows(Interface("eth0", 2))
    exact = InterfaceFilter(include=["ns2/eth0"], exclude=["lo"])
    assert exact.allows(Interface("eth0", 2, netns="ns2", netns_id=4))
    assert not exact.allows(Interface("eth1", 3, netns="ns2", netns_id=4))
