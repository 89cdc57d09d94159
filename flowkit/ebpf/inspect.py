"""``flowkit-agent inspect OBJECT [--json]``: show what an eBPF object contains.

Prints the object's programs, maps and variables as the loader sees them (after applying
cilium/ebpf's section conventions), as tables (rich tables on a terminal) or as JSON. Needs
no privileges: nothing is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from flowkit.ebpf.errors import LoaderError
from flowkit.ebpf.spec import CollectionSpec, MapSpec

__all__ = ["main", "spec_to_dict"]


def _map_dict(spec: MapSpec) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": spec.name,
        "type": spec.type,
        "key_size": spec.key_size,
        "value_size": spec.value_size,
        "max_entries": spec.max_entries,
        "flags": spec.flags,
        "section": spec.section,
    }
    if spec.key_type:
        out["key_type"] = spec.key_type
    if spec.value_type:
        out["value_type"] = spec.value_type
    if spec.pinning:
        out["pinning"] = spec.pinning
    if spec.inner is not None:
        out["inner"] = _map_dict(spec.inner)
    if spec.initial_values:
        out["initial_values"] = {str(k): v for k, v in sorted(spec.initial_values.items())}
    return out


def _variable_value(raw: bytes) -> int | str:
    if len(raw) in (1, 2, 4, 8):
        return int.from_bytes(raw, "little")
    return raw.hex()


def spec_to_dict(spec: CollectionSpec) -> dict[str, Any]:
    """A JSON-ready description of a spec (what ``inspect --json`` prints)."""
    return {
        "object": spec.origin,
        "license": spec.license,
        "programs": [
            {
                "name": p.name,
                "section": p.section,
                "type": p.prog_type,
                "attach_type": p.attach_type,
                "flags": p.flags,
                "instructions": p.instructions,
                "static": p.static,
            }
            for p in spec.programs.values()
        ],
        "maps": [_map_dict(m) for m in spec.maps.values()],
        "variables": [
            {
                "name": v.name,
                "section": v.section,
                "offset": v.offset,
                "size": v.size,
                "type": v.type_name,
                "value": _variable_value(v.get()),
            }
            for v in spec.variables.values()
        ],
    }


def _rows(data: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    programs = [
        [
            p["name"],
            p["section"],
            p["type"],
            p["attach_type"] or "-",
            str(p["instructions"]),
            "static" if p["static"] else "",
        ]
        for p in data["programs"]
    ]
    maps = []
    for m in data["maps"]:
        note = []
        if "inner" in m:
            inner = m["inner"]
            note.append(
                f"inner {inner['type']} {inner['key_size']}/{inner['value_size']}"
                f" x{inner['max_entries']}"
            )
        if "initial_values" in m:
            note.append("values " + ", ".join(f"[{k}]={v}" for k, v in m["initial_values"].items()))
        if m["section"] == "maps":
            note.append("legacy maps section")
        maps.append(
            [
                m["name"],
                m["type"],
                str(m["key_size"]),
                str(m["value_size"]),
                str(m["max_entries"]),
                hex(m["flags"]),
                "; ".join(note),
            ]
        )
    variables = [
        [v["name"], v["section"], str(v["size"]), v["type"], str(v["value"])]
        for v in data["variables"]
    ]
    return [
        ("Programs", ["name", "section", "type", "attach type", "insns", ""], programs),
        ("Maps", ["name", "type", "key", "value", "max entries", "flags", ""], maps),
        ("Variables", ["name", "section", "size", "type", "value"], variables),
    ]


def _print_plain(data: dict[str, Any], out: TextIO) -> None:
    out.write(f"{data['object']} (license: {data['license'] or 'none'})\n")
    for title, header, rows in _rows(data):
        out.write(f"\n{title}:\n")
        if not rows:
            out.write("  (none)\n")
            continue
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            cells = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
            out.write(f"  {cells}".rstrip() + "\n")


def _print_rich(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{data['object']}[/bold] (license: {data['license'] or 'none'})")
    for title, header, rows in _rows(data):
        table = Table(title=title, title_justify="left")
        for column in header:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        console.print(table)


def main(argv: list[str]) -> int:
    """Run ``inspect``; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="flowkit-agent inspect",
        description="Show the programs, maps and variables of an eBPF object file.",
    )
    parser.add_argument("object", help="path to an eBPF ELF object (.o)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    try:
        spec = CollectionSpec.from_file(args.object)
    except LoaderError as exc:
        print(f"flowkit-agent inspect: {exc}", file=sys.stderr)
        return 1
    data = spec_to_dict(spec)
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif sys.stdout.isatty():
        _print_rich(data)
    else:
        _print_plain(data, sys.stdout)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
