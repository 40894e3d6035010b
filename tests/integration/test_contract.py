"""The contract as other languages see it (issue 15, item 5): the descriptor set alone is
enough for grpcurl (health and google.rpc included), reflection answers as v1 and v1alpha,
health checks without the routing header have a documented meaning, and the label table is
data, not enum value options."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from medseg import addresses
from medseg.client import Client
from medseg.labels import COLORS, NAMES
from tests.integration.conftest import tool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROTOSET = REPO / "gateway_envoy" / "medseg.pb"


def _grpcurl(stack, *args: str) -> subprocess.CompletedProcess:
    """grpcurl with the descriptor set only (no reflection)."""
    return subprocess.run([tool("grpcurl"), "-plaintext", "-protoset", str(PROTOSET), *args[:-1],
                           stack.gateway, args[-1]], capture_output=True, text=True, timeout=30)


def test_descriptor_set_carries_health_and_google_rpc():
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(PROTOSET.read_bytes())
    names = {f.name for f in files.file}
    assert {"grpc/health/v1/health.proto", "google/rpc/status.proto", "google/rpc/code.proto",
            "google/rpc/error_details.proto"} <= names
    for vendored in ("grpc/health/v1/health.proto", "google/rpc/status.proto", "google/rpc/code.proto",
                     "google/rpc/error_details.proto"):
        assert (REPO / "protos" / "third_party" / vendored).exists(), vendored


@pytest.mark.parametrize("service", ["postprocess", "smoothing"])
def test_grpcurl_protoset_health_check(stack, service):
    request = json.dumps({"service": addresses.SERVICE_NAMES[service]})
    result = _grpcurl(stack, "-H", f"{addresses.HEALTH_ROUTE_HEADER}: {service}", "-d", request,
                      "grpc.health.v1.Health/Check")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "SERVING"}


def test_health_without_the_header_is_the_gateway_aggregate(stack):
    """No x-medseg-service: service "" is answered by the first healthy server (SERVING when
    the gateway has a serving backend); a named service needs the header."""
    result = _grpcurl(stack, "-d", "{}", "grpc.health.v1.Health/Check")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "SERVING"}
    with grpc.insecure_channel(stack.gateway) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
        # The first healthy server in the aggregate's order answers for itself.
        first = next(s for s in ("postprocess", "smoothing", "nnunet", "case") if s in stack.services)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=addresses.SERVICE_NAMES[first]), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_grpcurl_protoset_list_labels(stack):
    result = _grpcurl(stack, "-d", "{}", "medseg.postprocess.v1.PostprocessService/ListLabels")
    assert result.returncode == 0, result.stderr
    labels = json.loads(result.stdout)["labels"]
    assert [(e.get("value", 0), e["name"], e["color"]) for e in labels] == \
        [(v, NAMES[v], COLORS[v]) for v in sorted(NAMES)]
    assert labels[1]["enumName"] == "LABEL_KIDNEY"
    with Client(stack.gateway) as client:
        assert [(e.value, e.name) for e in client.list_labels()] == sorted(NAMES.items())


def test_grpcurl_protoset_error_details_decode(stack):
    """An INVALID_ARGUMENT through the gateway, decoded by grpcurl from the descriptor set
    alone: the BadRequest detail is readable (google.rpc types are in the set)."""
    result = _grpcurl(stack, "-format-error", "-d", json.dumps({"params": {"mask_path": "a\u0000b"}}),
                      "medseg.postprocess.v1.PostprocessService/Measure")
    assert result.returncode != 0
    error = json.loads(result.stdout.strip() or result.stderr.strip())  # grpcurl prints errors on stderr
    assert error["code"] == 3
    violation = error["details"][0]
    assert violation["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert violation["fieldViolations"][0]["field"] == "params.mask_path"


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_v1_and_v1alpha_through_the_gateway(stack, version):
    method = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    with grpc.insecure_channel(stack.gateway) as channel:
        call = channel.stream_stream(method, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol="medseg.postprocess.v1.PostprocessService")]
        responses = list(call(iter(requests), timeout=20))
    services = {s.name for s in responses[0].list_services_response.service}
    assert set(addresses.SERVICE_NAMES.values()) | {"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                                                    "grpc.reflection.v1alpha.ServerReflection"} <= services
    files = [descriptor_pb2.FileDescriptorProto.FromString(b)
             for b in responses[1].file_descriptor_response.file_descriptor_proto]
    assert "medseg/postprocess/v1/postprocess.proto" in {f.name for f in files}
