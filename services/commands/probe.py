"""``python -m services.commands.probe URL``: exit 0 when a service is up (container healthchecks; no curl
needed). ``grpc://host:port`` asks the standard gRPC health service for SERVING;
``http://host:port/path`` expects HTTP 200."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_S = 5.0


def grpc_serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        usage = "usage: python -m services.commands.probe grpc://HOST:PORT | http://HOST:PORT/PATH"
        print(usage, file=sys.stderr)
        return 2
    url = args[0]
    ok = grpc_serving(url.removeprefix("grpc://")) if url.startswith("grpc://") else http_ok(url)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
