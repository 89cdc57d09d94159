#!/bin/sh
# Regenerate flowkit/pbflow/flow_pb2.py (+ .pyi type stubs) from flow.proto.
#
# The generated module is committed, so installing flowkit never needs protoc. Run this after
# editing flow.proto, from anywhere:   scripts/gen-proto.sh
# Needs grpcio-tools (in the `test` extra):   pip install grpcio-tools
# The gRPC client/server glue is hand-written (flowkit/pbflow/service.py), so no
# *_pb2_grpc.py module is generated: that keeps flowkit free of a minimum grpcio version.
#
# The generated module declares the protobuf version it was generated with and refuses to import
# under an older runtime: keep the `protobuf>=` bound of the `grpc` extra at or above it.
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
"$PYTHON" -m grpc_tools.protoc \
    --proto_path=. \
    --python_out=. \
    --pyi_out=. \
    flowkit/pbflow/flow.proto
echo "generated flowkit/pbflow/flow_pb2.py and flow_pb2.pyi"
