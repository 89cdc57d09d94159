"""Which interfaces are traced: INTERFACES, EXCLUDE_INTERFACES, INTERFACE_IPS."""

from __future__ import annotations

import ipaddress

import pytest

from flowkit.components import Interface
from flowkit.config import load_config
from flowkit.interfaces import InterfaceFilter


def iface(name: str, *addresses: str) -> Interface:
    return Interface(name=name, index=7, addresses=addresses)


def test_an_empty_include_list_traces_every_interface() -> None:
    allowed = InterfaceFilter()
    assert allowed.allows(iface("eth0"))
    assert allowed.allows(iface("lo"))


def test_the_default_configuration_excludes_only_lo() -> None:
    config = load_config(environ={})
    allowed = InterfaceFilter(config.interfaces, config.exclude_interfaces, config.interface_ips)
    assert not allowed.allows(iface("lo"))
    assert allowed.allows(iface("eth0"))
    assert allowed.allows(iface("lo0"))


def test_names_match_exactly() -> None:
    allowed = InterfaceFilter(include=["eth0"])
    assert allowed.allows(iface("eth0"))
    assert not allowed.allows(iface("eth01"))
    assert not allowed.allows(iface("xeth0"))


def test_regexes_are_searched_anywhere_in_the_name() -> None:
    allowed = InterfaceFilter(include=["/veth/"])
    assert allowed.allows(iface("veth1"))
    assert allowed.allows(iface("fkF-veth-a"))
    assert not allowed.allows(iface("eth0"))


def test_regexes_can_be_anchored() -> None:
    allowed = InterfaceFilter(include=["/^veth[0-9]+$/"])
    assert allowed.allows(iface("veth12"))
    assert not allowed.allows(iface("veth12a"))
    assert not allowed.allows(iface("aveth12"))


def test_exclusion_wins_over_inclusion() -> None:
    allowed = InterfaceFilter(include=["/^fkF-/", "eth0"], exclude=["eth0", "/-skip$/"])
    assert allowed.allows(iface("fkF-a"))
    assert not allowed.allows(iface("fkF-skip"))
    assert not allowed.allows(iface("eth0"))


def test_a_lone_slash_is_a_name_not_a_regex() -> None:
    allowed = InterfaceFilter(include=["/"])
    assert allowed.allows(iface("/"))
    assert not allowed.allows(iface("eth0"))


def test_interface_ips_keep_interfaces_with_an_address_in_a_network() -> None:
    allowed = InterfaceFilter(ips=["198.18.0.0/24", "fd00:1::/64"])
    assert allowed.allows(iface("a", "198.19.0.1", "198.18.0.77"))
    assert allowed.allows(iface("b", "fd00:1::5"))
    assert not allowed.allows(iface("c", "198.19.0.1", "fd00:2::1"))
    assert not allowed.allows(iface("d"))


def test_interface_ips_combine_with_names() -> None:
    allowed = InterfaceFilter(include=["/^fkF/"], exclude=["fkF-x"], ips=["198.18.0.0/15"])
    assert allowed.allows(iface("fkF-a", "198.18.1.1"))
    assert not allowed.allows(iface("fkF-b", "fd00::1"))
    assert not allowed.allows(iface("fkF-x", "198.18.1.1"))
    assert not allowed.allows(iface("eth0", "198.18.1.1"))


def test_ipv4_mapped_ipv6_networks_do_not_match_ipv4_addresses_by_accident() -> None:
    allowed = InterfaceFilter(ips=["::ffff:0:0/96"])
    assert not allowed.allows(iface("a", "198.18.0.1"))


def test_addresses_drop_scope_suffixes_and_skip_garbage() -> None:
    interface = iface("a", "fe80::1%a", "198.18.0.1", "not-an-address")
    assert interface.ip_addresses() == [
        ipaddress.ip_address("fe80::1"), ipaddress.ip_address("198.18.0.1")
    ]
    assert InterfaceFilter(ips=["fe80::/10"]).allows(interface)


@pytest.mark.parametrize("setting", ["INTERFACES", "EXCLUDE_INTERFACES"])
def test_settings_accept_names_and_regexes(setting: str) -> None:
    config = load_config(environ={setting: "eth0,/^veth/ , br-1"})
    assert getattr(config, setting.lower()) == ["eth0", "/^veth/", "br-1"]
