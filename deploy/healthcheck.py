"""Container HEALTHCHECK for plain ``docker run``: query grpc.health.v1 on the local server.

Kubernetes does not use this file; its native gRPC probes query the same service.
Exits 0 when the overall service ("") reports SERVING, 1 otherwise.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    """Return the process exit status for one health query."""
    port = os.environ.get("LSTM_SERVE_SERVER__PORT", "50051")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
    except grpc.RpcError as exc:
        print(f"health check failed: {exc.code().name}", file=sys.stderr)
        return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    if not serving:
        print(f"health status {reply.status}", file=sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
