"""NnUNetService: resident nnU-Net predictors behind one bounded queue per device.

Start-up: the server listens at once (NOT_SERVING), builds and warms up every task's
predictors from the registry, then turns SERVING. Calls made before that answer
UNAVAILABLE. When the registry or a model cannot be loaded the server stays up, NOT_SERVING,
and ListModels' `load_error` says why (the gateway routes ListModels to it regardless of
its health). Run: python -m nnunet_svc.server.
"""
from __future__ import annotations

import logging
import threading

from medseg import addresses
from medseg.labels import PHASES
from medseg.nnunet.v1 import nnunet_pb2 as pb
from medseg.nnunet.v1 import nnunet_pb2_grpc
from medseg.serving.calls import StreamingCall
from medseg.serving.config import ServerConfig
from medseg.serving.errors import FieldError, NotReady, streaming_rpc, unary_rpc
from medseg.serving.server import Server, serve_forever, setup_logging
from medseg.serving.work import WorkQueue
from medseg.volume.v1 import volume_pb2 as vpb
from nnunet_svc.registry import load_registry, model_digest, model_version

log = logging.getLogger("medseg.nnunet")
SERVICE_NAME = addresses.SERVICE_NAMES["nnunet"]
TASK_NAMES = {pb.TASK_TOTAL: "total", pb.TASK_VESSELS: "vessels", pb.TASK_URETER: "ureter",
              pb.TASK_TUMOR: "tumor"}


class NnUNetServicer(nnunet_pb2_grpc.NnUNetServiceServicer):
    def __init__(self, config: ServerConfig, registry: dict | None = None):
        self.config = config
        self.load_error: str | None = None
        if registry is None:
            try:
                registry = load_registry(config.model_registry)
            except ValueError as exc:  # the server stays up, NOT_SERVING; ListModels says why
                self.load_error = str(exc)
                log.error("model registry unusable: %s", exc)
                registry = {}
        self.registry = registry
        self.predictors: dict = {}
        self.device = "loading"
        # One predictor is not thread-safe and the device is the bottleneck: one worker per
        # device, a bounded queue in front of it.
        self.queue = WorkQueue(1, config.queue_capacity, "nnunet")
        self.digests: dict[str, str] = {}

    def load(self, on_ready=None) -> None:
        """Build and warm up every predictor (run in a background thread at start-up)."""
        from nnunet_svc.predict import build_predictors, default_device

        if self.load_error:  # the registry itself failed: nothing to load
            self.device = "none"
            return
        step = {"message": ""}  # what was being loaded ("loading tumor"), for load_error

        def progress(stage, fraction, message):
            step["message"] = message
            log.info("%s", message)

        try:
            device = default_device()
            self.device = str(device)
            log.info("loading %d task(s) on %s", len(self.registry), device)
            limit = {} if self.config.nnunet_max_voxels is None else {"max_voxels": self.config.nnunet_max_voxels}
            limit["lean"] = self.config.nnunet_lean
            self.predictors = build_predictors(self.registry, device, progress=progress, **limit)
            log.info("models ready: %s", ", ".join(self.predictors))
            if on_ready:
                on_ready()
        except Exception as exc:  # noqa: BLE001 - reported through ListModels and the log
            where = f" ({step['message']})" if step["message"] else ""
            self.load_error = f"{type(exc).__name__}{where}: {exc}"
            log.exception("model loading failed")

    # --- helpers ------------------------------------------------------------------------

    def _digest(self, task: str) -> str:
        """The task's model digest, hashed once (checkpoints are large)."""
        if task not in self.digests:
            self.digests[task] = model_digest(self.registry[task].models)
        return self.digests[task]

    def _predictor(self, task: str):
        if self.load_error:
            raise NotReady(f"models failed to load: {self.load_error}")
        if task not in self.registry:
            raise FieldError("params.tasks", f"unknown task '{task}'; registry has {sorted(self.registry)}")
        predictor = self.predictors.get(task)
        if predictor is None or not predictor.ready:
            raise NotReady(f"task '{task}' is still loading; retry shortly")
        return predictor

    def _single(self, request_iterator, context, response_cls, task: str, inputs: dict[str, str]):
        """One task on its images: inputs maps wire role -> params path field."""
        call = StreamingCall(context, self.config, response_cls)
        params = call.receive(request_iterator)
        predictor = self._predictor(task)
        roles = list(inputs)
        images = [call.load(role, getattr(params, field), f"params.{field}")
                  for role, field in inputs.items()]
        call.unused_inline(set(roles))
        # Wire roles ("ct") name the request; the registry names the model's phases.
        phases = dict(zip(predictor.spec.phases, images))
        crop = not getattr(params, "disable_kidney_crop", False)
        mask = yield from call.run(self.queue, lambda progress, cancelled: predictor.predict(
            phases, kidney_crop=crop, progress=progress, cancelled=cancelled), stage="predict")
        output = yield from call.deliver(mask, task, params.output, task)
        yield response_cls(result=pb.SegmentationResult(outputs=[output], device=self.device,
                                                        info=call.info()))

    # --- operations ---------------------------------------------------------------------

    @streaming_rpc
    def SegmentTotal(self, request_iterator, context):
        yield from self._single(request_iterator, context, pb.SegmentTotalResponse, "total",
                                {"ct": "ct_path"})

    @streaming_rpc
    def SegmentVessels(self, request_iterator, context):
        yield from self._single(request_iterator, context, pb.SegmentVesselsResponse, "vessels",
                                {"arterial": "arterial_path", "portal": "portal_path"})

    @streaming_rpc
    def SegmentUreter(self, request_iterator, context):
        yield from self._single(request_iterator, context, pb.SegmentUreterResponse, "ureter",
                                {"delayed": "delayed_path"})

    @streaming_rpc
    def SegmentTumor(self, request_iterator, context):
        yield from self._single(request_iterator, context, pb.SegmentTumorResponse, "tumor",
                                {"ct": "ct_path"})

    @streaming_rpc
    def SegmentCase(self, request_iterator, context):
        call = StreamingCall(context, self.config, pb.SegmentCaseResponse)
        params = call.receive(request_iterator)
        if not params.tasks:
            raise FieldError("params.tasks", "give at least one task")
        names = []
        for value in params.tasks:
            if value not in TASK_NAMES:
                raise FieldError("params.tasks", f"unknown or unspecified task {value}")
            if TASK_NAMES[value] in names:
                raise FieldError("params.tasks", f"task '{TASK_NAMES[value]}' given twice")
            names.append(TASK_NAMES[value])
        predictors = {t: self._predictor(t) for t in names}
        # Each phase is read once and shared by every model that needs it.
        needed = [p for p in PHASES if any(p in predictors[t].spec.phases for t in names)]
        phases = {p: call.load(p, getattr(params, f"{p}_path"), f"params.{p}_path") for p in needed}
        call.unused_inline(set(needed))
        crop = not params.disable_kidney_crop

        def work(progress, cancelled):
            from nnunet_svc.predict import segment_case

            return segment_case(predictors, phases, names, kidney_crop=crop,
                                progress=progress, cancelled=cancelled)

        masks = yield from call.run(self.queue, work, stage="predict")
        outputs = []
        for task in names:
            path = f"{params.output_dir.rstrip('/')}/{task}.nii.gz" if params.output_dir else ""
            output = yield from call.deliver(masks[task], task,
                                             vpb.OutputOptions(path=path, inline=params.inline), task,
                                             field="params.output_dir")
            outputs.append(output)
        yield pb.SegmentCaseResponse(result=pb.SegmentationResult(outputs=outputs, device=self.device,
                                                                  info=call.info()))

    @unary_rpc
    def ListModels(self, request, context):
        models = []
        for name, spec in self.registry.items():
            task = {v: k for k, v in TASK_NAMES.items()}.get(name, pb.TASK_UNSPECIFIED)
            predictor = self.predictors.get(name)
            models.append(pb.ModelInfo(
                task=task, phases=spec.phases,
                labels=[vpb.LabelEntry(value=v, name=n) for v, n in sorted(spec.labels.items())],
                model_folders=[str(m.folder) for m in spec.models],
                model_versions=[model_version(m) for m in spec.models], digest=self._digest(name),
                ready=bool(predictor and predictor.ready), kidney_crop=spec.kidney_crop))
        return pb.ListModelsResponse(models=models, device=self.device,
                                     queue_depth=self.queue.depth,
                                     queue_capacity=self.queue.capacity,
                                     load_error=self.load_error or "")


def create_server(config: ServerConfig, registry: dict | None = None) -> tuple[Server, NnUNetServicer]:
    """Build the server (bound, not started, NOT_SERVING) and its servicer; call
    `servicer.load(on_ready=lambda: server.set_serving(True))` to load the models."""
    server = Server(config, SERVICE_NAME)
    servicer = NnUNetServicer(config, registry)
    nnunet_pb2_grpc.add_NnUNetServiceServicer_to_server(servicer, server.grpc)
    server.on_stop = servicer.queue.shutdown
    return server, servicer


def main() -> None:
    setup_logging()
    server, servicer = create_server(ServerConfig.from_env("nnunet"))
    server.start()
    threading.Thread(target=servicer.load, kwargs={"on_ready": lambda: server.set_serving(True)},
                     name="model-loader", daemon=True).start()
    serve_forever(server)


if __name__ == "__main__":
    main()
