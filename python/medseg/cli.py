"""`medseg` command: one subcommand per operation, through the gateway.

Local files are sent inline and results written locally (-o); with --by-ref, arguments and
-o are paths under the server's data root and nothing is uploaded.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import grpc
from google.protobuf import json_format

from medseg import addresses
from medseg.client import Client, DicomReading, LocalInputError, Ref
from medseg.nnunet.v1 import nnunet_pb2 as nn
from medseg.smoothing.v1 import smoothing_pb2 as sm
from medseg.volumes import write_volume


class ProgressPrinter:
    """One updating line on a terminal; plain lines (on stage change or every 10%) in CI
    or when output is piped."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self.last = ("", -1.0)
        self.start = time.monotonic()

    def __call__(self, progress) -> None:
        elapsed = time.monotonic() - self.start
        line = f"[{elapsed:6.1f}s] {progress.stage:<10} {progress.fraction * 100:5.1f}%  {progress.message}"
        if self.tty:
            filled = int(round(max(0.0, min(1.0, progress.fraction)) * 20))
            bar = "#" * filled + "." * (20 - filled)
            line = f"[{elapsed:6.1f}s] {progress.stage:<16} [{bar}] {progress.fraction * 100:5.1f}%  {progress.message}"
            self.stream.write("\r" + line[:120].ljust(120))
            self.stream.flush()
            return
        stage, fraction = self.last
        if progress.stage != stage or progress.fraction - fraction >= 0.1 or progress.fraction >= 1.0 > fraction:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.last = (progress.stage, progress.fraction)

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")


def _input(args, value):
    if value is None:
        return None
    if value.startswith(("http://", "https://")):
        return value  # a DICOMweb study/series URL, pulled by the client
    return Ref(value) if args.by_ref else Path(value)


def _default_local_output(source: str, suffix: str, ext: str = ".nii.gz") -> Path:
    path = Path(source)
    stem = path.name.split(".")[0] if not path.is_dir() else path.name
    return Path.cwd() / f"{stem}_{suffix}{ext}"


def _print_labels(title: str, labels) -> None:
    print(title)
    for entry in labels:
        print(f"  {entry.value:>3} {entry.name or '?':<28} {entry.voxel_count:>12} voxels "
              f"{entry.volume_ml:>10.2f} ml")


def _print_info(info) -> None:
    for digest in info.received:
        where = digest.path or "inline"
        print(f"  received {digest.role:<9} {where:<40} sha256 {digest.sha256[:16]}…")
    for digest in info.sent:
        where = digest.path or "inline (verified)"
        print(f"  sent     {digest.role:<9} {where:<40} sha256 {digest.sha256[:16]}…")
    print("  timings: " + ", ".join(f"{t.stage} {t.seconds:.2f}s" for t in info.timings))
    for note in info.notes:
        print(f"  note: {note}")


def write_mask(client: Client, volume, target: Path, source_role: str | None = None) -> None:
    """A mask to a local file: NAME.dcm is a DICOM-SEG referencing the DICOM series read for
    `source_role` (new UIDs when that input was not DICOM), anything else write_volume."""
    if target.name.lower().endswith(".dcm"):
        from medseg.dicom.seg import write_seg

        write_seg(volume, target, read=client.dicom.reads.get(source_role) if client else None)
    else:
        from medseg.labelfiles import write_mask_file

        write_mask_file(volume, target)  # NAME.labels.json beside it, or Slicer metadata in .seg.nrrd


def _save_volume_output(args, out, suffix: str, source: str, role: str = "mask", client=None) -> None:
    if args.by_ref:
        output = out.result.output if hasattr(out.result, "output") else None
        if output is not None:
            print(f"written under the data root: {output.path}")
        return
    target = Path(args.output) if args.output else _default_local_output(source, suffix)
    write_mask(client, out.volumes[role], target)
    print(f"written: {target}")


def _volume_call_kwargs(args) -> dict:
    # By reference, -o is a data-root path for the server; inline, the result comes back.
    return {"output": args.output} if args.by_ref else {"inline": True}


# --- commands ----------------------------------------------------------------------------

def cmd_status(client: Client, args) -> int:
    states = client.status()
    for name, state in states.items():
        print(f"{name:<12} {state}")
    return 0 if all(s == "SERVING" for s in states.values()) else 1


def cmd_models(client: Client, args) -> int:
    reply = client.list_models()
    if args.json:
        print(json_format.MessageToJson(reply))
        return 0
    print(f"device: {reply.device}  queue: {reply.queue_depth}/{reply.queue_capacity}")
    if reply.load_error:
        print(f"models failed to load: {reply.load_error}")
    if reply.reload_error:
        print(f"registry reload failed (the models below keep serving): {reply.reload_error}")
    for model in reply.models:
        labels = ", ".join(f"{e.value}={e.name}" for e in model.labels if e.value)
        task = model.name or nn.Task.Name(model.task).removeprefix("TASK_").lower()  # name: Segment's
        trained_at = ", ".join("x".join(f"{v:g}" for v in (s.x_mm, s.y_mm, s.z_mm)) for s in model.training_spacings)
        print(f"  {task:<8} ready={model.ready} phases={list(model.phases)} "
              f"crop={model.kidney_crop} trained at {trained_at or '?'} mm nnU-Net {model.nnunet_version} "
              f"digest {model.digest[:12]} labels: {labels[:100]}")
    return 1 if reply.load_error else 0


def cmd_phantom(client, args) -> int:
    from medseg.phantom import make_phantom

    case = make_phantom(size=tuple(args.size), spacing=tuple(args.spacing) if args.spacing else None,
                        seed=args.seed)
    for name, path in case.write(args.output).items():
        print(f"{name:<9} {path}")
    if args.dicom:
        from medseg.dicom.write import write_study

        for phase, folder in write_study(case.phases, Path(args.output) / "dicom").items():
            print(f"{phase:<9} {folder}/ (DICOM series)")
    return 0


def _mask_with_table(client: Client, args):
    """A local mask with its label table: from the file (sidecar or .seg.nrrd), or stated
    with --labels; a mask without one is refused, since its numbers could be misread
    (TotalSegmentator's 1 is spleen, the convention's 1 is kidney)."""
    from medseg.client import _as_volume
    from medseg.labels import convention_table

    if args.by_ref:
        return _input(args, args.mask)
    volume = _as_volume("mask", args.mask, client.dicom)
    if args.labels == "convention":
        volume.labels = convention_table()
    elif args.labels:
        import json

        try:
            table = json.loads(Path(args.labels).read_text())["labels"]
            volume.labels = {int(v): str(n) for v, n in table.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LocalInputError("labels", args.labels, f"not a label table ({exc.__class__.__name__}); expected "
                                  '{"labels": {"1": "spleen", ...}}') from None
    elif volume.labels is None:
        raise LocalInputError("mask", args.mask, "carries no label table, so its numbers could be misread "
                              "(TotalSegmentator's 1 is spleen, the convention's 1 is kidney); state it: "
                              "--labels convention, or --labels TABLE.json ({\"labels\": {\"1\": \"spleen\", ...}}), "
                              "or keep the NAME.labels.json that medseg writes beside its masks")
    return volume


def cmd_measure(client: Client, args) -> int:
    out = client.measure(_mask_with_table(client, args), progress=args.progress)
    if args.json:
        print(json_format.MessageToJson(out.result))
        return 0
    for m in out.result.labels:
        print(f"{m.value:>3} {m.name:<12} {m.voxel_count:>10} voxels {m.volume_ml:>9.2f} ml "
              f"components={m.component_count} largest diameter={m.largest_diameter_mm:.1f} mm "
              f"box={list(m.bbox.min_index)}..{list(m.bbox.max_index)}")
        for c in m.components[1:] if m.component_count > 1 else []:
            print(f"      piece {c.voxel_count:>8} voxels {c.volume_ml:8.3f} ml box "
                  f"{[round(v, 1) for v in c.bbox.min_mm]}..{[round(v, 1) for v in c.bbox.max_mm]} mm")
    _print_info(out.result.info)
    return 0


def cmd_mesh(client: Client, args) -> int:
    formats = {"obj": sm.MESH_FORMAT_OBJ, "stl": sm.MESH_FORMAT_STL, "ply": sm.MESH_FORMAT_PLY,
               "glb": sm.MESH_FORMAT_GLB}
    fmt = args.format or (Path(args.output).suffix.lstrip(".") if args.output else "obj")
    if fmt not in formats:
        raise SystemExit(f"error: unknown mesh format '{fmt}' (choose from {sorted(formats)})")
    target = None
    if not args.by_ref:
        target = Path(args.output) if args.output else _default_local_output(args.mask, "mesh", f".{fmt}")
    out = client.mesh(
        _input(args, args.mask), labels=args.labels or (), smoothing=args.smoothing,
        decimation=args.decimation, min_island_mm3=args.min_island_mm3,
        coordinate_system=sm.COORDINATE_SYSTEM_RAS if args.ras else sm.COORDINATE_SYSTEM_LPS,
        fmt=formats[fmt], output=args.output if args.by_ref else None,
        inline=not args.by_ref, progress=args.progress,
        # The server names inline files (and the OBJ's mtllib line) after this stem.
        file_stem=target.name.removesuffix(target.suffix) if target else "")
    for m in out.result.meshes:
        print(f"{m.label:>3} {m.name:<10} {m.vertices:>8} vertices {m.faces:>8} faces "
              f"{m.volume_ml:9.2f} ml {m.area_mm2:10.1f} mm2 closed={m.closed} {m.note}")
    if out.result.note:
        print(out.result.note)
    if args.by_ref:
        for path in out.result.paths:
            print(f"written under the data root: {path}")
    elif out.files:
        target.parent.mkdir(parents=True, exist_ok=True)
        for name, data in out.files.items():
            path = target if name.endswith(f".{fmt}") else target.with_suffix(Path(name).suffix)
            path.write_bytes(data)
            print(f"written: {path}")
    return 0


def cmd_fat(client: Client, args) -> int:
    out = client.add_fat(_input(args, args.mask), _input(args, args.organs), _input(args, args.ct),
                         margin_mm=args.margin_mm, hu_min=args.hu_min, hu_max=args.hu_max,
                         progress=args.progress, **_volume_call_kwargs(args))
    print(f"fat: {out.result.fat_volume_ml:.2f} ml (CT used: {out.result.used_ct}) {out.result.note}")
    _save_volume_output(args, out, "fat", args.mask)
    return 0


def cmd_sample(client: Client, args) -> int:
    out = client.sample_from_template(_input(args, args.mask), _input(args, args.template),
                                      progress=args.progress, **_volume_call_kwargs(args))
    fit = out.result.fit
    print(f"template fit: kidney Dice {fit.kidney_dice_before:.3f} -> {fit.kidney_dice_after:.3f} {fit.note}")
    _print_labels("labels:", out.result.output.labels)
    _save_volume_output(args, out, "sample", args.mask)
    return 0


def cmd_connect(client: Client, args) -> int:
    limits = {k: v for k, v in dict(max_gap_mm=args.max_gap_mm, max_angle_deg=args.max_angle_deg,
                                    min_radius_ratio=args.min_radius_ratio).items() if v is not None}
    call = client.connect_vessels if args.structure == "vessels" else client.connect_ureters
    out = call(_input(args, args.mask), limits=limits, progress=args.progress,
               **_volume_call_kwargs(args))
    report = out.result.report
    print(f"pieces {report.pieces_before} -> {report.pieces_after} ({report.backend}); "
          f"{len(report.bridges)} bridge(s) {report.note}")
    for b in report.bridges:
        print(f"  bridge {b.length_mm:5.1f} mm radius {b.radius_start_mm:.1f}->{b.radius_end_mm:.1f} mm "
              f"({b.voxels_added} voxels)")
    for reason in report.rejected:
        print(f"  not joined: {reason}")
    _save_volume_output(args, out, args.structure, args.mask)
    return 0


def _add_fast(parser) -> None:
    parser.add_argument("--fast", action="store_true",
                        help="INFERENCE_MODE_FAST: the registry's larger tile step and fewer folds "
                             "(about 2x faster; Dice change in docs/performance.md)")


def cmd_segment(client: Client, args) -> int:
    crop = not args.no_crop
    common = dict(progress=args.progress, mode="fast" if args.fast else "accurate")
    if args.task == "case":
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        out = client.segment_case(
            tasks, arterial=_input(args, args.arterial), portal=_input(args, args.portal),
            delayed=_input(args, args.delayed), kidney_crop=crop,
            output_dir=args.output if args.by_ref else None, inline=not args.by_ref, **common)
    else:
        kwargs = dict(**common, **_volume_call_kwargs(args))
        if args.task != "total":
            kwargs["kidney_crop"] = crop
        method = {"total": client.segment_total, "ureter": client.segment_ureter,
                  "tumor": client.segment_tumor, "vessels": client.segment_vessels}[args.task]
        out = method(*[_input(args, p) for p in args.images], **kwargs)
    print(f"device: {out.result.device}")
    for output in out.result.outputs:
        _print_labels(f"{output.role}: {output.path or 'inline'}", output.labels)
        if not args.by_ref:
            if args.task == "case":
                folder = Path(args.output or ".")
                target = folder / f"{output.role}.nii.gz"
            else:
                target = Path(args.output) if args.output else _default_local_output(args.images[0], args.task)
            source = {"total": "ct", "tumor": "ct", "ureter": "delayed", "vessels": "arterial"}.get(args.task)
            write_mask(client, out.volumes[output.role], target, source)
            print(f"  written: {target}")
            read = client.dicom.reads.get(source)
            if getattr(args, "store", False) and target.name.lower().endswith(".dcm") and read and read.pacs:
                from medseg.dicom.web import store

                stored = store(read.pacs[0], [target], client.dicom.pacs_auth, study_uid=read.pacs[1])
                print(f"  stored in the PACS study {read.pacs[1]}: SEG {', '.join(stored)}")
    _print_info(out.result.info)
    return 0


# --- case jobs (medseg case ...) -------------------------------------------------------------

def _case_client(client: Client):
    from medseg.case_jobs import CaseClient

    return CaseClient(client.channel, timeout=client.timeout or 60.0)


class _CaseProgress:
    """WatchCase messages as progress: on a terminal one bar for the running step, redrawn
    in place, and a line for each step as it ends; otherwise plain lines, one per step
    change (and every 10% within a step), as the ProgressPrinter does."""

    def __init__(self, printer):
        self.printer = printer
        self.fraction = 0.0  # the job's, from the last progress event or snapshot

    def __call__(self, message) -> None:
        from medseg.case_jobs import state_name, step_state_name
        from medseg.cases.v1 import cases_pb2 as cpb
        from medseg.volume.v1 import volume_pb2 as vpb

        if self.printer is None:
            return
        if message.HasField("snapshot"):
            job = message.snapshot
            self.fraction = job.progress.fraction
            line = vpb.Progress(stage=job.progress.step or state_name(job.state).lower(),
                                fraction=self.fraction, message=job.progress.message)
        else:
            event = message.event
            if event.kind == cpb.CASE_EVENT_KIND_PROGRESS:
                self.fraction = event.fraction
                text = event.message
            elif event.kind == cpb.CASE_EVENT_KIND_STEP:
                text = step_state_name(event.step_state).lower() + (f": {event.message}" if event.message else "")
            else:
                text = state_name(event.state).lower()
            line = vpb.Progress(stage=event.step or "job", fraction=self.fraction, message=text)
            if event.kind == cpb.CASE_EVENT_KIND_STEP and event.step_state != cpb.STEP_STATE_RUNNING:
                self.printer(line)
                self.printer.done()  # a finished step keeps its line on a terminal
                return
        self.printer(line)


def _print_job(job, as_json: bool = False) -> None:
    from medseg.case_jobs import state_name, step_state_name

    if as_json:
        print(json_format.MessageToJson(job))
        return
    print(f"job {job.job_id}: {state_name(job.state)} {job.progress.fraction * 100:.0f}%"
          f"{'  ' + job.display_name if job.display_name else ''}")
    for step in job.progress.steps:
        print(f"  {step.name:<16} {step_state_name(step.state):<9} {step.seconds:6.1f}s  {step.note}")
    for skipped in job.result.skipped:
        print(f"  skipped task {nn.Task.Name(skipped.task).removeprefix('TASK_').lower()}: {skipped.reason}")
    if job.HasField("error"):
        print(f"  error in {job.error.step}: {job.error.code}: {job.error.message}")


def _case_inputs(args) -> dict:
    from medseg.case_jobs import Digest

    inputs = {}
    for phase in ("arterial", "portal", "delayed"):
        value = getattr(args, phase)
        if value is None:
            continue
        if value.startswith("sha256:"):
            inputs[phase] = Digest(value.removeprefix("sha256:"))
        else:
            inputs[phase] = Ref(value) if args.by_ref else Path(value)
    return inputs


def _case_submit(client: Client, args):
    cases = _case_client(client)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    formats = [f.strip() for f in args.mesh_formats.split(",") if f.strip()] if args.mesh_formats else None
    return cases, cases.submit(**_case_inputs(args), tasks=tasks, fat=not args.no_fat,
                               mesh_formats=formats, speck_max_mm3=args.speck_max_mm3,
                               display_name=args.name or "", request_id=args.request_id)


def _case_follow(cases, job_id: str, args) -> int:
    from medseg.case_jobs import state_name

    try:
        job = cases.wait(job_id, _CaseProgress(args.progress))
    except KeyboardInterrupt:
        if args.progress:
            args.progress.done()
        print(f"\ndetached; job {job_id} keeps running. Re-attach with: medseg case watch {job_id}",
              file=sys.stderr)
        return 130
    if args.progress:
        args.progress.done()
    _print_job(job)
    return 0 if state_name(job.state) == "SUCCEEDED" else 1


def cmd_case_run(client: Client, args) -> int:
    if args.pacs or args.study_dir:
        return _case_run_study(client, args)
    cases, job = _case_submit(client, args)
    print(f"job {job.job_id} submitted", file=sys.stderr)
    code = _case_follow(cases, job.job_id, args)
    if code == 0:
        written = cases.fetch(job.job_id, args.output or job.job_id)
        for path in written:
            print(f"written: {path}")
        _label_sidecars(client, Path(args.output or job.job_id), written)
    return code


def _case_run_study(client: Client, args) -> int:
    """A case from a DICOM study (--study-dir, or --pacs + --study): phases assigned and
    printed, uploaded, run, fetched; the mask also as mask.dcm (DICOM-SEG on its phase's
    series), stored back to the PACS study unless --no-store."""
    from medseg.dicom.seg import write_seg
    from medseg.dicom.study import pacs_auth, store_seg, study_case
    from medseg.labels import convention_table
    from medseg.volumes import read_volume

    from contextlib import ExitStack

    from medseg.dicom import DicomError

    overrides = dict(item.split("=", 1) for item in args.phase or [] if "=" in item)
    auth = pacs_auth(args.pacs_user, args.pacs_bearer)
    scope = ExitStack()
    try:
        study = scope.enter_context(study_case(
            args.study_dir, pacs=args.pacs or "", study_uid=args.study or "", auth=auth, overrides=overrides,
            allow_non_ct=args.allow_non_ct, on_note=lambda note: print(f"note: {note}", file=sys.stderr)))
    except DicomError as exc:
        if args.pacs:
            raise  # the PACS or its study: exit 2 like any failed call
        raise LocalInputError("study", args.study_dir, exc.reason) from None  # nothing sent: exit 1
    with scope:
        for line in study.lines:
            print(f"phase {line}")
        for phase, path in study.files.items():
            setattr(args, phase, str(path))
        cases, job = _case_submit(client, args)
        print(f"job {job.job_id} submitted", file=sys.stderr)
        code = _case_follow(cases, job.job_id, args)
        if code != 0:
            return code
        folder = Path(args.output or job.job_id)
        written = cases.fetch(job.job_id, folder)
        for path in written:
            print(f"written: {path}")
        _label_sidecars(client, folder, written)
        phase, read = study.seg_source()
        seg = write_seg(read_volume(folder / "mask.nii.gz", labels=convention_table()), folder / "mask.dcm", read,
                        algorithm="medseg case")
        print(f"written: {seg} (DICOM-SEG on the {phase} series {read.series.uid})")
        if args.pacs and not args.no_store:
            stored = store_seg(args.pacs, seg, study, auth)
            print(f"stored in the PACS study {study.study_uid}: SEG {', '.join(stored)}")
    return 0


def cmd_case_submit(client: Client, args) -> int:
    _cases, job = _case_submit(client, args)
    print(job.job_id)
    return 0


def cmd_case_watch(client: Client, args) -> int:
    return _case_follow(_case_client(client), args.job_id, args)


def cmd_case_status(client: Client, args) -> int:
    _print_job(_case_client(client).get(args.job_id), args.json)
    return 0


def cmd_case_list(client: Client, args) -> int:
    from medseg.case_jobs import state_name

    for job in _case_client(client).list(args.state):
        created = job.create_time.ToDatetime().isoformat(timespec="seconds")
        print(f"{job.job_id}  {state_name(job.state):<9} {job.progress.fraction * 100:4.0f}%  {created}  "
              f"{job.display_name}")
    return 0


def cmd_case_cancel(client: Client, args) -> int:
    _print_job(_case_client(client).cancel(args.job_id))
    return 0


def _label_sidecars(client: Client, folder: Path, written: list[Path]) -> None:
    """NAME.labels.json beside the fetched masks (NIfTI keeps no names): mask.nii.gz is in
    the convention, masks/<task>.nii.gz in its task's table (ListModels), so `medseg measure`
    reads them by name later."""
    from medseg.labelfiles import write_sidecar
    from medseg.labels import convention_table

    tables = None
    for path in written:
        relative = path.relative_to(folder).as_posix()
        if relative == "mask.nii.gz":
            write_sidecar(path, convention_table())
        elif relative.startswith("masks/") and relative.endswith(".nii.gz"):
            if tables is None:
                try:
                    tables = {nn.Task.Name(m.task).removeprefix("TASK_").lower(): {e.value: e.name for e in m.labels}
                              for m in client.list_models().models}
                except grpc.RpcError as exc:  # the outputs are fetched; only their names are missing
                    print(f"note: no label tables beside masks/ ({exc.code().name} from ListModels)", file=sys.stderr)
                    tables = {}
            table = tables.get(relative.removeprefix("masks/").removesuffix(".nii.gz"))
            if table:
                write_sidecar(path, table)


def cmd_case_fetch(client: Client, args) -> int:
    written = _case_client(client).fetch(args.job_id, args.output, include_work=args.work)
    for path in written:
        print(f"written: {path}")
    _label_sidecars(client, Path(args.output), written)
    return 0


def _add_case_parser(sub) -> None:
    case = sub.add_parser("case", help="case jobs: phases in, mask + meshes + report out")
    commands = case.add_subparsers(dest="case_command", required=True)
    for name, func, text in (("run", cmd_case_run, "upload, submit, follow, fetch the outputs"),
                             ("submit", cmd_case_submit, "submit and print the job id")):
        p = commands.add_parser(name, help=text)
        for phase in ("arterial", "portal", "delayed"):
            p.add_argument(f"--{phase}", help=f"{phase} phase: local file (uploaded), data-root path "
                                               "with --by-ref, or sha256:<digest> of an upload")
        p.add_argument("--tasks", help="comma list of total,tumor,vessels,ureter (default all)")
        p.add_argument("--no-fat", action="store_true", help="do not add perirenal fat")
        p.add_argument("--mesh-formats", help="comma list of obj,glb,stl,ply (default obj,glb)")
        p.add_argument("--speck-max-mm3", type=float, help="pieces below this are removed (default 50)")
        p.add_argument("--name", help="display name of the job")
        p.add_argument("--request-id", help="idempotency key (default: a fresh UUID)")
        p.add_argument("--by-ref", action="store_true", help="phases are paths under the data root")
        if name == "run":
            p.add_argument("-o", "--output", help="local folder for the outputs (default: the job id)")
            p.add_argument("--study-dir", help="a local DICOM study (folder, zip, DICOMDIR): phases assigned "
                                               "from its series, mask.dcm written beside the outputs")
            p.add_argument("--pacs", help="DICOMweb root URL of a PACS to pull --study from and store the SEG to")
            p.add_argument("--study", help="StudyInstanceUID (with --pacs, or to pick one in --study-dir)")
            p.add_argument("--phase", action="append", metavar="PHASE=SERIES_UID",
                           help="assign a series to a phase instead of the rules (repeatable)")
            p.add_argument("--pacs-user", help="basic authentication user; the password from MEDSEG_PACS_PASSWORD")
            p.add_argument("--pacs-bearer", action="store_true", help="bearer token from MEDSEG_PACS_TOKEN")
            p.add_argument("--no-store", action="store_true", help="do not store the SEG back to the PACS")
        p.set_defaults(func=func)
    p = commands.add_parser("watch", help="follow a job until it ends")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_case_watch)
    p = commands.add_parser("status", help="a job's state and steps")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_case_status)
    p = commands.add_parser("list", help="jobs, newest first")
    p.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    p.set_defaults(func=cmd_case_list)
    p = commands.add_parser("cancel", help="cancel a queued or running job")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_case_cancel)
    p = commands.add_parser("fetch", help="download a job's outputs")
    p.add_argument("job_id")
    p.add_argument("-o", "--output", required=True, help="local folder")
    p.add_argument("--work", action="store_true", help="also the intermediates (work/)")
    p.set_defaults(func=cmd_case_fetch)


# --- parser ------------------------------------------------------------------------------

def _add_io(parser: argparse.ArgumentParser, output_help: str = "output file") -> None:
    parser.add_argument("-o", "--output", help=f"{output_help} (a data-root path with --by-ref)")
    parser.add_argument("--by-ref", action="store_true",
                        help="arguments are paths under the server's data root; nothing is uploaded")


def _add_global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """--gateway, --timeout, --quiet: on the top-level parser with their defaults, and on
    every subcommand without defaults (SUPPRESS), so they work before or after it."""
    def default(value):
        return value if top else argparse.SUPPRESS

    parser.add_argument("--gateway", default=default(addresses.gateway_address()),
                        help="gateway HOST:PORT (default %s; env MEDSEG_GATEWAY)" % addresses.gateway_address())
    parser.add_argument("--timeout", type=float, default=default(None), help="deadline per call, seconds")
    parser.add_argument("--quiet", action="store_true", default=default(False), help="no progress display")
    parser.add_argument("--series", action="append", default=default([]), metavar="UID",
                        help="DICOM series to read where a local folder/zip/DICOMDIR holds several "
                             "(repeat for several inputs)")
    parser.add_argument("--allow-non-ct", action="store_true", default=default(False),
                        help="research: read non-CT DICOM and skip the HU plausibility check")


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for child in dict.fromkeys(action.choices.values()):
                yield child
                yield from _subparsers(child)


def build_parser() -> argparse.ArgumentParser:
    parser = _build_parser()
    for child in _subparsers(parser):
        _add_global_options(child, top=False)
    return parser


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medseg", description=__doc__)
    _add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("status", help="readiness of each service through the gateway").set_defaults(func=cmd_status)
    p = sub.add_parser("models", help="nnU-Net tasks, phases, labels, device")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("phantom", help="write a synthetic CT case with ground truth")
    p.add_argument("output", help="folder to write into")
    p.add_argument("--size", type=int, nargs=3, default=(128, 128, 96), metavar=("X", "Y", "Z"))
    p.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dicom", action="store_true",
                   help="also write the phases as CT series of one study under OUTPUT/dicom/")
    p.set_defaults(func=cmd_phantom, offline=True)

    p = sub.add_parser("measure", help="per-label volume, boxes, components, diameter")
    p.add_argument("mask")
    p.add_argument("--labels", metavar="convention|TABLE.json",
                   help="the mask's label table when its file carries none")
    p.add_argument("--by-ref", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser("mesh", help="mask -> smoothed surface meshes (.obj + .mtl)")
    p.add_argument("mask")
    _add_io(p, "mesh file (.obj/.stl/.ply/.glb)")
    p.add_argument("--labels", type=int, nargs="+")
    p.add_argument("--smoothing", type=float, help="0..1 for every structure (default per structure)")
    p.add_argument("--decimation", type=float, default=0.0, help="fraction of triangles to remove")
    p.add_argument("--min-island-mm3", type=float)
    p.add_argument("--ras", action="store_true", help="write RAS coordinates (default LPS)")
    p.add_argument("--format", choices=["obj", "stl", "ply", "glb"])
    p.set_defaults(func=cmd_mesh)

    p = sub.add_parser("fat", help="add perirenal fat")
    p.add_argument("mask")
    p.add_argument("organs", help="whole-body organ mask (segment total)")
    p.add_argument("--ct", help="CT on the mask's grid: restrict to the fat HU window")
    p.add_argument("--margin-mm", type=float)
    p.add_argument("--hu-min", type=float)
    p.add_argument("--hu-max", type=float)
    _add_io(p)
    p.set_defaults(func=cmd_fat)

    p = sub.add_parser("sample", help="quick full mask from a template fitted to the kidneys")
    p.add_argument("mask")
    p.add_argument("--template", help="template label map (default: the shipped one)")
    _add_io(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("connect", help="reconnect broken vessels or ureters")
    p.add_argument("structure", choices=["vessels", "ureter"])
    p.add_argument("mask")
    p.add_argument("--max-gap-mm", type=float)
    p.add_argument("--max-angle-deg", type=float)
    p.add_argument("--min-radius-ratio", type=float)
    _add_io(p)
    p.set_defaults(func=cmd_connect)

    p = sub.add_parser("segment", help="nnU-Net segmentation")
    tasks = p.add_subparsers(dest="task", required=True)
    for task, images, text in (("total", ["ct"], "whole-body organs"),
                               ("vessels", ["arterial", "portal"], "kidney, artery, vein"),
                               ("ureter", ["delayed"], "kidney, ureter"),
                               ("tumor", ["ct"], "kidney, tumor")):
        t = tasks.add_parser(task, help=text)
        t.add_argument("images", nargs=len(images), metavar=tuple(i.upper() for i in images),
                       help="files, DICOM folders/zips, or DICOMweb URLs <root>/studies/UID[/series/UID]")
        t.add_argument("--pacs-user", help="basic authentication for DICOMweb URLs; password from MEDSEG_PACS_PASSWORD")
        t.add_argument("--pacs-bearer", action="store_true", help="bearer token for DICOMweb URLs from MEDSEG_PACS_TOKEN")
        t.add_argument("--store", action="store_true",
                       help="with -o NAME.dcm and a DICOMweb input: store the SEG back into its study (STOW-RS)")
        if task != "total":
            t.add_argument("--no-crop", action="store_true", help="run on the whole image")
        else:
            t.set_defaults(no_crop=False)
        _add_fast(t)
        _add_io(t)
        t.set_defaults(func=cmd_segment)
    t = tasks.add_parser("case", help="several tasks on one case, each phase read once")
    t.add_argument("--tasks", default="total,vessels,ureter,tumor")
    t.add_argument("--arterial")
    t.add_argument("--portal")
    t.add_argument("--delayed")
    t.add_argument("--no-crop", action="store_true")
    _add_fast(t)
    _add_io(t, "output folder")
    t.set_defaults(func=cmd_segment)
    _add_case_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    printer = None if args.quiet else ProgressPrinter()
    args.progress = printer
    if getattr(args, "offline", False):
        return args.func(None, args)
    try:
        dicom = DicomReading(series_uids=tuple(args.series), allow_non_ct=args.allow_non_ct,
                             on_note=lambda note: print(f"note: {note}", file=sys.stderr))
        if getattr(args, "pacs_user", None) or getattr(args, "pacs_bearer", False):
            from medseg.dicom.study import pacs_auth

            dicom.pacs_auth = pacs_auth(args.pacs_user, args.pacs_bearer)
        with Client(args.gateway, timeout=args.timeout, dicom=dicom) as client:
            return args.func(client, args)
    except LocalInputError as exc:  # nothing was sent: the local file is the problem
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if printer:
            printer.done()


if __name__ == "__main__":
    sys.exit(main())
