"""The typed facade over flowkit's C extension (``csrc/``, compiled as ``flowkit._native``).

No module outside this package touches cffi's ``ffi`` or ``lib``: each C call the project
makes is a typed function or method here, C pointers are owned handle objects, buffers are
``bytes`` or numpy arrays, and negative errno returns become :class:`NativeError` naming the
failing call. The modules group the C parts:

- :mod:`flowkit.native.encode`: flow encoders (NetObserv JSON, pbflow, IPFIX, OTLP) and the
  column gather of the Arrow export;
- :mod:`flowkit.native.flows`: the flow table, kernel drainer, ring-buffer reader, flow
  output buffers and the eBPF counters;
- :mod:`flowkit.native.libbpf`: libbpf objects, programs and maps (the loader);
- :mod:`flowkit.native.tc`: TCX links, clsact filters and tracing links.

``flowkit.native._lib`` is the only module importing ``flowkit._native`` (typed by
``flowkit/_native.pyi``, generated from the cdef by ``scripts/gen-native-stub.py``).
Calls are per batch, never per flow: the facade adds one Python call to each.
"""

from __future__ import annotations

from flowkit.native._lib import NativeError, check

__all__ = ["NativeError", "check"]
