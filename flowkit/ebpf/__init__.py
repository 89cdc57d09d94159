"""flowkit's eBPF object loader: cilium/ebpf-compatible object loading on top of libbpf.

>>> from flowkit.ebpf import CollectionSpec
>>> spec = CollectionSpec.from_file("flowkit/bpf/flowkit.bpf.o")      # doctest: +SKIP
>>> spec.variables["sampling"].set(4)                                  # doctest: +SKIP
>>> spec.maps["flows_a"].max_entries = 10000                           # doctest: +SKIP
>>> with spec.load() as coll:                                          # doctest: +SKIP
...     fd = coll.programs["flowkit_ingress"].fd

Reading specs (:class:`CollectionSpec`) needs neither privileges nor the C extension;
:class:`Collection`, :class:`Program` and :class:`Map` (loaded objects) are imported lazily.
See docs/ebpf-loader.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowkit.ebpf.errors import LoaderError
from flowkit.ebpf.spec import CollectionSpec, MapSpec, ProgramSpec, VariableSpec

if TYPE_CHECKING:
    from flowkit.ebpf.loader import Collection, Map, Program

__all__ = [
    "Collection",
    "CollectionSpec",
    "LoaderError",
    "Map",
    "MapSpec",
    "Program",
    "ProgramSpec",
    "VariableSpec",
]

_LAZY = {"Collection", "Map", "Program"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from flowkit.ebpf import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'flowkit.ebpf' has no attribute {name!r}")
