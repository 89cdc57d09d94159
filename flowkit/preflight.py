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


def configuration_checks(config_file: str | None) -> list[tuple[str, bool, str]]:
    """Checks of the configured agent: settings valid, the kernel memory its eBPF maps will
    take against the limit, and the interfaces it will want (and whether another flowkit agent
    already holds one)."""
    from flowkit.components import ComponentContext
    from flowkit.config import ConfigError, load_config
    from flowkit.metrics import Metrics
    from flowkit.pipeline import resolve_pipeline
    from flowkit.plugins import PluginError, PluginManager

    try:
        pm = PluginManager()
        config = load_config(config_file=config_file, plugin_manager=pm)
        pipeline = resolve_pipeline(config, pm)
    except (ConfigError, PluginError) as exc:
        return [("settings", False, str(exc))]
    out = [("settings", True, f"TRACER={pipeline.tracer.name} EXPORT="
            f"{','.join(c.name for c in pipeline.exporters)} CACHE_MAX_FLOWS="
            f"{config.cache_max_flows}")]
    context = ComponentContext(config=config, settings=pipeline.tracer.settings,
                               metrics=Metrics(config.metrics_prefix))
    try:
        tracer = pipeline.tracer.spec.factory(context)
        describe = getattr(tracer, "describe_memory", None)
        limit_of = getattr(tracer, "memory_limit", None)
        plan_of = getattr(tracer, "memory_plan", None)
        if callable(describe) and callable(limit_of) and callable(plan_of):
            from flowkit.ebpf.memory import format_bytes

            limit, source = limit_of()
            fits = plan_of().host <= limit
            out.append(("memory", fits, f"{describe()}; limit {format_bytes(limit)} ({source})"))
    except Exception as exc:
        out.append(("memory", False, f"cannot size the eBPF maps: {exc}"))
    mode = getattr(pipeline.tracer.settings, "tc_attach_mode", "")
    out.append(_check_interfaces(config, exclusive=mode == "tc"))
    return out


def _check_interfaces(config: Any, exclusive: bool) -> tuple[str, bool, str]:
    import socket

    from flowkit.components import Interface
    from flowkit.interfaces import InterfaceFilter

    selector = InterfaceFilter(config.interfaces, config.exclude_interfaces, [])
    wanted = [(index, name) for index, name in socket.if_nameindex()
              if selector.allows(Interface(name, index))]
    if not wanted:
        return ("interfaces", False,
                f"no interface matches INTERFACES={','.join(config.interfaces) or '(all)'} "
                f"EXCLUDE_INTERFACES={','.join(config.exclude_interfaces)}")
    held = []
    try:
        from flowkit.ebpf.attach import list_bpf_filters, live_program_ids

        live = live_program_ids()
        for index, name in wanted:
            owners = {f.prog_id for f in list_bpf_filters(index)
                      if f.name.startswith("flowkit_") and f.prog_id in live}
            if owners:
                held.append(name)
    except Exception as exc:  # no privileges to list filters: say so, do not fail
        return ("interfaces", True, f"{len(wanted)} wanted: "
                f"{', '.join(n for _, n in wanted)} (tc filters not listed: {exc})")
    detail = f"{len(wanted)} wanted: {', '.join(n for _, n in wanted)}"
    if config.interface_ips:
        detail += f" (before INTERFACE_IPS={','.join(config.interface_ips)})"
    if held:
        detail += (f"; already traced by another running flowkit agent (tc filters): "
                   f"{', '.join(held)}" + (" — with TC_ATTACH_MODE=tc this agent cannot attach "
                                           "there and retries until they go" if exclusive else ""))
    return ("interfaces", not (held and exclusive), detail)


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
    parser.add_argument("--config", metavar="FILE",
                        help="YAML file of settings (the environment is read too): the "
                        "memory and interface checks use the agent's configuration")
    args = parser.parse_args(argv)
    results = []
    if args.btf is None:
        for name, check in CHECKS:
            try:
                ok, detail = check()
            except Exception as exc:
                ok, detail = False, f"check crashed: {exc}"
            results.append({"check": name, "ok": ok, "detail": detail})
        for name, ok, detail in configuration_checks(args.config):
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
