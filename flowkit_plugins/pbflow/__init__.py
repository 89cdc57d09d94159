"""pbflow: flowkit's protobuf flow schema (``flow.proto``), NetObserv wire-compatible.

* :mod:`flowkit_plugins.pbflow.flow_pb2` — the generated messages (``Record``, ``Records``, ...),
  regenerated with ``scripts/gen-proto.sh``;
* :mod:`flowkit_plugins.pbflow.convert` — flowkit flows to and from ``Record`` messages;
* :mod:`flowkit_plugins.pbflow.service` — the ``pbflow.Collector`` gRPC client and server glue.

Importing this package alone needs nothing beyond flowkit; the submodules need ``protobuf`` (and
``grpcio`` for ``service``), both in the ``flowkit[grpc]`` extra.
"""

from __future__ import annotations

COLLECTOR_SERVICE = "pbflow.Collector"
"""Fully qualified name of the collector gRPC service."""

SEND_METHOD = "/pbflow.Collector/Send"
"""The gRPC method path agents call with a ``Records`` message."""
