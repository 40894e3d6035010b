#!/usr/bin/env python
"""nnunet_svc benchmark: resident predictors vs nnU-Net's CLI, shared phase reads, kidney crop.

Everything is measured in this one run, on one phantom case and the demo models of
models/registry.yaml:
1. warm in-process TaskPredictor.predict vs `nnUNetv2_predict_from_modelfolder` for the same
   case, model and settings (a subprocess: it loads the model for every call, which is the point),
   and the registry's batched tiles vs one tile per forward pass (nnU-Net's own loop);
2. one SegmentCase-style pass over four tasks (each phase read once, `tumor` cropped with the
   kidney mask `total` already produced) vs four separate calls (each reads its own phases, `tumor`
   finds the kidneys with its locator);
3. `tumor` on the full image, on the kidney crop found by the locator, and on the crop found from a
   `total` mask at hand, each in a fresh subprocess: predict time and peak RSS.

Usage: .venv/bin/python bench/bench_nnunet.py [--size 512 512 300 | --size 0 0 0 --spacing 3.0] [--seed 2000]
       [--repeats 3]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FOV_MM = (380.0, 380.0, 300.0)
sys.path.insert(0, str(REPO / "bench"))
from procstat import reset_peak, status_mb  # noqa: E402
from ratios import record  # noqa: E402


def make_case(seed: int, spacing: float, folder: Path, size=None) -> dict[str, Path]:
    """The whole-body field of view at `spacing`, or on a grid of `size` voxels over it."""
    from medseg.phantom import make_phantom

    if size:
        return make_phantom(size=tuple(size), seed=seed, fov_mm=FOV_MM).write(folder)
    size = tuple(int(round(f / spacing)) for f in FOV_MM)
    return make_phantom(size=size, spacing=(spacing,) * 3, seed=seed, fov_mm=FOV_MM).write(folder)


CROP_MODES = {"full": "full image", "located": "crop from the 4 mm locator (its pass timed too)",
              "hinted": "crop from the `total` mask already computed (as in SegmentCase)"}


def crop_child(portal: str, mode: str) -> None:
    """Runs in a fresh process: load + warm `tumor`, then one timed prediction in `mode`."""
    import torch

    from medseg.volumes import read_volume
    from nnunet_svc.predict import TaskPredictor
    from nnunet_svc.registry import load_registry

    registry = load_registry()
    p = TaskPredictor(registry["tumor"], torch.device("cpu"))
    p.warm_up()
    image = read_volume(portal)
    hint = TaskPredictor(registry["total"], torch.device("cpu")).predict({"portal": image}) if mode == "hinted" else None
    before = status_mb("VmRSS")
    reset_peak()  # count the prediction's peak, not start-up's
    t = time.perf_counter()
    p.predict({"portal": image}, kidney_crop=mode != "full", kidney_hint=hint)
    seconds = time.perf_counter() - t
    peak = status_mb("VmHWM")
    print(json.dumps({"seconds": seconds, "rss_before_mb": before, "peak_rss_mb": peak}))


def compare_crop(registry, files: dict[str, Path], size) -> None:
    """3. kidney crop vs full image, each in a fresh process: predict time and peak RSS."""
    import numpy as np
    import torch

    from medseg.volumes import read_volume
    from nnunet_svc.predict import TaskPredictor

    results = {}
    for mode in CROP_MODES:
        out = subprocess.run([sys.executable, __file__, "--crop-child", str(files["portal"]), mode],
                             check=True, capture_output=True, text=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    tumor = TaskPredictor(registry["tumor"], torch.device("cpu"))
    portal = read_volume(files["portal"])
    box = tumor.locate_kidneys(portal)
    cropped, starts = tumor.parts[0].tile_crop(portal, box) if box else ((slice(None),) * 3, None)
    frac = float(np.prod(portal.array[cropped].shape)) / float(np.prod(size))
    n_crop = int(np.prod([len(s) for s in starts])) if starts else 0
    n_full = len(tumor.parts[0].predictor._internal_get_sliding_window_slicers(portal.array.shape))
    print(f"[tumor] kidney crop: {100 * frac:.0f}% of the voxels, {n_crop} of {n_full} network tiles")
    full = results["full"]
    for mode, what in CROP_MODES.items():
        r = results[mode]
        extra = r["peak_rss_mb"] - r["rss_before_mb"]
        line = (f"[tumor] {what}: {r['seconds']:.2f} s, peak RSS during predict {r['peak_rss_mb']:.0f} MB "
                f"(+{extra:.0f} MB over the loaded service)")
        if mode != "full":
            line += (f" | vs full image: time ratio {full['seconds'] / r['seconds']:.2f}x, extra-memory ratio "
                     f"{(full['peak_rss_mb'] - full['rss_before_mb']) / max(1.0, extra):.2f}x")
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs=3, default=(512, 512, 300), metavar=("X", "Y", "Z"),
                    help="whole-body case grid (default a real scan's 512 x 512 x 300, 0.74 x 0.74 x 1.0 mm)")
    ap.add_argument("--spacing", type=float, default=3.0,
                    help="isotropic spacing in mm of the kidney-region image (and of the whole-body case with --size 0 0 0)")
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--task", default="tumor", help="task for the CLI comparison")
    ap.add_argument("--only-crop", action="store_true", help="run only the kidney-crop comparison")
    ap.add_argument("--crop-child", nargs=2, metavar=("PORTAL", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.crop_child:
        crop_child(*args.crop_child)
        return

    from nnunet_svc.registry import load_registry

    registry = load_registry()
    tmp = Path(tempfile.mkdtemp(prefix="bench_nnunet_"))
    try:
        run(args, registry, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# the SDK's input roles per task (the service's request fields), and the phase file each reads
ROLES = {"total": {"ct": "portal"}, "tumor": {"ct": "portal"}, "ureter": {"delayed": "delayed"},
         "vessels": {"arterial": "arterial", "portal": "portal"}}


def run(args, registry, tmp: Path) -> None:
    import numpy as np
    import SimpleITK as sitk
    import torch

    from medseg.client import Client, Ref
    from medseg.serving.config import ServerConfig
    from medseg.volumes import read_volume
    from nnunet_svc.predict import TaskPredictor
    from nnunet_svc.server import create_server

    files = make_case(args.seed, args.spacing, tmp / "case", size=[s for s in args.size if s] or None)
    portal = read_volume(files["portal"])
    size = portal.size
    print(f"phantom seed {args.seed}: {size} voxels at {tuple(round(s, 2) for s in portal.spacing)} mm; torch threads {torch.get_num_threads()}, "
          f"cpu count {os.cpu_count()}")

    if args.only_crop:
        compare_crop(registry, files, size)
        return

    # 1. warm service vs nnU-Net CLI --------------------------------------------------------------
    spec = registry[args.task]
    t = time.perf_counter()
    predictors = {name: TaskPredictor(s, torch.device("cpu")) for name, s in registry.items()}
    for p in predictors.values():
        p.warm_up()
    print(f"start-up: {len(predictors)} tasks loaded and warmed in {time.perf_counter() - t:.1f} s")
    server, servicer = create_server(ServerConfig(service="nnunet", data_root=tmp, port=0))
    server.start()
    servicer.load(on_ready=lambda: server.set_serving(True))
    client = Client(f"127.0.0.1:{server.port}", timeout=600)
    one_tile = TaskPredictor(dataclasses.replace(spec, tile_batch_size=1), torch.device("cpu"))
    one_tile.warm_up()

    def warm_seconds(predictor: TaskPredictor, phases: dict) -> tuple[float, object]:
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            mask = predictor.predict(phases, kidney_crop=False)
            times.append(time.perf_counter() - t)
        return statistics.median(times), mask

    def compare_with_cli(files: dict[str, Path], label: str, crop: bool = False) -> None:
        phases = {p: read_volume(files[p]) for p in spec.phases}
        warm_s, ours = warm_seconds(predictors[args.task], phases)
        one_s, one_mask = warm_seconds(one_tile, phases)
        print(f"[{args.task}] {label} {ours.size}: warm predict, one tile per forward pass (nnU-Net's loop): "
              f"{one_s:.2f} s | {spec.tile_batch_size} tiles per pass: {warm_s:.2f} s | ratio {one_s / warm_s:.1f}x | "
              f"masks identical: {np.array_equal(ours.array, one_mask.array)}")
        out_dir = Path(tempfile.mkdtemp(dir=tmp))
        inp = out_dir / "in"
        inp.mkdir()
        for c, p in enumerate(spec.phases):
            os.symlink(files[p], inp / f"case_{c:04d}.nii.gz")
        model = spec.models[0]
        cli = [str(Path(sys.executable).parent / "nnUNetv2_predict_from_modelfolder"), "-i", str(inp), "-o",
               str(out_dir / "out"), "-m", str(model.folder), "-f", *[str(f) for f in model.folds], "-chk",
               model.checkpoint, "-step_size", str(spec.tile_step_size), "-device", "cpu", "--disable_progress_bar"]
        if not spec.use_mirroring:
            cli.append("--disable_tta")
        t = time.perf_counter()
        subprocess.run(cli, check=True, capture_output=True)
        cli_s = time.perf_counter() - t
        theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(out_dir / "out" / "case.nii.gz")))
        lut = np.zeros(max(model.model_labels) + 1, np.uint8)
        for m, o in model.label_map.items():
            lut[m] = o
        same = np.array_equal(ours.array, lut[theirs])
        print(f"[{args.task}] {label} {ours.size}: warm in-process predict, crop off (median of {args.repeats}): "
              f"{warm_s:.2f} s | nnUNetv2_predict_from_modelfolder, same settings, one case incl. start-up and "
              f"model load: {cli_s:.2f} s | ratio {cli_s / warm_s:.1f}x | masks identical: {same}")
        # the same through the running service: a gRPC call by reference reads and writes files, as the CLI does
        call = getattr(client, f"segment_{args.task}")
        refs = {role: Ref(str(files[phase].relative_to(tmp))) for role, phase in ROLES[args.task].items()}
        options = {} if args.task == "total" else {"kidney_crop": False}
        output = f"{out_dir.name}/service_{args.task}.nii.gz"
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            call(**refs, output=output, **options)
            times.append(time.perf_counter() - t)
        call_s = statistics.median(times)
        served = read_volume(tmp / output)
        size = "x".join(map(str, ours.size))
        record("nnunet", f"{args.task} {size}: nnUNetv2_predict CLI / warm service call", cli_s / call_s,
               note=f"same model and settings, crop off, masks identical: {np.array_equal(served.array, lut[theirs])}")
        record("nnunet", f"{args.task} {size}: nnUNetv2_predict CLI / warm in-process predict", cli_s / warm_s)
        print(f"[{args.task}] {label} {ours.size}: warm service gRPC call by reference (reads and writes files), "
              f"crop off (median of {args.repeats}): {call_s:.2f} s | vs the CLI: ratio {cli_s / call_s:.1f}x | "
              f"masks identical: {np.array_equal(served.array, lut[theirs])}")
        if crop:
            t = time.perf_counter()
            predictors[args.task].predict(phases, kidney_crop=True)
            crop_s = time.perf_counter() - t
            print(f"[{args.task}] {label}: warm service predict with the kidney crop (locator pass included): "
                  f"{crop_s:.2f} s | ratio vs the CLI {cli_s / crop_s:.1f}x")

    compare_with_cli(files, "whole-body image", crop=True)
    from medseg.labels import PHASES
    from medseg.phantom import make_phantom

    # 240 x 162 x 162 mm around the kidneys
    small_size = tuple(int(round(f / args.spacing)) for f in (240.0, 162.0, 162.0))
    small = make_phantom(size=small_size, spacing=(args.spacing,) * 3, seed=args.seed,
                         origin=(-(small_size[0] - 1) * args.spacing / 2, -40.0, -80.0)).write(tmp / "small")
    compare_with_cli(small, "kidney-region image")

    # 2. four tasks sharing phase reads vs four separate calls ----------------------------------------
    order = ["total", "vessels", "ureter", "tumor"]

    def shared_case() -> None:
        read = {p: read_volume(files[p]) for p in PHASES}
        total = predictors["total"].predict({"portal": read["portal"]})
        for name in order[1:]:
            predictors[name].predict({p: read[p] for p in registry[name].phases}, kidney_hint=total)

    def separate_calls() -> None:
        for name in order:
            predictors[name].predict({p: read_volume(files[p]) for p in registry[name].phases})

    t = time.perf_counter()
    shared_case()
    shared_s = time.perf_counter() - t
    t = time.perf_counter()
    separate_calls()
    separate_s = time.perf_counter() - t
    record("nnunet", "four tasks: separate calls / one SegmentCase pass", separate_s / shared_s,
           note="phases read once, kidney mask shared")
    print(f"[case] four tasks, phases read once + kidney mask shared: {shared_s:.2f} s | four separate calls: "
          f"{separate_s:.2f} s | ratio {separate_s / shared_s:.2f}x")

    client.close()
    server.stop(drain_seconds=0, grace=0)
    compare_crop(registry, files, size)


if __name__ == "__main__":
    main()
