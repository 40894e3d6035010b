"""PostprocessService: thin gRPC layer over the plain functions in this package.

Run: python -m postprocess_svc.server (configuration from MEDSEG_* environment variables).
"""
from __future__ import annotations

from medseg import addresses
from medseg.labels import COLORS, NAMES, Label
from medseg.postprocess.v1 import postprocess_pb2 as pb
from medseg.postprocess.v1 import postprocess_pb2_grpc
from medseg.serving.calls import StreamingCall
from medseg.serving.config import ServerConfig
from medseg.serving.errors import FieldError, Unsupported, streaming_rpc, unary_rpc
from medseg.serving.server import Server, serve_forever, setup_logging
from medseg.serving.work import WorkQueue
from medseg.volume.v1 import volume_pb2 as vpb
from postprocess_svc.fat import add_fat
from postprocess_svc.graph import select_backend
from postprocess_svc.measure import measure_mask
from postprocess_svc.repair import RepairLimits, connect_label
from postprocess_svc.template import fit_template
from postprocess_svc.tumor import tumor_facts

SERVICE_NAME = addresses.SERVICE_NAMES["postprocess"]
_BACKENDS = {pb.GRAPH_BACKEND_UNSPECIFIED: "auto", pb.GRAPH_BACKEND_SCIPY: "scipy",
             pb.GRAPH_BACKEND_CUGRAPH: "cugraph"}


def _box(item) -> vpb.BoundingBox:
    return vpb.BoundingBox(min_index=list(item.min_index), max_index=list(item.max_index),
                           min_mm=list(item.min_mm), max_mm=list(item.max_mm))


def _present(**fields) -> dict:
    """Keyword arguments without the None values (unset optional fields)."""
    return {name: value for name, value in fields.items() if value is not None}


def _tumor(facts) -> pb.TumorFacts:
    renal = facts.renal
    return pb.TumorFacts(
        voxel_count=facts.voxel_count, volume_ml=facts.volume_ml, centroid_mm=list(facts.centroid_mm),
        max_diameter_mm=facts.max_diameter_mm, side=facts.side, notes=list(facts.notes),
        polar_location=facts.polar_location or "", sinus_source=facts.sinus_source or "",
        renal=pb.RenalScore(radius=renal.radius, anterior=renal.anterior or "", **_present(
            exophytic=renal.exophytic, nearness=renal.nearness, location=renal.location, total=renal.total)),
        **_present(exophytic_fraction=facts.exophytic_fraction, distance_to_sinus_mm=facts.distance_to_sinus_mm,
                   distance_to_artery_mm=facts.distance_to_artery_mm,
                   distance_to_vein_mm=facts.distance_to_vein_mm))


def _report(report) -> pb.RepairReport:
    return pb.RepairReport(
        pieces_before=report.pieces_before, pieces_after=report.pieces_after,
        bridges=[pb.Bridge(label=b.label, length_mm=b.length_mm, radius_start_mm=b.radius_start_mm,
                           radius_end_mm=b.radius_end_mm, start_mm=list(b.start_mm),
                           end_mm=list(b.end_mm), voxels_added=b.voxels_added)
                 for b in report.bridges],
        rejected=list(report.rejected), backend=report.backend, note=report.note)


class PostprocessServicer(postprocess_pb2_grpc.PostprocessServiceServicer):
    def __init__(self, config: ServerConfig):
        self.config = config
        self.queue = WorkQueue(config.compute_workers, config.queue_capacity, "postprocess")

    @streaming_rpc
    def Measure(self, request_iterator, context):
        call = StreamingCall(context, self.config, pb.MeasureResponse)
        params = call.receive(request_iterator)
        mask = call.load_mask("mask", params.mask_path)
        call.unused_inline({"mask"})
        def work(progress, cancelled):
            measured = measure_mask(mask, progress=progress, cancelled=cancelled)
            return measured, (tumor_facts(mask) if params.tumor_facts else [])

        measurements, tumors = yield from call.run(self.queue, work)
        labels = [pb.LabelMeasurement(
            value=m.value, name=m.name, voxel_count=m.voxel_count, volume_ml=m.volume_ml,
            bbox=_box(m), component_count=m.component_count,
            largest_diameter_mm=m.largest_diameter_mm,
            components=[pb.Component(voxel_count=c.voxel_count, volume_ml=c.volume_ml, bbox=_box(c),
                                     largest_diameter_mm=c.largest_diameter_mm)
                        for c in m.components]) for m in measurements]
        yield pb.MeasureResponse(result=pb.MeasureResult(labels=labels, tumors=[_tumor(t) for t in tumors],
                                                         info=call.info()))

    @streaming_rpc
    def AddFat(self, request_iterator, context):
        call = StreamingCall(context, self.config, pb.AddFatResponse)
        params = call.receive(request_iterator)
        mask = call.load_mask("mask", params.mask_path)
        organs = call.load_mask("organs", params.organs_path)
        ct = call.load("ct", params.ct_path) if call.has_input("ct", params.ct_path) else None
        call.unused_inline({"mask", "organs", "ct"})
        options = call.given(params, "margin_mm", "hu_min", "hu_max")
        out, report = yield from call.run(self.queue, lambda progress, cancelled: add_fat(
            mask, organs, ct, **options, progress=progress, cancelled=cancelled))
        output = yield from call.deliver(out, "mask", params.output, "fat")
        yield pb.AddFatResponse(result=pb.AddFatResult(
            output=output, fat_volume_ml=report.fat_volume_ml, used_ct=report.used_ct,
            note=report.note, info=call.info()))

    @streaming_rpc
    def SampleFromTemplate(self, request_iterator, context):
        call = StreamingCall(context, self.config, pb.SampleFromTemplateResponse)
        params = call.receive(request_iterator)
        mask = call.load_mask("mask", params.mask_path)
        template = (call.load_mask("template", params.template_path)
                    if call.has_input("template", params.template_path) else None)
        call.unused_inline({"mask", "template"})
        out, report = yield from call.run(self.queue, lambda progress, cancelled: fit_template(
            mask, template, progress=progress, cancelled=cancelled))
        output = yield from call.deliver(out, "mask", params.output, "sample")
        fit = pb.TemplateFit(kidney_dice_before=report.kidney_dice_before,
                             kidney_dice_after=report.kidney_dice_after,
                             metric_value=report.metric_value, note=report.note)
        yield pb.SampleFromTemplateResponse(result=pb.SampleFromTemplateResult(
            output=output, fit=fit, info=call.info()))

    def _connect(self, request_iterator, context, response_cls, result_cls, label, suffix):
        call = StreamingCall(context, self.config, response_cls)
        params = call.receive(request_iterator)
        mask = call.load_mask("mask", params.mask_path)
        call.unused_inline({"mask"})
        limits = RepairLimits(**call.given(params.limits, "max_gap_mm", "max_angle_deg", "min_radius_ratio"))
        backend = _BACKENDS.get(params.backend)
        if backend is None:
            raise FieldError("params.backend", f"unknown graph backend {params.backend}")
        if backend == "cugraph":
            try:
                select_backend("cugraph")
            except ValueError as exc:
                raise Unsupported(f"params.backend: {exc}") from None
        out, report = yield from call.run(self.queue, lambda progress, cancelled: connect_label(
            mask, label, limits, backend=backend, progress=progress, cancelled=cancelled))
        output = yield from call.deliver(out, "mask", params.output, suffix)
        yield response_cls(result=result_cls(output=output, report=_report(report), info=call.info()))

    @streaming_rpc
    def ConnectVessels(self, request_iterator, context):
        yield from self._connect(request_iterator, context, pb.ConnectVesselsResponse,
                                 pb.ConnectVesselsResult, Label.ARTERY, "vessels")

    @streaming_rpc
    def ConnectUreters(self, request_iterator, context):
        yield from self._connect(request_iterator, context, pb.ConnectUretersResponse,
                                 pb.ConnectUretersResult, Label.URETER, "ureters")

    @unary_rpc
    def ListLabels(self, request, context):
        enum = vpb.Label.DESCRIPTOR.values_by_number
        return pb.ListLabelsResponse(labels=[
            pb.LabelInfo(value=value, name=name, color=COLORS[value], enum_name=enum[value].name)
            for value, name in sorted(NAMES.items())])


def create_server(config: ServerConfig) -> Server:
    """Build the server (bound, not started, NOT_SERVING). `server.port` is the bound port."""
    server = Server(config, SERVICE_NAME)
    servicer = PostprocessServicer(config)
    postprocess_pb2_grpc.add_PostprocessServiceServicer_to_server(servicer, server.grpc)
    server.on_stop = servicer.queue.shutdown
    return server


def main() -> None:
    setup_logging()
    server = create_server(ServerConfig.from_env("postprocess", default_workers=2)).start()
    server.set_serving(True)  # nothing to load: ready as soon as it listens
    serve_forever(server)


if __name__ == "__main__":
    main()
