"""Default addresses of the local stack: the one place for ports.

Each can be overridden by the environment variable named beside it; the Makefile, the
Envoy and supervisord configs (rendered by gateway_envoy/stack.py) and the CLI all read
them from here.
"""
from __future__ import annotations

import os

SERVICES = ("nnunet", "smoothing", "postprocess")
# Full gRPC service name of each service (also its health-check service name).
SERVICE_NAMES = {
    "nnunet": "medseg.nnunet.v1.NnUNetService",
    "smoothing": "medseg.smoothing.v1.SmoothingService",
    "postprocess": "medseg.postprocess.v1.PostprocessService",
}
_DEFAULT_PORTS = {"gateway": 8080, "admin": 9901, "nnunet": 50051, "smoothing": 50052,
                  "postprocess": 50053}
# Header a client sets on grpc.health.v1 calls so the gateway routes them to that service.
HEALTH_ROUTE_HEADER = "x-medseg-service"


def port(name: str) -> int:
    """Port of 'gateway', 'admin' or a service; env MEDSEG_<NAME>_PORT overrides."""
    return int(os.environ.get(f"MEDSEG_{name.upper()}_PORT", _DEFAULT_PORTS[name]))


def gateway_address() -> str:
    return os.environ.get("MEDSEG_GATEWAY", f"localhost:{port('gateway')}")
