"""Default addresses of the local stack: the one place for ports and service names.

Each port can be overridden by the environment variable named beside it; the Makefile, the
Envoy and supervisord configs (rendered by gateway_envoy/stack.py), the servers and the CLI
all read them from here.
"""
from __future__ import annotations

import os

from medseg.cases.v1 import cases_pb2
from medseg.nnunet.v1 import nnunet_pb2
from medseg.postprocess.v1 import postprocess_pb2
from medseg.smoothing.v1 import smoothing_pb2

# Full gRPC service name of each service (also its health-check service name), from the
# contract's descriptors.
SERVICE_NAMES = {
    "nnunet": nnunet_pb2.DESCRIPTOR.services_by_name["NnUNetService"].full_name,
    "smoothing": smoothing_pb2.DESCRIPTOR.services_by_name["SmoothingService"].full_name,
    "postprocess": postprocess_pb2.DESCRIPTOR.services_by_name["PostprocessService"].full_name,
    "case": cases_pb2.DESCRIPTOR.services_by_name["CaseService"].full_name,
}
SERVICES = tuple(SERVICE_NAMES)
# "viewer": the viewer's HTTP server (static bundle, case files), behind the gateway's /viewer/.
_DEFAULT_PORTS = {"gateway": 8080, "admin": 9901, "nnunet": 50051, "smoothing": 50052,
                  "postprocess": 50053, "case": 50054, "viewer": 50055, "metrics": 9902}
# Each server's Prometheus metrics (HTTP /metrics): its gRPC port + METRICS_OFFSET (so every
# replica has its own), unless MEDSEG_<SERVICE>_METRICS_PORT. "metrics": Envoy's own, the one
# path /stats/prometheus of its loopback-only admin.
METRICS_OFFSET = 1000
# Header a client sets on grpc.health.v1 calls so the gateway routes them to that service.
HEALTH_ROUTE_HEADER = "x-medseg-service"


def port(name: str) -> int:
    """Port of 'gateway', 'admin', 'viewer' or a service; env MEDSEG_<NAME>_PORT overrides."""
    return int(os.environ.get(f"MEDSEG_{name.upper()}_PORT", _DEFAULT_PORTS[name]))


def metrics_port(service: str, grpc_port: int | None = None) -> int:
    """Port of a server's /metrics; env MEDSEG_<SERVICE>_METRICS_PORT overrides (0: none)."""
    value = os.environ.get(f"MEDSEG_{service.upper()}_METRICS_PORT")
    if value:
        return int(value)
    return (port(service) if grpc_port is None else grpc_port) + METRICS_OFFSET


def gateway_address() -> str:
    """host:port clients call; env MEDSEG_GATEWAY overrides."""
    return os.environ.get("MEDSEG_GATEWAY", f"localhost:{port('gateway')}")
