"""pbflow: flowkit's protobuf flow schema (``flow.proto``), NetObserv wire-compatible.

* :mod:`flowkit.pbflow.flow_pb2` — the generated messages (``Record``, ``Records``, ...),
  regenerated with ``scripts/gen-proto.sh``;
* :mod:`flowkit.pbflow.convert` — flowkit flows to and from ``Record`` messages;
* :mod:`flowkit.pbflow.service` — the ``pbflow.Collector`` gRPC client and server glue.

Importing this package alone needs nothing beyond flowkit; the submodules need ``protobuf`` (and
``grpcio`` for ``service``), both in the ``flowkit-ebpf[grpc]`` extra.
"""

from __future__ import annotations

import os
from typing import Any

COLLECTOR_SERVICE = "pbflow.Collector"
"""Fully qualified name of the collector gRPC service."""

SEND_METHOD = "/pbflow.Collector/Send"
"""The gRPC method path agents call with a ``Records`` message."""


def import_grpc() -> Any:
    """Import grpc with its C core quiet below ERROR (unless GRPC_VERBOSITY says otherwise).

    Left at its default, the core prints a line per failed TLS handshake, i.e. per retry; the
    exporter reports those failures itself, rate-limited. The variable is read once, when grpc
    is first imported.
    """
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    import grpc

    return grpc
