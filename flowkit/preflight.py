"""``flowkit-agent check``: can this host run the eBPF agent? One line per check."""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable
from pathlib import Path

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
    """Run every check; exit 1 when one fails."""
    argparse.ArgumentParser(prog="flowkit-agent check",
                            description="Preflight checks for the eBPF agent").parse_args(argv)
    failed = 0
    for name, check in CHECKS:
        try:
            ok, detail = check()
        except Exception as exc:
            ok, detail = False, f"check crashed: {exc}"
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name:<11} {detail}")
    return 1 if failed else 0
