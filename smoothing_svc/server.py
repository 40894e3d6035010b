"""SmoothingService: thin gRPC layer over smoothing_svc.meshing.

Run: python -m smoothing_svc.server (configuration from MEDSEG_* environment variables).
"""
from __future__ import annotations

from medseg import addresses
from medseg.serving.calls import StreamingCall
from medseg.serving.config import ServerConfig
from medseg.serving.errors import FieldError, streaming_rpc
from medseg.serving.server import Server, serve_forever, setup_logging
from medseg.serving.work import WorkQueue
from medseg.smoothing.v1 import smoothing_pb2 as pb
from medseg.smoothing.v1 import smoothing_pb2_grpc
from smoothing_svc.meshing import MeshOptions, encode_meshes, mesh_labels

SERVICE_NAME = addresses.SERVICE_NAMES["smoothing"]
_FORMATS = {pb.MESH_FORMAT_UNSPECIFIED: "obj", pb.MESH_FORMAT_OBJ: "obj", pb.MESH_FORMAT_STL: "stl",
            pb.MESH_FORMAT_PLY: "ply", pb.MESH_FORMAT_GLB: "glb"}
_SYSTEMS = {pb.COORDINATE_SYSTEM_UNSPECIFIED: "LPS", pb.COORDINATE_SYSTEM_LPS: "LPS",
            pb.COORDINATE_SYSTEM_RAS: "RAS"}
_METHODS = {pb.MESH_METHOD_UNSPECIFIED: "surface_nets", pb.MESH_METHOD_SURFACE_NETS: "surface_nets",
            pb.MESH_METHOD_FLYING_EDGES: "flying_edges"}


def mesh_options(call: StreamingCall, params: pb.MeshMaskParams, threads: int | None) -> tuple[MeshOptions, str]:
    """The request as meshing options; unset optional fields keep meshing's defaults, and
    meshing checks the ranges."""
    if params.format not in _FORMATS:
        raise FieldError("params.format", f"unknown mesh format {params.format}")
    if params.coordinate_system not in _SYSTEMS:
        raise FieldError("params.coordinate_system", f"unknown value {params.coordinate_system}")
    if params.method not in _METHODS:
        raise FieldError("params.method", f"unknown mesh method {params.method}")
    stem = params.file_stem
    if stem and (len(stem) > 200 or stem in (".", "..") or any(c in stem for c in "/\\\x00")):
        raise FieldError("params.file_stem", f"{stem[:80]!r} is not a plain file name (no '/', "
                                             f"at most 200 characters)")
    options = MeshOptions(labels=list(params.labels) or None, decimation=params.decimation,
                          coordinate_system=_SYSTEMS[params.coordinate_system], threads=threads,
                          method=_METHODS[params.method],
                          **call.given(params, "smoothing", "min_island_mm3"))
    return options, _FORMATS[params.format]


class SmoothingServicer(smoothing_pb2_grpc.SmoothingServiceServicer):
    def __init__(self, config: ServerConfig):
        self.config = config
        self.queue = WorkQueue(config.compute_workers, config.queue_capacity, "smoothing")

    @streaming_rpc
    def MeshMask(self, request_iterator, context):
        call = StreamingCall(context, self.config, pb.MeshMaskResponse, chunk_field="file")
        params = call.receive(request_iterator)
        options, fmt = mesh_options(call, params, self.config.mesh_threads)
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
        # As the field comments say: by path and no output_path -> beside the mask (and also
        # inline when asked); an inline mask and no output_path -> inline only.
        output_path = params.output_path
        if not output_path and params.mask_path:
            output_path = call.default_output("mesh", f".{fmt}")
        paths = yield from call.deliver_files(lambda stem: encode_meshes(meshes, fmt, stem=stem),
                                              output_path, params.inline, stem=params.file_stem)
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
