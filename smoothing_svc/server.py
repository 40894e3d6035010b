"""SmoothingService: thin gRPC layer over smoothing_svc.meshing.

Run: python -m smoothing_svc.server (configuration from MEDSEG_* environment variables).
"""
from __future__ import annotations

import hashlib

from medseg import codec
from medseg.serving.calls import StreamingCall
from medseg.serving.config import ServerConfig
from medseg.serving.errors import FieldError, streaming_rpc
from medseg.serving.server import Server, serve_forever, setup_logging
from medseg.serving.work import WorkQueue
from medseg.smoothing.v1 import smoothing_pb2 as pb
from medseg.smoothing.v1 import smoothing_pb2_grpc
from medseg.volume.v1 import volume_pb2 as vpb
from smoothing_svc.meshing import MeshOptions, encode_meshes, mesh_labels, write_meshes

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SmoothingService"].full_name
_FORMATS = {pb.MESH_FORMAT_UNSPECIFIED: "obj", pb.MESH_FORMAT_OBJ: "obj", pb.MESH_FORMAT_STL: "stl",
            pb.MESH_FORMAT_PLY: "ply", pb.MESH_FORMAT_GLB: "glb"}
_SYSTEMS = {pb.COORDINATE_SYSTEM_UNSPECIFIED: "LPS", pb.COORDINATE_SYSTEM_LPS: "LPS",
            pb.COORDINATE_SYSTEM_RAS: "RAS"}


def mesh_options(params: pb.MeshMaskParams) -> tuple[MeshOptions, str]:
    if params.format not in _FORMATS:
        raise FieldError("params.format", f"unknown mesh format {params.format}")
    if params.coordinate_system not in _SYSTEMS:
        raise FieldError("params.coordinate_system", f"unknown value {params.coordinate_system}")
    if not 0.0 <= params.decimation <= 0.95:
        raise FieldError("params.decimation", f"must be within 0..0.95, got {params.decimation}")
    if params.HasField("smoothing") and not 0.0 <= params.smoothing <= 1.0:
        raise FieldError("params.smoothing", f"must be within 0..1, got {params.smoothing}")
    if params.HasField("min_island_mm3") and params.min_island_mm3 < 0:
        raise FieldError("params.min_island_mm3", f"must not be negative, got {params.min_island_mm3}")
    options = MeshOptions(
        labels=list(params.labels) or None,
        smoothing=params.smoothing if params.HasField("smoothing") else None,
        decimation=params.decimation,
        coordinate_system=_SYSTEMS[params.coordinate_system],
    )
    if params.HasField("min_island_mm3"):
        options.min_island_mm3 = params.min_island_mm3
    return options, _FORMATS[params.format]


def _file_digest(name: str, data: bytes, path: str) -> vpb.Digest:
    return vpb.Digest(role=name, path=path, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


class SmoothingServicer(smoothing_pb2_grpc.SmoothingServiceServicer):
    def __init__(self, config: ServerConfig):
        self.config = config
        self.queue = WorkQueue(config.compute_workers, config.queue_capacity, "smoothing")

    @streaming_rpc
    def MeshMask(self, request_iterator, context):
        call = StreamingCall(context, self.config, pb.MeshMaskResponse, chunk_field="file")
        params = call.receive(request_iterator)
        options, fmt = mesh_options(params)
        mask = call.load_mask("mask", params.mask_path)
        call.unused_inline({"mask"})
        meshes = yield from call.run(self.queue, lambda progress, cancelled: mesh_labels(
            mask, options, progress=progress, cancelled=cancelled))
        summaries = [pb.MeshSummary(label=m.value, name=m.name, vertices=len(m.vertices),
                                    faces=len(m.faces), volume_ml=m.volume_ml, area_mm2=m.area_mm2,
                                    closed=m.closed, note=m.note) for m in meshes]
        if not any(len(m.faces) for m in meshes):
            note = ("mask has no labelled voxels" if not meshes
                    else "no requested label has a surface: " + "; ".join(m.note for m in meshes))
            yield pb.MeshMaskResponse(result=pb.MeshMaskResult(meshes=summaries, note=note,
                                                               info=call.info()))
            return
        output_path = params.output_path
        if not output_path and not call.wants_inline(vpb.OutputOptions(inline=params.inline)):
            output_path = call.default_output("mesh").replace(".nii.gz", f".{fmt}")
        files: dict[str, bytes] = {}
        paths: list[str] = []
        if output_path:
            target = call.root.output("params.output_path", output_path)
            with call.timed("write"):
                written = write_meshes(meshes, target, fmt)
            files = {path.name: path.read_bytes() for path in written}
            paths = [call.root.relative(path) for path in written]
            call.sent.extend(_file_digest(name, data, path) for (name, data), path in zip(files.items(), paths))
        if params.inline or not output_path:
            files = files or encode_meshes(meshes, fmt, stem="mesh")
            with call.timed("send"):
                for name, data in files.items():
                    for chunk in codec.file_chunks(name, data):
                        yield pb.MeshMaskResponse(file=chunk)
                    call.sent.append(_file_digest(name, data, ""))
        yield pb.MeshMaskResponse(result=pb.MeshMaskResult(meshes=summaries, paths=paths,
                                                           info=call.info()))


def create_server(config: ServerConfig) -> Server:
    """Build the server (bound, not started, NOT_SERVING). `server.port` is the bound port."""
    server = Server(config, SERVICE_NAME)
    servicer = SmoothingServicer(config)
    smoothing_pb2_grpc.add_SmoothingServiceServicer_to_server(servicer, server.grpc)
    server.on_stop = servicer.queue.shutdown
    return server


def main() -> None:
    setup_logging()
    server = create_server(ServerConfig.from_env("smoothing")).start()
    server.set_serving(True)  # nothing to load: ready as soon as it listens
    serve_forever(server)


if __name__ == "__main__":
    main()
