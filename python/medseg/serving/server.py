"""gRPC server factory shared by the three servers: health (NOT_SERVING until ready, back
to NOT_SERVING on shutdown), reflection for the whole contract, message limits, graceful
SIGTERM."""
from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures

import grpc
from google.longrunning import operations_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

# addresses imports every contract, so reflection on any server describes all the services:
# the gateway routes reflection to one cluster, and that one must answer for everything.
from medseg import addresses
from medseg.codec import MAX_MESSAGE_BYTES
from medseg.serving.config import ServerConfig

log = logging.getLogger("medseg.serving")

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
# Health-check name that is SERVING while the process runs, whatever its readiness: the
# liveness probe's (a server whose models failed to load is alive but not ready).
LIVENESS_SERVICE = "medseg.liveness"


def _register_reflection_v1_descriptor() -> None:
    """grpc.reflection.v1 is v1alpha renamed (same messages, same field numbers), and
    grpcio-reflection only ships v1alpha: add a renamed copy of its file to the default
    pool, so reflection describes v1 too."""
    name = "grpc/reflection/v1/reflection.proto"
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(name)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = name, "grpc.reflection.v1"
    proto.ClearField("options")

    def rename(type_name: str) -> str:
        return type_name.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.")

    def fix(messages) -> None:
        for message in messages:
            for field in message.field:
                if field.HasField("type_name"):
                    field.type_name = rename(field.type_name)
            fix(message.nested_type)

    fix(proto.message_type)
    for service in proto.service:
        for method in service.method:
            method.input_type, method.output_type = rename(method.input_type), rename(method.output_type)
    pool.AddSerializedFile(proto.SerializeToString())


def enable_reflection(server: grpc.Server, service_names: list[str]) -> None:
    """Server reflection as grpc.reflection.v1alpha and grpc.reflection.v1 (one servicer:
    the two are wire-identical)."""
    _register_reflection_v1_descriptor()
    names = list(service_names) + [reflection.SERVICE_NAME, REFLECTION_V1]
    servicer = reflection.ReflectionServicer(names)
    reflection.enable_server_reflection(names, server)
    handler = grpc.method_handlers_generic_handler(REFLECTION_V1, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)})
    server.add_generic_rpc_handlers((handler,))


class Server:
    """A started-or-startable gRPC server with its health servicer."""

    def __init__(self, config: ServerConfig, service_name: str):
        self.config = config
        self.service_name = service_name
        self.on_stop = None  # e.g. the work queue's shutdown, run after the server stopped
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.rpc_threads,
                                       thread_name_prefix=config.service),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_time_ms", 20000),
                ("grpc.keepalive_timeout_ms", 10000),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ],
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        enable_reflection(self.grpc, list(addresses.SERVICE_NAMES.values())
                          + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                             # the case service's jobs, for generic long-running-operation tools
                             operations_pb2.DESCRIPTOR.services_by_name["Operations"].full_name])
        self.set_serving(False)
        self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self.port = self.grpc.add_insecure_port(f"{config.host}:{config.port}")
        if self.port == 0:
            raise OSError(f"cannot bind {config.host}:{config.port}")

    def set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", self.service_name):
            self.health.set(name, status)

    def start(self) -> "Server":
        self.grpc.start()
        from medseg.serving import metrics

        self.metrics_port = metrics.serve(self.config.host, self.config.metrics_port)
        return self

    def stop(self, drain_seconds: float | None = None, grace: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, give the gateway time to notice, then let in-flight
        calls finish within the grace period."""
        self.health.enter_graceful_shutdown()
        drain = self.config.drain_seconds if drain_seconds is None else drain_seconds
        if drain:
            threading.Event().wait(drain)
        self.grpc.stop(self.config.grace_seconds if grace is None else grace).wait()


def serve_forever(server: Server) -> None:
    """Block until SIGTERM/SIGINT, then stop gracefully."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("%s listening on %s:%d", server.service_name, server.config.host, server.port)
    stop.wait()
    log.info("%s shutting down", server.service_name)
    server.stop()
    if server.on_stop:
        server.on_stop()


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
