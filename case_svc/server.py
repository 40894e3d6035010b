"""Case service: medseg.cases.v1.CaseService and google.longrunning.Operations.

The servicers only translate messages to plain Python and back: uploads go to the
content-addressed store (cas.py), jobs to the job store (store.py), and the replica's
Runner (runner.py) runs them through the gateway (pipeline.py).
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import any_pb2, empty_pb2, json_format, timestamp_pb2
from google.rpc import code_pb2, status_pb2

from case_svc import pipeline, store as st
from case_svc.cas import VolumeStore
from case_svc.config import CaseConfig
from case_svc.runner import Runner
from medseg import addresses
from medseg.cases.v1 import cases_pb2 as pb
from medseg.cases.v1 import cases_pb2_grpc
from medseg.codec import CHUNK_SIZE
from medseg.labels import PHASES
from medseg.nnunet.v1 import nnunet_pb2 as nn
from medseg.postprocess.v1 import postprocess_pb2 as pp
from medseg.serving.errors import FieldError, streaming_rpc, unary_rpc
from medseg.serving.paths import DataRoot
from medseg.serving.server import Server, serve_forever, setup_logging
from medseg.smoothing.v1 import smoothing_pb2 as sm
from medseg.volume.v1 import volume_pb2 as vpb

log = logging.getLogger("medseg.case")
SERVICE_NAME = addresses.SERVICE_NAMES["case"]
WATCH_POLL_SECONDS = 0.3
KIDNEY_TASKS = ("tumor", "vessels", "ureter")


# --- plain data <-> messages ---------------------------------------------------------------

def _timestamp(epoch: float | None) -> timestamp_pb2.Timestamp | None:
    if not epoch:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(epoch * 1e9))
    return stamp


def _task_name(task: int) -> str:
    return nn.Task.Name(task).removeprefix("TASK_").lower()


def _task_value(name: str) -> int:
    return nn.Task.Value(f"TASK_{name.upper()}")


def _limits_dict(limits: pp.RepairLimits) -> dict:
    return {field.name: value for field, value in limits.ListFields()}


def _options_message(options: dict) -> pb.CaseOptions:
    message = pb.CaseOptions(
        tasks=[_task_value(t) for t in options.get("tasks", [])],
        vessel_limits=pp.RepairLimits(**(options.get("vessel_limits") or {})),
        ureter_limits=pp.RepairLimits(**(options.get("ureter_limits") or {})),
        disable_fat=bool(options.get("disable_fat")),
        mesh_formats=options.get("mesh_formats") or [])
    if options.get("speck_max_mm3") is not None:
        message.speck_max_mm3 = options["speck_max_mm3"]
    return message


def output_files(job: dict) -> list[pb.OutputFile]:
    folder = f"cases/{job['id']}/"
    return [pb.OutputFile(name=o["name"], path=o["path"], sha256=o["sha256"], bytes=int(o["bytes"]),
                          step=o["step"]) for o in job["outputs"] if o["path"].startswith(folder)]


def job_message(job: dict) -> pb.CaseJob:
    spec = job["spec"]
    steps = [pb.Step(name=s["name"], state=pb.StepState.Value(f"STEP_STATE_{s['state']}"),
                     seconds=float(s["seconds"]), note=s["note"], fraction=float(s["fraction"]),
                     message=s["message"]) for s in job["steps"]]
    by_step: dict[str, list] = {}
    for out in output_files(job):
        by_step.setdefault(out.step, []).append(out)
    for step in steps:
        step.outputs.extend(by_step.get(step.name, []))
    state = pb.CaseState.Value(f"CASE_STATE_{job['state']}")
    progress = pb.CaseProgress(job_id=job["id"], state=state,
                               fraction=float(job["progress"].get("fraction", 0.0)),
                               step=job["progress"].get("step", "") if job["state"] == st.RUNNING else "",
                               message=job["progress"].get("message", ""), steps=steps)
    if job["state"] == st.SUCCEEDED:
        progress.fraction = 1.0
    result = pb.CaseResult(job_id=job["id"], output_dir=f"cases/{job['id']}", outputs=output_files(job),
                           skipped=[pb.SkippedTask(task=_task_value(s["task"]), reason=s["reason"])
                                    for s in spec.get("skipped", [])])
    for label in (job["result"] or {}).get("labels", []):
        result.structures.append(json_format.ParseDict(label, pp.LabelMeasurement(),
                                                       ignore_unknown_fields=True))
    message = pb.CaseJob(
        job_id=job["id"], state=state, display_name=job["display_name"] or "",
        request_id=job["request_id"] or "",
        inputs=[pb.CaseInput(phase=phase, path=item["path"], sha256=item["sha256"], source=item["source"])
                for phase, item in spec["inputs"].items()],
        options=_options_message(spec.get("options", {})), progress=progress, result=result,
        cancel_requested=bool(job["cancel_requested"]) and job["state"] == st.RUNNING,
        attempts=int(job["attempts"]))
    if job["error"]:
        message.error.CopyFrom(pb.CaseError(**job["error"]))
    for field, key in (("create_time", "created"), ("start_time", "started"), ("end_time", "ended")):
        stamp = _timestamp(job[key])
        if stamp is not None:
            getattr(message, field).CopyFrom(stamp)
    return message


def _event_message(event: dict) -> pb.CaseEvent:
    kind = pb.CaseEventKind.Value(f"CASE_EVENT_KIND_{event['kind']}")
    message = pb.CaseEvent(sequence=event["id"], time=_timestamp(event["time"]), kind=kind,
                           state=pb.CaseState.Value(f"CASE_STATE_{event['state']}"), step=event["step"],
                           message=event["message"])
    if event["step_state"]:
        message.step_state = pb.StepState.Value(f"STEP_STATE_{event['step_state']}")
    return message


def _digest_of_path(path: Path) -> str:
    """sha256 of a file's bytes; of a DICOM folder, over its files' names and bytes."""
    if path.is_file():
        return pipeline.file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        digest.update(bytes.fromhex(pipeline.file_sha256(file)))
    return digest.hexdigest()


# --- the case service ------------------------------------------------------------------------

class CaseServicer(cases_pb2_grpc.CaseServiceServicer):
    def __init__(self, config: CaseConfig, store: st.Store, runner: Runner):
        self.config = config
        self.store = store
        self.runner = runner
        self.root = DataRoot(config.data_root)
        self.volumes = VolumeStore(config.data_root, config.server.max_volume_bytes)

    @unary_rpc
    def UploadVolume(self, request_iterator, context):
        header = pb.UploadVolumeHeader()
        first = True

        def data():
            nonlocal first
            for request in request_iterator:
                kind = request.WhichOneof("payload")
                if kind == "header":
                    if not first:
                        raise FieldError("header", "must be the first message of the stream")
                    header.CopyFrom(request.header)
                elif kind == "data":
                    yield request.data
                else:
                    raise FieldError("payload", "empty request message")
                first = False

        # The header (when sent) comes first, so its limits are known before any data is kept.
        iterator = data()
        stored = self.volumes.put(_HeaderFirst(iterator, header, self.volumes),
                                  declared_sha256="", declared_bytes=0)
        if header.sha256 and header.sha256.lower() != stored["sha256"]:
            from medseg.codec import DigestMismatch
            raise DigestMismatch(f"upload bytes have sha256 {stored['sha256'][:16]}…, the header "
                                 f"declared {header.sha256[:16]}…")
        if header.total_bytes and header.total_bytes != stored["bytes"]:
            raise FieldError("header.total_bytes", f"declared {header.total_bytes} bytes, "
                             f"received {stored['bytes']}")
        self.store.add_upload(stored["sha256"], stored["path"], stored["bytes"],
                              {"size": stored["size"], "spacing": stored["spacing"]})
        return pb.UploadVolumeResponse(sha256=stored["sha256"], bytes=stored["bytes"],
                                       already_present=stored["already_present"],
                                       size=stored["size"], spacing=stored["spacing"])

    def _inputs(self, request: pb.SubmitCaseRequest) -> dict:
        inputs = {}
        for phase in PHASES:
            if not request.HasField(phase):
                continue
            given = getattr(request, phase)
            kind = given.WhichOneof("source")
            if kind == "path" and given.path:
                path = self.root.input(f"{phase}.path", given.path)
                inputs[phase] = {"path": self.root.relative(path), "sha256": _digest_of_path(path),
                                 "source": "path"}
            elif kind == "sha256" and given.sha256:
                path = self.volumes.find(given.sha256, f"{phase}.sha256")
                inputs[phase] = {"path": self.root.relative(path), "sha256": given.sha256.lower(),
                                 "source": "upload"}
        return inputs

    def _options(self, options: pb.CaseOptions) -> tuple[list[str], dict]:
        tasks = []
        for task in options.tasks:
            if task == nn.TASK_UNSPECIFIED or task not in nn.Task.values():
                raise FieldError("options.tasks", f"unknown or unspecified task {task}")
            if _task_name(task) not in tasks:
                tasks.append(_task_name(task))
        formats = []
        for fmt in options.mesh_formats:
            if fmt not in pipeline.MESH_EXT:
                raise FieldError("options.mesh_formats", f"unknown or unspecified mesh format {fmt}")
            if fmt not in formats:
                formats.append(fmt)
        speck = options.speck_max_mm3 if options.HasField("speck_max_mm3") else None
        if speck is not None and speck < 0:
            raise FieldError("options.speck_max_mm3", f"must be >= 0, got {speck}")
        return tasks, {"tasks": tasks, "vessel_limits": _limits_dict(options.vessel_limits),
                       "ureter_limits": _limits_dict(options.ureter_limits),
                       "disable_fat": options.disable_fat, "mesh_formats": formats,
                       "speck_max_mm3": speck}

    @unary_rpc
    def SubmitCase(self, request, context):
        if request.request_id:
            if len(request.request_id) > 200:
                raise FieldError("request_id", "longer than 200 characters")
            earlier = self.store._job_by_request(request.request_id)
            if earlier:  # AIP-155: a retry answers the first request's job
                return pb.SubmitCaseResponse(job=job_message(self.store.job(earlier)))
        wanted, options = self._options(request.options)
        inputs = self._inputs(request)
        run, skipped = pipeline.resolve_tasks(wanted, set(inputs))
        if not run:
            # The field named is the missing phase most of the wanted tasks need.
            needed_by = {p: sum(p in pipeline.TASK_PHASES[t] for t in wanted or pipeline.TASKS)
                         for p in PHASES if p not in inputs}
            missing = sorted((p for p, n in needed_by.items() if n), key=lambda p: -needed_by[p])
            reasons = "; ".join(f"{s['task']}: {s['reason']}" for s in skipped)
            raise FieldError(missing[0] if missing else "portal",
                             f"missing: no task can run ({reasons}); give "
                             f"{' or '.join(missing)} as a data-root path or an uploaded sha256")
        if not any(t in KIDNEY_TASKS for t in run):
            raise FieldError("options.tasks", "at least one of tumor, vessels, ureter must run "
                             "(total alone makes no kidney mask)")
        spec = {"inputs": inputs, "tasks": run, "skipped": skipped, "options": options}
        job_id, _created = self.store.create_job(spec, list(pipeline.STEPS), request.request_id,
                                                 request.display_name[:200])
        self.runner.wake()
        return pb.SubmitCaseResponse(job=job_message(self.store.job(job_id)))

    @unary_rpc
    def GetCase(self, request, context):
        return pb.GetCaseResponse(job=job_message(self.store.job(request.job_id)))

    @unary_rpc
    def ListCases(self, request, context):
        state = "" if request.state == pb.CASE_STATE_UNSPECIFIED else \
            pb.CaseState.Name(request.state).removeprefix("CASE_STATE_")
        jobs, token = self.store.list_jobs(state, request.page_size or 50, request.page_token)
        return pb.ListCasesResponse(jobs=[job_message(j) for j in jobs], next_page_token=token)

    @unary_rpc
    def CancelCase(self, request, context):
        self.store.request_cancel(request.job_id)
        return pb.CancelCaseResponse(job=job_message(self.store.job(request.job_id)))

    @unary_rpc
    def DeleteCase(self, request, context):
        self.store.delete_job(request.job_id)
        _remove_folder(self.config.data_root / "cases" / request.job_id)
        return pb.DeleteCaseResponse()

    @streaming_rpc
    def WatchCase(self, request, context):
        yield from watch(self.store, request.job_id, context)

    @streaming_rpc
    def FetchCaseOutput(self, request, context):
        job = self.store.job(request.job_id)
        files = output_files(job)
        if request.name:
            files = [f for f in files if f.name == request.name]
            if not files:
                raise FileNotFoundError(f"name: job '{request.job_id}' has no output '{request.name}'")
        for item in files:
            path = self.config.data_root / item.path
            if not path.is_file():
                from medseg.serving.errors import Unsupported
                raise Unsupported(f"name: output '{item.name}' is not there (any more)")
            total = path.stat().st_size
            with path.open("rb") as f:
                first = True
                while True:
                    data = f.read(CHUNK_SIZE)
                    if not data and not first:
                        break
                    yield pb.FetchCaseOutputResponse(
                        chunk=vpb.FileChunk(name=item.name, data=data, total_bytes=total),
                        sha256=item.sha256 if first else "")
                    first = False
                    if not data:
                        break


class _HeaderFirst:
    """Iterates upload data, checking a header's declared size as soon as it is known."""

    def __init__(self, iterator, header, volumes: VolumeStore):
        self.iterator, self.header, self.volumes = iterator, header, volumes

    def __iter__(self):
        for data in self.iterator:
            if self.header.total_bytes > self.volumes.max_bytes:
                from medseg.codec import VolumeTooLarge
                raise VolumeTooLarge(f"upload of {self.header.total_bytes} bytes is over the limit "
                                     f"of {self.volumes.max_bytes} bytes")
            yield data


def _remove_folder(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def watch(store: st.Store, job_id: str, context):
    """Snapshot, then events and progress as they are stored, then the final snapshot.
    Polls the store, so a watcher on any replica sees a job run by any other."""
    after = store.last_event_id(job_id)  # before the snapshot: nothing falls in between
    job = store.job(job_id)
    yield pb.WatchCaseResponse(snapshot=job_message(job))
    if job["state"] in st.FINAL_STATES:
        return
    last_progress = job["progress"]
    while context.is_active():
        for event in store.events_after(job_id, after):
            after = event["id"]
            yield pb.WatchCaseResponse(event=_event_message(event))
        job = store.job(job_id)
        if job["state"] in st.FINAL_STATES:
            yield pb.WatchCaseResponse(snapshot=job_message(job))
            return
        if job["progress"] != last_progress:
            last_progress = job["progress"]
            yield pb.WatchCaseResponse(event=pb.CaseEvent(
                sequence=after, time=_timestamp(time.time()), kind=pb.CASE_EVENT_KIND_PROGRESS,
                state=pb.CaseState.Value(f"CASE_STATE_{job['state']}"), step=last_progress.get("step", ""),
                fraction=float(last_progress.get("fraction", 0.0)), message=last_progress.get("message", "")))
        time.sleep(WATCH_POLL_SECONDS)


# --- google.longrunning.Operations -------------------------------------------------------------

def operation_message(job: dict) -> operations_pb2.Operation:
    message = job_message(job)
    operation = operations_pb2.Operation(name=job["id"], done=job["state"] in st.FINAL_STATES)
    metadata = any_pb2.Any()
    metadata.Pack(message.progress)
    operation.metadata.CopyFrom(metadata)
    if job["state"] == st.SUCCEEDED:
        response = any_pb2.Any()
        response.Pack(message.result)
        operation.response.CopyFrom(response)
    elif job["state"] == st.FAILED:
        error = job["error"] or {}
        code = getattr(code_pb2, error.get("code", "UNKNOWN"), code_pb2.UNKNOWN)
        operation.error.CopyFrom(status_pb2.Status(
            code=code, message=f"step {error.get('step', '?')}: {error.get('message', '')}"))
    elif job["state"] == st.CANCELLED:
        operation.error.CopyFrom(status_pb2.Status(code=code_pb2.CANCELLED, message="cancelled"))
    return operation


class OperationsServicer(operations_pb2_grpc.OperationsServicer):
    """Case jobs as long-running operations (name = job id)."""

    def __init__(self, store: st.Store):
        self.store = store

    @unary_rpc
    def GetOperation(self, request, context):
        return operation_message(self.store.job(request.name))

    @unary_rpc
    def ListOperations(self, request, context):
        # filter: "" or "state=<CASE_STATE name without prefix>", e.g. "state=RUNNING"
        state = ""
        if request.filter:
            key, _, value = request.filter.partition("=")
            value = value.strip().upper().removeprefix("CASE_STATE_")
            if key.strip() != "state" or value not in st.JOB_STATES:
                raise FieldError("filter", f"supported: state=<{'|'.join(st.JOB_STATES)}>")
            state = value
        jobs, token = self.store.list_jobs(state, request.page_size or 50, request.page_token)
        return operations_pb2.ListOperationsResponse(operations=[operation_message(j) for j in jobs],
                                                     next_page_token=token)

    @unary_rpc
    def DeleteOperation(self, request, context):
        self.store.delete_job(request.name)
        return empty_pb2.Empty()

    @unary_rpc
    def CancelOperation(self, request, context):
        self.store.request_cancel(request.name)
        return empty_pb2.Empty()

    @unary_rpc
    def WaitOperation(self, request, context):
        # Waits until done or the timeout (default and most: 60 s, and the call's deadline).
        limit = request.timeout.ToTimedelta().total_seconds() if request.HasField("timeout") else 60.0
        deadline = time.monotonic() + max(0.0, min(limit, 60.0))
        while True:
            job = self.store.job(request.name)
            remaining = context.time_remaining()
            if (job["state"] in st.FINAL_STATES or time.monotonic() >= deadline
                    or not context.is_active() or (remaining is not None and remaining < 1.0)):
                return operation_message(job)
            time.sleep(WATCH_POLL_SECONDS)


def create_server(config: CaseConfig) -> tuple[Server, Runner, st.Store]:
    store = st.Store(config.db_url)
    runner = Runner(config, store)
    server = Server(config.server, SERVICE_NAME)
    cases_pb2_grpc.add_CaseServiceServicer_to_server(CaseServicer(config, store, runner), server.grpc)
    operations_pb2_grpc.add_OperationsServicer_to_server(OperationsServicer(store), server.grpc)

    def stop() -> None:
        runner.stop()
        store.close()

    server.on_stop = stop
    return server, runner, store


def main() -> None:
    setup_logging()
    config = CaseConfig.from_env()
    server, runner, _store = create_server(config)
    server.start()
    runner.start()
    server.set_serving(True)
    log.info("case service: replica %s, %d worker(s), store %s, gateway %s", config.replica_id,
             config.workers, config.db_url.split("@")[-1], config.gateway)
    serve_forever(server)


if __name__ == "__main__":
    main()
