"""NnUNetService: resident nnU-Net predictors behind one bounded queue per device.

Start-up: the server listens at once (NOT_SERVING), builds and warms up every task's
predictors from the registry, then turns SERVING. Calls made before that answer
UNAVAILABLE. When the registry or a model cannot be loaded the server stays up, NOT_SERVING,
and ListModels' `load_error` says why (the gateway routes ListModels to it regardless of
its health).

Models change without a restart: on SIGHUP, or when the registry file changes (polled every
MEDSEG_MODEL_WATCH_SECONDS), new and changed tasks are built and warmed beside the serving
ones and swapped in together (nnunet_svc/live.py); calls in flight finish on the models they
started with. Any registry task is callable by name with Segment. Run: python -m nnunet_svc.server.
"""
from __future__ import annotations

import logging
import signal
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
from nnunet_svc.live import Generation, LiveModels, nnunet_version
from nnunet_svc.registry import model_version

log = logging.getLogger("medseg.nnunet")
SERVICE_NAME = addresses.SERVICE_NAMES["nnunet"]
TASK_NAMES = {pb.TASK_TOTAL: "total", pb.TASK_VESSELS: "vessels", pb.TASK_URETER: "ureter",
              pb.TASK_TUMOR: "tumor"}
MODE_NAMES = {pb.INFERENCE_MODE_UNSPECIFIED: "accurate", pb.INFERENCE_MODE_ACCURATE: "accurate",
              pb.INFERENCE_MODE_FAST: "fast"}


def inference_mode(params) -> str:
    """The registry's name of the request's inference mode."""
    if params.mode not in MODE_NAMES:
        raise FieldError("params.mode", f"unknown inference mode {params.mode}; "
                                        "use INFERENCE_MODE_ACCURATE or INFERENCE_MODE_FAST")
    return MODE_NAMES[params.mode]


def _settings(mode) -> pb.InferenceSettings:
    return pb.InferenceSettings(tile_step_size=mode.tile_step_size, max_folds=mode.max_folds)


class NnUNetServicer(nnunet_pb2_grpc.NnUNetServiceServicer):
    def __init__(self, config: ServerConfig, registry: dict | None = None):
        self.config = config
        # The registry file (MEDSEG_MODEL_REGISTRY) is read now; a broken one leaves the
        # server up, NOT_SERVING, with ListModels saying why.
        self.live = LiveModels(config.model_registry, self._build, registry)
        self.device = "loading"
        # One predictor is not thread-safe and the device is the bottleneck: one worker per
        # device, a bounded queue in front of it.
        self.queue = WorkQueue(1, config.queue_capacity, "nnunet")

    @property
    def load_error(self) -> str | None:
        return self.live.load_error

    @property
    def registry(self) -> dict:
        return self.live.listed()

    @property
    def predictors(self) -> dict:
        return self.live.current.predictors

    def _build(self, registry: dict, progress) -> dict:
        """Warmed predictors for `registry`'s tasks on this server's device."""
        from nnunet_svc.predict import build_predictors, default_device

        device = default_device()
        self.device = str(device)
        log.info("loading %d task(s) on %s", len(registry), device)
        limit = {} if self.config.nnunet_max_voxels is None else {"max_voxels": self.config.nnunet_max_voxels}
        limit["lean"] = self.config.nnunet_lean
        return build_predictors(registry, device, progress=progress, **limit)

    def load(self, on_ready=None) -> None:
        """Build and warm up every predictor (run in a background thread at start-up);
        `on_ready` runs after this and every later successful swap."""
        if on_ready:
            self.live.on_swap = lambda generation: on_ready()
        if not self.live.load() and not self.live.current.predictors and self.device == "loading":
            self.device = "none"

    def reload(self) -> bool:
        """Read the registry again and swap in what changed (see nnunet_svc/live.py)."""
        return self.live.reload()

    # --- helpers ------------------------------------------------------------------------

    def _predictor(self, generation: Generation, task: str, field: str = "params.tasks"):
        if self.live.load_error and not generation.predictors:
            raise NotReady(f"models failed to load: {self.live.load_error}")
        if task not in generation.registry and task not in self.live.pending:
            raise FieldError(field, f"unknown task '{task}'; registry has {sorted(self.registry)}")
        predictor = generation.predictors.get(task)
        if predictor is None or not predictor.ready:
            raise NotReady(f"task '{task}' is still loading; retry shortly")
        return predictor

    def _result(self, generation: Generation, call: StreamingCall, outputs: list, tasks: list[str]):
        return pb.SegmentationResult(
            outputs=outputs, device=self.device, info=call.info(),
            models=[pb.ModelProvenance(**generation.provenance(t)) for t in tasks])

    def _single(self, request_iterator, context, response_cls, task: str, inputs: dict[str, str]):
        """One task on its images: inputs maps wire role -> params path field."""
        call = StreamingCall(context, self.config, response_cls)
        params = call.receive(request_iterator)
        mode = inference_mode(params)
        generation = self.live.current  # this call's models, whatever a reload swaps in
        predictor = self._predictor(generation, task)
        roles = list(inputs)
        images = [call.load(role, getattr(params, field), f"params.{field}")
                  for role, field in inputs.items()]
        call.unused_inline(set(roles))
        # Wire roles ("ct") name the request; the registry names the model's phases.
        phases = dict(zip(predictor.spec.phases, images))
        crop = not getattr(params, "disable_kidney_crop", False)
        mask = yield from call.run(self.queue, lambda progress, cancelled: predictor.predict(
            phases, kidney_crop=crop, progress=progress, cancelled=cancelled, mode=mode), stage="predict")
        output = yield from call.deliver(mask, task, params.output, task)
        yield response_cls(result=self._result(generation, call, [output], [task]))

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
        mode = inference_mode(params)
        if not params.tasks:
            raise FieldError("params.tasks", "give at least one task")
        names = []
        for value in params.tasks:
            if value not in TASK_NAMES:
                raise FieldError("params.tasks", f"unknown or unspecified task {value}")
            if TASK_NAMES[value] in names:
                raise FieldError("params.tasks", f"task '{TASK_NAMES[value]}' given twice")
            names.append(TASK_NAMES[value])
        generation = self.live.current
        predictors = {t: self._predictor(generation, t) for t in names}
        # Each phase is read once and shared by every model that needs it.
        needed = [p for p in PHASES if any(p in predictors[t].spec.phases for t in names)]
        phases = {p: call.load(p, getattr(params, f"{p}_path"), f"params.{p}_path") for p in needed}
        call.unused_inline(set(needed))
        crop = not params.disable_kidney_crop

        def work(progress, cancelled):
            from nnunet_svc.predict import segment_case

            return segment_case(predictors, phases, names, kidney_crop=crop,
                                progress=progress, cancelled=cancelled, mode=mode)

        masks = yield from call.run(self.queue, work, stage="predict")
        outputs = []
        for task in names:
            path = f"{params.output_dir.rstrip('/')}/{task}.nii.gz" if params.output_dir else ""
            output = yield from call.deliver(masks[task], task,
                                             vpb.OutputOptions(path=path, inline=params.inline), task,
                                             field="params.output_dir")
            outputs.append(output)
        yield pb.SegmentCaseResponse(result=self._result(generation, call, outputs, names))

    @streaming_rpc
    def Segment(self, request_iterator, context):
        call = StreamingCall(context, self.config, pb.SegmentResponse)
        params = call.receive(request_iterator)
        mode = inference_mode(params)
        if not params.task:
            raise FieldError("params.task", f"give a registry task name; registry has {sorted(self.registry)}")
        generation = self.live.current
        predictor = self._predictor(generation, params.task, field="params.task")
        phases = predictor.spec.phases
        extra = sorted(set(params.phase_paths) - set(phases))
        if extra:
            raise FieldError("params.phase_paths", f"task '{params.task}' takes phases {phases}; "
                                                   f"not {extra}")
        images = {p: call.load(p, params.phase_paths.get(p, ""), f"params.phase_paths[{p}]")
                  for p in phases}
        call.unused_inline(set(phases))
        crop = not params.disable_kidney_crop
        mask = yield from call.run(self.queue, lambda progress, cancelled: predictor.predict(
            images, kidney_crop=crop, progress=progress, cancelled=cancelled, mode=mode), stage="predict")
        output = yield from call.deliver(mask, params.task, params.output, params.task)
        yield pb.SegmentResponse(result=self._result(generation, call, [output], [params.task]))

    @unary_rpc
    def ListModels(self, request, context):
        models = []
        generation = self.live.current
        for name, spec in self.registry.items():
            task = {v: k for k, v in TASK_NAMES.items()}.get(name, pb.TASK_UNSPECIFIED)
            predictor = generation.predictors.get(name)
            models.append(pb.ModelInfo(
                task=task, phases=spec.phases,
                labels=[vpb.LabelEntry(value=v, name=n) for v, n in sorted(spec.labels.items())],
                model_folders=[str(m.folder) for m in spec.models],
                model_versions=[model_version(m) for m in spec.models], digest=self.live.digest(name),
                training_spacings=[pb.TrainingSpacing(x_mm=x, y_mm=y, z_mm=z)
                                   for z, y, x in (part.spacing_zyx for part in (predictor.parts if predictor else []))],
                name=name, nnunet_version=nnunet_version(), ready=bool(predictor and predictor.ready), kidney_crop=spec.kidney_crop,
                accurate=_settings(spec.mode("accurate")), fast=_settings(spec.mode("fast"))))
        return pb.ListModelsResponse(models=models, device=self.device,
                                     queue_depth=self.queue.depth,
                                     queue_capacity=self.queue.capacity,
                                     load_error=self.load_error or "",
                                     reload_error=self.live.reload_error or "")


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
    signal.signal(signal.SIGHUP, lambda *_: servicer.live.request_reload())
    from medseg.serving import metrics

    metrics.watch_models(servicer.live)  # model state in /metrics
    threading.Thread(target=servicer.live.watch, args=(servicer.config.model_watch_seconds,),
                     name="registry-watch", daemon=True).start()
    serve_forever(server)


if __name__ == "__main__":
    main()
