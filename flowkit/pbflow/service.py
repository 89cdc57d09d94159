"""gRPC glue for the ``pbflow.Collector`` service, written by hand over grpc's generic API.

No ``*_pb2_grpc.py`` module is generated: these few functions are all flowkit needs, and they keep
flowkit free of the minimum grpcio version that generated service modules enforce.

* :func:`send_method` — the client side: a callable that sends one serialized ``Records``
  message (bytes) and returns the decoded ``CollectorReply``;
* :func:`collector_handler` — the server side: a generic handler calling ``on_records`` with each
  decoded ``Records`` message, to pass to ``grpc.Server.add_generic_rpc_handlers``;
  :func:`collector_raw_handler` hands over the undecoded bytes instead.

Needs ``grpcio`` and ``protobuf`` (extra ``flowkit-ebpf[grpc]``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from flowkit.pbflow import COLLECTOR_SERVICE
from flowkit.pbflow.flow_pb2 import CollectorReply, Records

SendCallable = Callable[..., CollectorReply]
"""``send(message_bytes, timeout=seconds)``: one unary ``Send`` call (raises ``grpc.RpcError``)."""


def _identity(data: bytes) -> bytes:
    return data


def send_method(channel: grpc.Channel) -> SendCallable:
    """The ``Send`` RPC on ``channel``, taking an already serialized ``Records`` message."""
    method: SendCallable = channel.unary_unary(
        f"/{COLLECTOR_SERVICE}/Send",
        request_serializer=_identity,
        response_deserializer=CollectorReply.FromString,
    )
    return method


def collector_handler(
    on_records: Callable[[Records, grpc.ServicerContext], None],
) -> grpc.GenericRpcHandler:
    """A ``pbflow.Collector`` service calling ``on_records`` for every received message.

    ``on_records`` may abort the call through the context (``context.abort(code, details)``);
    returning normally answers with an empty ``CollectorReply``.
    """

    return _send_handler(on_records, Records.FromString)


def collector_raw_handler(
    on_message: Callable[[bytes, grpc.ServicerContext], None],
) -> grpc.GenericRpcHandler:
    """Like :func:`collector_handler`, but ``on_message`` gets the serialized ``Records``
    message as bytes, undecoded (for servers that decode record by record)."""

    return _send_handler(on_message, _identity)


def _send_handler(
    on_request: Callable[[Any, grpc.ServicerContext], None],
    deserializer: Callable[[bytes], Any],
) -> grpc.GenericRpcHandler:
    """The ``Collector.Send`` handler: ``on_request`` gets each request as ``deserializer``
    made it, and the call is answered with an empty ``CollectorReply``."""

    def send(request: Any, context: grpc.ServicerContext) -> CollectorReply:
        on_request(request, context)
        return CollectorReply()

    handlers: dict[str, Any] = {
        "Send": grpc.unary_unary_rpc_method_handler(
            send,
            request_deserializer=deserializer,
            response_serializer=CollectorReply.SerializeToString,
        )
    }
    handler: grpc.GenericRpcHandler = grpc.method_handlers_generic_handler(
        COLLECTOR_SERVICE, handlers
    )
    return handler
