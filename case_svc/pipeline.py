"""One case job: the DAG of steps, run through the gateway with the SDK Client, by reference.

    segment -> combine -> connect_vessels || connect_ureters -> merge -> fat -> cleanup
            -> mesh || measure -> report

Every file a step writes lands in the job folder `<root>/cases/<job_id>/` (intermediates in
`work/`) and is recorded with its sha256. On a later attempt (restart, takeover) a step that
finished and whose recorded files are all still there with the same digests is not run
again; once one step has to run again, every later step runs too (its inputs changed).
"""
from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import grpc
import numpy as np
import SimpleITK as sitk

from case_svc import masks as maskops
from medseg.client import Client, Ref
from medseg.labels import Label, NAMES
from medseg.nnunet.v1 import nnunet_pb2 as nn
from medseg.smoothing.v1 import smoothing_pb2 as sm
from medseg.volumes import read_volume, write_volume

TASKS = ("total", "tumor", "vessels", "ureter")
TASK_PHASES = {"total": ("portal",), "tumor": ("portal",), "vessels": ("arterial", "portal"),
               "ureter": ("delayed",)}
# Steps in order, grouped: the steps of one group run concurrently.
GROUPS = (("segment",), ("combine",), ("connect_vessels", "connect_ureters"), ("merge",),
          ("fat",), ("cleanup",), ("mesh", "measure"), ("report",))
STEPS = tuple(name for group in GROUPS for name in group)
# Share of the whole job each step takes (for the job's progress fraction).
WEIGHTS = {"segment": 0.6, "combine": 0.02, "connect_vessels": 0.07, "connect_ureters": 0.04,
           "merge": 0.02, "fat": 0.07, "cleanup": 0.02, "mesh": 0.1, "measure": 0.03, "report": 0.03}
MESH_EXT = {sm.MESH_FORMAT_OBJ: "obj", sm.MESH_FORMAT_STL: "stl", sm.MESH_FORMAT_PLY: "ply",
            sm.MESH_FORMAT_GLB: "glb"}
# Downstream codes worth another try: the service was down or busy, not the input bad.
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


class JobStopped(Exception):
    """The job was cancelled, or this replica lost it (shutdown, lease taken over)."""


def resolve_tasks(wanted: list[str], phases: set[str]) -> tuple[list[str], list[dict]]:
    """(tasks that can run, [{task, reason}] skipped for a missing phase)."""
    run, skipped = [], []
    for task in wanted or TASKS:
        missing = [p for p in TASK_PHASES[task] if p not in phases]
        if missing:
            skipped.append({"task": task, "reason": f"no {' and '.join(missing)} phase"})
        else:
            run.append(task)
    return run, skipped


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class StepOutcome:
    files: list[str] = field(default_factory=list)   # names inside the job folder
    data: dict = field(default_factory=dict)          # plain facts later steps and the report use
    note: str = ""
    skipped: bool = False


@dataclass
class JobContext:
    """What one attempt at a job needs. `store_*` callbacks write to the job store."""

    job_id: str
    root: Path
    spec: dict
    client: Client
    store: object
    stop: threading.Event
    step_retries: int = 2
    speck_max_mm3: float = 50.0
    cancelled: bool = False                      # stop because a client cancelled (not a shutdown)
    results: dict = field(default_factory=dict)  # step name -> data
    states: dict = field(default_factory=dict)   # step name -> final state of this attempt
    _progress_lock: threading.Lock = field(default_factory=threading.Lock)
    _last_write: dict = field(default_factory=dict)
    _fractions: dict = field(default_factory=dict)

    @property
    def folder_rel(self) -> str:
        return f"cases/{self.job_id}"

    @property
    def folder(self) -> Path:
        return self.root / self.folder_rel

    def rel(self, name: str) -> str:
        return f"{self.folder_rel}/{name}"

    def ref(self, name: str) -> Ref:
        return Ref(self.rel(name))

    def fraction(self) -> float:
        return float(sum(WEIGHTS[s] * self._fractions.get(s, 0.0) for s in STEPS))

    def progress_for(self, step: str) -> Callable:
        """A Client progress callback for one step; store writes at most every 0.5 s."""

        def report(progress) -> None:
            if self.stop.is_set():
                raise JobStopped("stopping")
            with self._progress_lock:
                self._fractions[step] = max(0.0, min(1.0, float(progress.fraction)))
                now = time.monotonic()
                if now - self._last_write.get(step, 0.0) < 0.5 and progress.fraction < 1.0:
                    return
                self._last_write[step] = now
            message = f"{progress.stage}: {progress.message}" if progress.message else progress.stage
            self.store.set_progress(self.job_id, step, self._fractions[step], self.fraction(), message)

        return report


# --- the steps -------------------------------------------------------------------------

def step_segment(ctx: JobContext) -> StepOutcome:
    tasks = ctx.spec["tasks"]
    inputs = {phase: Ref(item["path"]) for phase, item in ctx.spec["inputs"].items()}
    out = ctx.client.segment_case(tasks, output_dir=ctx.rel("masks"),
                                  progress=ctx.progress_for("segment"), **inputs)
    files = []
    for output in out.result.outputs:
        name = f"masks/{output.role}.nii.gz"
        if output.path != ctx.rel(name):  # the service names outputs "<task>.nii.gz"
            raise RuntimeError(f"segment wrote '{output.role}' to an unexpected place")
        files.append(name)
    listed = {nn.Task.Name(m.task).removeprefix("TASK_").lower(): m for m in ctx.client.list_models().models}
    models = [{"task": t, "folders": list(listed[t].model_folders) if t in listed else [],
               "version": "; ".join(listed[t].model_versions) if t in listed else "",
               "digest": listed[t].digest if t in listed else ""} for t in tasks]
    inputs_info = {}
    for phase, item in ctx.spec["inputs"].items():
        size, spacing = _image_info(ctx.root / item["path"])
        inputs_info[phase] = {"sha256": item["sha256"], "size": size, "spacing_mm": spacing,
                              "source": item["source"]}
    return StepOutcome(files, {"device": out.result.device, "models": models, "inputs": inputs_info},
                       note=f"{len(tasks)} task(s) on {out.result.device}: {', '.join(tasks)}")


def _image_info(path: Path) -> tuple[list[int], list[float]]:
    """Size and spacing from the header alone (no voxels read)."""
    if path.is_dir():
        volume = read_volume(path)
        return list(volume.size), list(volume.spacing)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return [int(s) for s in reader.GetSize()], [float(s) for s in reader.GetSpacing()]


def _task_masks(ctx: JobContext) -> dict:
    return {task: read_volume(ctx.folder / f"masks/{task}.nii.gz")
            for task in ctx.spec["tasks"] if task in maskops.TASK_LABELS}


def _reference_phase(ctx: JobContext) -> str:
    """The grid of the combined mask: portal (total, tumor and fat live there) if given."""
    for phase in ("portal", "arterial", "delayed"):
        if phase in ctx.spec["inputs"]:
            return phase
    raise RuntimeError("no phase")


def step_combine(ctx: JobContext) -> StepOutcome:
    task_masks = _task_masks(ctx)
    if not task_masks:
        raise ValueError("no kidney task ran (tumor, vessels or ureter): nothing to combine")
    reference_task = next(t for t in ("tumor", "vessels", "ureter") if t in task_masks)
    organs = read_volume(ctx.folder / "masks/total.nii.gz") if "total" in ctx.spec["tasks"] else None
    combined, dropped = maskops.combine(task_masks, task_masks[reference_task], organs)
    write_volume(combined, ctx.folder / "work/combined.nii.gz")
    present = [NAMES[int(v)] for v in np.unique(combined.array) if v]
    ruled_out = "".join(f"; {n} voxel(s) of {what} left out" for what, n in dropped.items() if n)
    return StepOutcome(["work/combined.nii.gz"], {"labels": present, "grid_of": reference_task,
                                                  "ruled_out_voxels": dropped},
                       note=f"labels {', '.join(present) or 'none'} on the {reference_task} mask's grid{ruled_out}")


def _repair_data(report) -> dict:
    return {"pieces_before": int(report.pieces_before), "pieces_after": int(report.pieces_after),
            "bridges": len(report.bridges), "note": report.note}


def _repair(ctx: JobContext, step: str, label: int, call, limits_key: str, output: str) -> StepOutcome:
    if NAMES[label] not in ctx.results["combine"]["labels"]:
        return StepOutcome(note=f"no {NAMES[label]} in the mask", skipped=True)
    out = call(ctx.ref("work/combined.nii.gz"), limits=ctx.spec["options"].get(limits_key) or {},
               output=ctx.rel(output), progress=ctx.progress_for(step))
    data = _repair_data(out.result.report)
    return StepOutcome([output], data, note=f"{NAMES[label]} pieces {data['pieces_before']} -> "
                                            f"{data['pieces_after']}, {data['bridges']} bridge(s)")


def step_connect_vessels(ctx: JobContext) -> StepOutcome:
    return _repair(ctx, "connect_vessels", Label.ARTERY, ctx.client.connect_vessels, "vessel_limits",
                   "work/vessels_repaired.nii.gz")


def step_connect_ureters(ctx: JobContext) -> StepOutcome:
    return _repair(ctx, "connect_ureters", Label.URETER, ctx.client.connect_ureters, "ureter_limits",
                   "work/ureters_repaired.nii.gz")


def step_merge(ctx: JobContext) -> StepOutcome:
    combined = read_volume(ctx.folder / "work/combined.nii.gz")
    repaired = {}
    for step, label, name in (("connect_vessels", Label.ARTERY, "work/vessels_repaired.nii.gz"),
                              ("connect_ureters", Label.URETER, "work/ureters_repaired.nii.gz")):
        if ctx.states.get(step) == "DONE":
            repaired[label] = read_volume(ctx.folder / name)
    merged = maskops.merge_repairs(combined, repaired)
    write_volume(merged, ctx.folder / "work/merged.nii.gz")
    added = int(np.count_nonzero(merged.array != combined.array))
    return StepOutcome(["work/merged.nii.gz"], {"voxels_added": added},
                       note=f"{added} voxel(s) added by the repairs")


def step_fat(ctx: JobContext) -> StepOutcome:
    options = ctx.spec["options"]
    if options.get("disable_fat"):
        return StepOutcome(note="disabled by the job's options", skipped=True)
    if "total" not in ctx.spec["tasks"]:
        return StepOutcome(note="no organ mask: the total task did not run", skipped=True)
    if "kidney" not in ctx.results["combine"]["labels"]:
        return StepOutcome(note="no kidney in the mask", skipped=True)
    out = ctx.client.add_fat(ctx.ref("work/merged.nii.gz"), ctx.ref("masks/total.nii.gz"),
                             Ref(ctx.spec["inputs"]["portal"]["path"]), output=ctx.rel("work/fat.nii.gz"),
                             progress=ctx.progress_for("fat"))
    data = {"volume_ml": float(out.result.fat_volume_ml), "used_ct": bool(out.result.used_ct),
            "note": out.result.note}
    return StepOutcome(["work/fat.nii.gz"], data, note=f"fat {data['volume_ml']:.1f} ml")


def step_cleanup(ctx: JobContext) -> StepOutcome:
    source = "work/fat.nii.gz" if ctx.states.get("fat") == "DONE" else "work/merged.nii.gz"
    limit = ctx.spec["options"].get("speck_max_mm3")
    limit = ctx.speck_max_mm3 if limit is None else float(limit)
    cleaned, removed = maskops.remove_specks(read_volume(ctx.folder / source), limit)
    write_volume(cleaned, ctx.folder / "mask.nii.gz")
    return StepOutcome(["mask.nii.gz"], {"removed_specks": removed, "limit_mm3": limit},
                       note=f"{len(removed)} speck(s) under {limit:g} mm3 removed")


def step_mesh(ctx: JobContext) -> StepOutcome:
    formats = ctx.spec["options"].get("mesh_formats") or [sm.MESH_FORMAT_OBJ, sm.MESH_FORMAT_GLB]
    files, meshes = [], []
    progress = ctx.progress_for("mesh")
    for fmt in formats:
        ext = MESH_EXT[fmt]
        out = ctx.client.mesh(ctx.ref("mask.nii.gz"), fmt=fmt, output=ctx.rel(f"meshes/model.{ext}"),
                              progress=progress)
        prefix = ctx.folder_rel + "/"
        files += [p.removeprefix(prefix) for p in out.result.paths]
        meshes = [{"label": m.label, "name": m.name, "faces": m.faces, "closed": m.closed}
                  for m in out.result.meshes]
    return StepOutcome(files, {"meshes": meshes}, note=f"{len(meshes)} structure(s): {', '.join(files)}")


def step_measure(ctx: JobContext) -> StepOutcome:
    out = ctx.client.measure(ctx.ref("mask.nii.gz"), progress=ctx.progress_for("measure"), tumor_facts=True)
    structures = []
    for m in out.result.labels:
        structures.append({
            "value": int(m.value), "name": m.name, "volume_ml": float(m.volume_ml),
            "pieces": int(m.component_count),
            "bbox_min_mm": [float(v) for v in m.bbox.min_mm] or None,
            "bbox_max_mm": [float(v) for v in m.bbox.max_mm] or None,
            "largest_diameter_mm": float(m.largest_diameter_mm)})
    from google.protobuf import json_format
    raw = [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in out.result.labels]
    tumors = [_tumor_entry(t) for t in out.result.tumors]
    return StepOutcome([], {"structures": structures, "labels": raw, "tumors": tumors},
                       note=", ".join(f"{s['name']} {s['volume_ml']:.1f} ml" for s in structures))


def _tumor_entry(t) -> dict:
    """A Measure TumorFacts message as the report's tumor entry (unset facts are null)."""
    def optional(message, field):
        return getattr(message, field) if message.HasField(field) else None

    renal = t.renal
    notes = list(t.notes)
    if t.sinus_source == "ureter":
        notes.insert(0, "sinus distance is an upper bound (to where the ureter leaves the kidney)")
    return {
        "side": t.side or None, "polar_location": t.polar_location or None,
        "centre_mm": [float(v) for v in t.centroid_mm] or None, "max_diameter_mm": float(t.max_diameter_mm),
        "volume_ml": float(t.volume_ml), "exophytic_fraction": optional(t, "exophytic_fraction"),
        "distance_to_sinus_mm": optional(t, "distance_to_sinus_mm"),
        "distance_to_artery_mm": optional(t, "distance_to_artery_mm"),
        "distance_to_vein_mm": optional(t, "distance_to_vein_mm"),
        "renal": {"R": renal.radius, "E": optional(renal, "exophytic"), "N": optional(renal, "nearness"),
                  "A": renal.anterior or None, "L": optional(renal, "location"),
                  "score": optional(renal, "total")},
        "note": "; ".join(notes),
    }


def step_report(ctx: JobContext) -> StepOutcome:
    report = build_report(ctx, state="SUCCEEDED")
    mask = read_volume(ctx.folder / "mask.nii.gz")
    portal = ctx.spec["inputs"].get("portal")
    ct = None
    if portal:
        ct = read_volume(ctx.root / portal["path"])
        ct = ct if ct.same_grid(mask) else None
    names = write_report_files(ctx.folder, report, mask, ct)
    return StepOutcome(names, {}, note="report.json, report.html")


def write_report_files(folder: Path, report: dict, mask, ct) -> list[str]:
    """The one place the report is written (case_svc.report renders and validates it)."""
    from case_svc.report import write_report

    return sorted(write_report(folder, report, mask, ct))


def _iso(epoch: float | None) -> str:
    return datetime.fromtimestamp(epoch or time.time(), timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def build_report(ctx: JobContext, state: str) -> dict:
    """The report dict (case_svc/report.schema.json) from the steps' recorded facts."""
    job = ctx.store.job(ctx.job_id)
    step_state = {"DONE": "SUCCEEDED"}
    steps = [{"name": s["name"], "state": step_state.get(s["state"], s["state"]),
              "seconds": round(float(s["seconds"]), 3), "note": s["note"]} for s in job["steps"]]
    for s in steps:  # the report step is writing itself now
        if s["name"] == "report":
            s["state"] = "SUCCEEDED" if state == "SUCCEEDED" else s["state"]
    results = ctx.results

    def repair(step):
        return results.get(step) if ctx.states.get(step) == "DONE" else None

    fat = results.get("fat") if ctx.states.get("fat") == "DONE" else None
    outputs = {o["name"]: {"sha256": o["sha256"], "bytes": int(o["bytes"])} for o in job["outputs"]
               if not o["name"].startswith("report.")}
    return {
        "schema": "medseg.case-report", "schema_version": 1, "case_id": ctx.job_id,
        "created": _iso(job["created"]), "state": state, "error": None,
        "inputs": results.get("segment", {}).get("inputs", {}),
        "skipped": [{"task": s["task"], "reason": s["reason"]} for s in ctx.spec["skipped"]],
        "steps": steps,
        "models": results.get("segment", {}).get("models", []),
        "structures": results.get("measure", {}).get("structures", []),
        "removed_specks": results.get("cleanup", {}).get("removed_specks", []),
        "repairs": {"vessels": repair("connect_vessels"), "ureters": repair("connect_ureters")},
        "fat": fat, "tumors": results.get("measure", {}).get("tumors", []), "outputs": outputs,
    }


STEP_FUNCTIONS = {
    "segment": step_segment, "combine": step_combine, "connect_vessels": step_connect_vessels,
    "connect_ureters": step_connect_ureters, "merge": step_merge, "fat": step_fat,
    "cleanup": step_cleanup, "mesh": step_mesh, "measure": step_measure, "report": step_report,
}


# --- running -----------------------------------------------------------------------------

class StepFailed(Exception):
    def __init__(self, step: str, code: str, message: str):
        super().__init__(f"{step}: {code}: {message}")
        self.step, self.code, self.message = step, code, message


def _recorded_files_intact(ctx: JobContext, step: str, job: dict) -> bool:
    files = [o for o in job["outputs"] if o["step"] == step]
    return all((ctx.root / o["path"]).is_file() and file_sha256(ctx.root / o["path"]) == o["sha256"]
               for o in files)


def run_job(ctx: JobContext) -> None:
    """Run (or resume) every step. Raises StepFailed, JobStopped."""
    job = ctx.store.job(ctx.job_id)
    previous = {s["name"]: s for s in job["steps"]}
    dirty = False  # an earlier step ran in this attempt: later ones must run too
    for group in GROUPS:
        todo = []
        for step in group:
            before = previous.get(step, {})
            if (not dirty and before.get("state") in ("DONE", "SKIPPED")
                    and _recorded_files_intact(ctx, step, job)):
                ctx.results[step] = before.get("data") or {}
                ctx.states[step] = before["state"]
                ctx._fractions[step] = 1.0
                continue
            todo.append(step)
        if not todo:
            continue
        dirty = True
        if ctx.stop.is_set():
            raise JobStopped("stopping")
        if len(todo) == 1:
            _run_step(ctx, todo[0])
        else:
            with ThreadPoolExecutor(len(todo), thread_name_prefix=f"case-{ctx.job_id[:6]}") as pool:
                futures = [pool.submit(_run_step, ctx, step) for step in todo]
                errors = [f.exception() for f in futures]
            for error in errors:  # a stop wins over a failure it caused
                if isinstance(error, JobStopped):
                    raise error
            for error in errors:
                if error is not None:
                    raise error


def _run_step(ctx: JobContext, step: str) -> None:
    from medseg.serving.errors import status_of

    ctx.store.set_step(ctx.job_id, step, "RUNNING", note="")
    start = time.monotonic()
    attempt = 0
    while True:
        try:
            outcome = STEP_FUNCTIONS[step](ctx)
            break
        except grpc.RpcError as exc:
            if ctx.stop.is_set():
                ctx.store.set_step(ctx.job_id, step, "CANCELLED", seconds=time.monotonic() - start,
                                   note="stopped")
                raise JobStopped("stopping") from None
            if exc.code() in RETRY_CODES and attempt < ctx.step_retries:
                attempt += 1
                ctx.stop.wait(2.0 * attempt)
                continue
            _fail(ctx, step, start, exc.code().name, exc.details() or "")
        except JobStopped:
            ctx.store.set_step(ctx.job_id, step, "CANCELLED", seconds=time.monotonic() - start, note="stopped")
            raise
        except Exception as exc:  # noqa: BLE001 - a step's failure is the job's, with its cause
            if ctx.stop.is_set():
                ctx.store.set_step(ctx.job_id, step, "CANCELLED", seconds=time.monotonic() - start,
                                   note="stopped")
                raise JobStopped("stopping") from None
            code, message = status_of(exc)
            _fail(ctx, step, start, code.name, message)
    seconds = time.monotonic() - start
    records = []
    for name in outcome.files:
        path = ctx.folder / name
        records.append({"name": name, "path": ctx.rel(name), "sha256": file_sha256(path),
                        "bytes": path.stat().st_size})
    ctx.store.record_outputs(ctx.job_id, step, records)
    state = "SKIPPED" if outcome.skipped else "DONE"
    ctx.results[step] = outcome.data
    ctx.states[step] = state
    ctx._fractions[step] = 1.0
    ctx.store.set_step(ctx.job_id, step, state, seconds=seconds, note=outcome.note, data=outcome.data)
    ctx.store.set_progress(ctx.job_id, step, 1.0, ctx.fraction(), outcome.note)


def _fail(ctx: JobContext, step: str, start: float, code: str, message: str):
    ctx.store.set_step(ctx.job_id, step, "FAILED", seconds=time.monotonic() - start,
                       note=f"{code}: {message}"[:2000])
    raise StepFailed(step, code, message)
