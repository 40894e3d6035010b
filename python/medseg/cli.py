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
from medseg.client import Client, Ref
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


def _save_volume_output(args, out, suffix: str, source: str, role: str = "mask") -> None:
    if args.by_ref:
        output = out.result.output if hasattr(out.result, "output") else None
        if output is not None:
            print(f"written under the data root: {output.path}")
        return
    target = Path(args.output) if args.output else _default_local_output(source, suffix)
    write_volume(out.volumes[role], target)
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
    for model in reply.models:
        labels = ", ".join(f"{e.value}={e.name}" for e in model.labels if e.value)
        task = nn.Task.Name(model.task).removeprefix("TASK_").lower()
        print(f"  {task:<8} ready={model.ready} phases={list(model.phases)} "
              f"crop={model.kidney_crop} labels: {labels[:100]}")
    return 0


def cmd_phantom(client, args) -> int:
    from medseg.phantom import make_phantom

    case = make_phantom(size=tuple(args.size), spacing=tuple(args.spacing) if args.spacing else None,
                        seed=args.seed)
    for name, path in case.write(args.output).items():
        print(f"{name:<9} {path}")
    return 0


def cmd_measure(client: Client, args) -> int:
    out = client.measure(_input(args, args.mask), progress=args.progress)
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
    out = client.mesh(
        _input(args, args.mask), labels=args.labels or (), smoothing=args.smoothing,
        decimation=args.decimation, min_island_mm3=args.min_island_mm3,
        coordinate_system=sm.COORDINATE_SYSTEM_RAS if args.ras else sm.COORDINATE_SYSTEM_LPS,
        fmt=formats[fmt], output=args.output if args.by_ref else None,
        inline=not args.by_ref, progress=args.progress)
    for m in out.result.meshes:
        print(f"{m.label:>3} {m.name:<10} {m.vertices:>8} vertices {m.faces:>8} faces "
              f"{m.volume_ml:9.2f} ml {m.area_mm2:10.1f} mm2 closed={m.closed} {m.note}")
    if out.result.note:
        print(out.result.note)
    if args.by_ref:
        for path in out.result.paths:
            print(f"written under the data root: {path}")
    elif out.files:
        target = Path(args.output) if args.output else _default_local_output(args.mask, "mesh", f".{fmt}")
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


def cmd_segment(client: Client, args) -> int:
    crop = not args.no_crop
    common = dict(progress=args.progress)
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
            write_volume(out.volumes[output.role], target)
            print(f"  written: {target}")
    _print_info(out.result.info)
    return 0


# --- parser ------------------------------------------------------------------------------

def _add_io(parser: argparse.ArgumentParser, output_help: str = "output file") -> None:
    parser.add_argument("-o", "--output", help=f"{output_help} (a data-root path with --by-ref)")
    parser.add_argument("--by-ref", action="store_true",
                        help="arguments are paths under the server's data root; nothing is uploaded")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medseg", description=__doc__)
    parser.add_argument("--gateway", default=addresses.gateway_address(),
                        help="gateway HOST:PORT (default %(default)s; env MEDSEG_GATEWAY)")
    parser.add_argument("--timeout", type=float, default=None, help="deadline per call, seconds")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
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
    p.set_defaults(func=cmd_phantom, offline=True)

    p = sub.add_parser("measure", help="per-label volume, boxes, components, diameter")
    p.add_argument("mask")
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
        t.add_argument("images", nargs=len(images), metavar=tuple(i.upper() for i in images))
        if task != "total":
            t.add_argument("--no-crop", action="store_true", help="run on the whole image")
        else:
            t.set_defaults(no_crop=False)
        _add_io(t)
        t.set_defaults(func=cmd_segment)
    t = tasks.add_parser("case", help="several tasks on one case, each phase read once")
    t.add_argument("--tasks", default="total,vessels,ureter,tumor")
    t.add_argument("--arterial")
    t.add_argument("--portal")
    t.add_argument("--delayed")
    t.add_argument("--no-crop", action="store_true")
    _add_io(t, "output folder")
    t.set_defaults(func=cmd_segment)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    printer = None if args.quiet else ProgressPrinter()
    args.progress = printer
    if getattr(args, "offline", False):
        return args.func(None, args)
    try:
        with Client(args.gateway, timeout=args.timeout) as client:
            return args.func(client, args)
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
