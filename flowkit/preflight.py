"""``flowkit-agent check``: can this host run the eBPF agent? One line per check."""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowkit.privileges import effective_capabilities, missing_capabilities

REQUIRED_CAPS = ("CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON")


def _kernel_version() -> tuple[int, int]:
    release = platform.release().split("-")[0].split(".")
    return int(release[0]), int(release[1])


def check_capabilities() -> tuple[bool, str]:
    missing = missing_capabilities(REQUIRED_CAPS, effective_capabilities())
    if missing:
        return False, f"missing {', '.join(missing)} (run as root or grant them)"
    return True, "CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON present"


def check_kernel() -> tuple[bool, str]:
    major, minor = _kernel_version()
    tcx = (major, minor) >= (6, 6)
    ok = (major, minor) >= (5, 8)
    return ok, f"kernel {platform.release()}: ring buffers {'yes' if ok else 'no'}, " \
               f"TCX {'yes' if tcx else 'no (TC clsact fallback)'}"


def check_btf() -> tuple[bool, str]:
    present = Path("/sys/kernel/btf/vmlinux").exists()
    return present, "kernel BTF present" if present else "no /sys/kernel/btf/vmlinux"


def check_native() -> tuple[bool, str]:
    try:
        from flowkit import native  # noqa: F401
    except ImportError as exc:
        return False, str(exc)
    return True, "C extension flowkit._native loads"


def check_bpf_object() -> tuple[bool, str]:
    obj = Path(__file__).parent / "bpf" / "flowkit.bpf.o"
    if not obj.exists():
        return False, f"{obj} is missing (run `make bpf`)"
    if os.geteuid() != 0 and missing_capabilities(REQUIRED_CAPS):
        return True, f"{obj.name} present (load not tried without privileges)"
    try:
        from flowkit.ebpf import CollectionSpec

        with CollectionSpec.from_file(obj).load():
            pass
    except Exception as exc:
        return False, f"{obj.name} does not load: {exc}"
    return True, f"{obj.name} loads and verifies"


CHECKS: list[tuple[str, Callable[[], tuple[bool, str]]]] = [
    ("privileges", check_capabilities),
    ("kernel", check_kernel),
    ("btf", check_btf),
    ("native", check_native),
    ("bpf-object", check_bpf_object),
]


def main(argv: list[str]) -> int:
    """Run every check, then say which optional features this kernel supports.

    Exit 1 when a check fails; an unsupported optional feature is not a failure.
    """
    parser = argparse.ArgumentParser(
        prog="flowkit-agent check",
        description="Preflight checks for the eBPF agent, and which optional features "
        "(ENABLE_PKT_DROPS, ENABLE_RTT, ...) this kernel supports and why not.",
    )
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document instead of text")
    parser.add_argument("--btf", metavar="FILE",
                        help="check the features against another kernel's BTF file (e.g. a "
                        "copy of its /sys/kernel/btf/vmlinux); nothing is loaded")
    args = parser.parse_args(argv)
    results = []
    if args.btf is None:
        for name, check in CHECKS:
            try:
                ok, detail = check()
            except Exception as exc:
                ok, detail = False, f"check crashed: {exc}"
            results.append({"check": name, "ok": ok, "detail": detail})
    features = feature_reports(args.btf)
    failed = sum(not r["ok"] for r in results)
    if args.json:
        print(json.dumps({"checks": results, "features": features}, indent=2))
        return 1 if failed else 0
    for r in results:
        print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['check']:<11} {r['detail']}")
    print("optional features (yes/no, the setting that enables it, why):")
    for f in features:
        print(f"{'yes ' if f['supported'] else 'no  '} {f['name']:<8} {f['setting']:<20} "
              f"{f['detail']}")
    return 1 if failed else 0


def feature_reports(btf_path: str | None = None) -> list[dict[str, Any]]:
    """:func:`flowkit.features.check_features` for this kernel (or a BTF file), as dicts."""
    from flowkit.features import check_features, load_kernel_types

    types, problem = load_kernel_types(btf_path)
    if types is None and btf_path is not None:
        raise SystemExit(f"flowkit-agent check: {problem}")
    can_load = btf_path is None and types is not None and not missing_capabilities(
        REQUIRED_CAPS)
    try:
        reports = check_features(types, load=can_load)
    except Exception as exc:  # the probe object itself is unusable
        reports = check_features(types, load=False)
        for r in reports:
            r.detail += f" (probe object unusable: {exc})"
    out = [r.as_dict() for r in reports]
    if not can_load and btf_path is None and types is not None:
        for entry in out:
            entry["detail"] += "; load not tried without CAP_BPF/CAP_PERFMON"
    return out
