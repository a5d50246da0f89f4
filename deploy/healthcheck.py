"""Container HEALTHCHECK for plain ``docker run``: query grpc.health.v1 on the local server.

Kubernetes does not use this file; its native gRPC probes query the same service.
Exits 0 when the overall service ("") reports SERVING, 1 otherwise.

With TLS on (``LSTM_SERVE_TLS__CERT_FILE``) the gRPC port needs a TLS client (and,
with mTLS, a client certificate), so the check asks the plaintext health-only port
``LSTM_SERVE_SERVER__HEALTH_PORT`` instead; it uses that port whenever it is set.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def target() -> str | None:
    """Where to ask: the health-only port when set, else the gRPC port unless it speaks TLS."""
    health_port = os.environ.get("LSTM_SERVE_SERVER__HEALTH_PORT", "")
    if health_port:
        return f"127.0.0.1:{health_port}"
    if os.environ.get("LSTM_SERVE_TLS__CERT_FILE"):
        return None
    return f"127.0.0.1:{os.environ.get('LSTM_SERVE_SERVER__PORT', '50051')}"


def main() -> int:
    """Return the process exit status for one health query."""
    address = target()
    if address is None:
        print(
            "health check: TLS is on; set LSTM_SERVE_SERVER__HEALTH_PORT for a plaintext health port",
            file=sys.stderr,
        )
        return 1
    try:
        with grpc.insecure_channel(address) as channel:
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
