"""Container health check over gRPC: `python3 -m medseg.serving.probe PORT [SERVICE]` exits 0
when the server on 127.0.0.1:PORT answers SERVING for SERVICE (default medseg.liveness:
alive), 1 otherwise. The images' HEALTHCHECK runs it (no grpc_health_probe binary needed)."""
from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str]) -> int:
    port = int(argv[0])
    service = argv[1] if len(argv) > 1 else "medseg.liveness"
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=3)
    except grpc.RpcError as exc:
        print(f"{service} on {port}: {exc.code().name}", file=sys.stderr)
        return 1
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
