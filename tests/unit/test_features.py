"""`flowkit-agent check` names, per optional feature, what a kernel's BTF lacks.

These tests build a small BTF file standing for an older kernel and check the verdicts against
it (``--btf``: nothing is loaded, no privileges needed). The real kernel is checked in
tests/integration/test_features_check.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from flowkit.ebpf.btf import Btf, BtfKind, BtfMember, BtfType
from flowkit.features import KernelTypes, check_features


def _struct(btf: Btf, name: str, members: list[str], int_id: int) -> int:
    return btf.add(BtfType(BtfKind.STRUCT, btf.add_string(name), size_or_type=8 * len(members),
                           members=[BtfMember(btf.add_string(m), int_id, 64 * i)
                                    for i, m in enumerate(members)]))


def old_kernel_btf() -> Btf:
    """A kernel like 5.15: kfree_skb without drop reasons, no bpf_cast_to_kern_ctx, no TCX."""
    btf = Btf()
    int_id = btf.add_int("int")
    _struct(btf, "trace_event_raw_kfree_skb", ["skbaddr", "location", "protocol"], int_id)
    _struct(btf, "sk_buff", ["dev", "head", "network_header"], int_id)
    _struct(btf, "tcp_sock", ["srtt_us"], int_id)
    _struct(btf, "net_device", ["nd_net"], int_id)
    inner = _struct(btf, "ns_common", ["inum"], int_id)
    btf.add(BtfType(BtfKind.STRUCT, btf.add_string("net"), size_or_type=8,
                    members=[BtfMember(btf.add_string("ns"), inner, 0)]))
    proto = btf.add(BtfType(BtfKind.FUNC_PROTO, 0, size_or_type=0))
    btf.add(BtfType(BtfKind.TYPEDEF, btf.add_string("btf_trace_tcp_probe"), size_or_type=proto))
    btf.add(BtfType(BtfKind.TYPEDEF, btf.add_string("btf_trace_kfree_skb"), size_or_type=proto))
    btf.add(BtfType(BtfKind.ENUM, btf.add_string("bpf_attach_type"), size_or_type=4,
                    members=[BtfMember(btf.add_string("BPF_CGROUP_INET_INGRESS"), offset=0)]))
    return btf


def test_a_kernel_without_drop_reasons_names_the_missing_field_and_enum() -> None:
    reports = {r.name: r for r in check_features(KernelTypes(old_kernel_btf()), load=False)}
    drops = reports["drops"]
    assert not drops.supported
    assert drops.setting == "ENABLE_PKT_DROPS"
    assert "struct trace_event_raw_kfree_skb.reason" in drops.missing
    assert "enum skb_drop_reason" in drops.missing
    assert "tracepoint" not in drops.detail  # the tracepoint itself exists


def test_netns_needs_the_kfunc_and_tcx_the_attach_type() -> None:
    reports = {r.name: r for r in check_features(KernelTypes(old_kernel_btf()), load=False)}
    assert reports["netns"].missing == ["function bpf_cast_to_kern_ctx"]
    assert "Linux >= 6.3" in reports["netns"].detail
    assert not reports["tcx"].supported
    assert "BPF_TCX_INGRESS in enum bpf_attach_type" in reports["tcx"].missing


def test_features_whose_types_exist_are_supported_by_btf() -> None:
    reports = {r.name: r for r in check_features(KernelTypes(old_kernel_btf()), load=False)}
    assert reports["rtt"].supported, reports["rtt"].detail
    assert reports["dedup"].supported
    assert {r.name for r in reports.values()} == {
        "drops", "rtt", "dns", "filters", "dedup", "netns", "tcx"}


def test_no_btf_at_all_disables_every_kernel_feature() -> None:
    reports = {r.name: r for r in check_features(None, load=False)}
    assert not reports["drops"].supported
    assert "no BTF" in reports["drops"].detail
    assert reports["dedup"].supported


def test_check_cli_reads_another_kernels_btf_file(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(old_kernel_btf().encode())
    out = subprocess.run(
        [sys.executable, "-m", "flowkit.cli", "check", "--btf", str(path), "--json"],
        capture_output=True, text=True, check=True, timeout=60,
    )
    document = json.loads(out.stdout)
    assert document["checks"] == []
    verdicts = {f["name"]: f["supported"] for f in document["features"]}
    assert verdicts == {"drops": False, "rtt": True, "dns": True, "filters": True,
                        "dedup": True, "netns": False, "tcx": False}


def test_check_cli_text_names_the_setting_and_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(old_kernel_btf().encode())
    out = subprocess.run(
        [sys.executable, "-m", "flowkit.cli", "check", "--btf", str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    line = next(line for line in out.splitlines() if line.split()[1:2] == ["drops"])
    assert line.startswith("no ")
    assert "ENABLE_PKT_DROPS" in line
    assert "enum skb_drop_reason" in line


def test_a_file_that_is_not_btf_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(b"not btf at all")
    result = subprocess.run(
        [sys.executable, "-m", "flowkit.cli", "check", "--btf", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "is not BTF" in result.stderr
