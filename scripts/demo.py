"""The whole pipeline on a synthetic phantom case, through the running gateway.

Run by `make demo` after `make up`. Writes a phantom case under the data root, then:
SegmentCase (total, tumor, vessels, ureter; each phase read once) -> combine the kidney
tasks into one convention mask -> ConnectVessels -> ConnectUreters -> AddFat (with the CT)
-> MeshMask (.obj + .mtl) -> Measure; plus SampleFromTemplate on the kidney/tumor mask.
Every step's result is summarised, and masks are scored against the phantom's ground truth.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from medseg.cli import ProgressPrinter
from medseg.client import Client, Ref
from medseg.labels import NAMES, Label
from medseg.phantom import make_phantom
from medseg.volumes import read_volume, write_volume

KIDNEY_TASK_LABELS = {"tumor": (Label.KIDNEY, Label.TUMOR), "vessels": (Label.ARTERY, Label.VEIN),
                      "ureter": (Label.URETER,)}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


def score(title: str, mask: np.ndarray, truth: np.ndarray, labels) -> None:
    parts = [f"{NAMES[v]} {dice(mask == v, truth == v):.3f}" for v in labels]
    print(f"  Dice vs ground truth ({title}): " + ", ".join(parts))


def step(name: str):
    print(f"\n== {name}")
    return time.monotonic()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gateway", default=None)
    # The demo models were trained at 3 mm: a 127 x 127 x 100 phantom has that spacing.
    parser.add_argument("--size", type=int, nargs=3, default=(127, 127, 100))
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()

    root = Path(os.environ.get("MEDSEG_DATA_ROOT", "data")).resolve()
    case_dir = root / "demo"
    started = step(f"phantom case {tuple(args.size)} seed {args.seed} -> {case_dir}")
    case = make_phantom(size=tuple(args.size), seed=args.seed)
    files = case.write(case_dir)
    ref = {name: Ref(str(path.relative_to(root))) for name, path in files.items()}
    print(f"  written {sorted(files)} in {time.monotonic() - started:.1f}s")
    truth = case.labels.array

    progress = ProgressPrinter(sys.stdout)
    with Client(args.gateway) as client:
        states = client.status()
        print("\n== status through the gateway: " + ", ".join(f"{k} {v}" for k, v in states.items()))
        if any(state != "SERVING" for state in states.values()):
            print("not every service is ready; run `make up` first", file=sys.stderr)
            return 1

        t = step("SegmentCase: total, tumor, vessels, ureter (by reference)")
        out = client.segment_case(["total", "tumor", "vessels", "ureter"], arterial=ref["arterial"],
                                  portal=ref["portal"], delayed=ref["delayed"],
                                  output_dir="demo/segment", progress=progress)
        print(f"  device {out.result.device}; {len(out.result.info.received)} image reads "
              f"for {len(out.result.outputs)} tasks; {time.monotonic() - t:.1f}s")
        masks = {o.role: read_volume(root / o.path) for o in out.result.outputs}
        for role, mask in masks.items():
            print(f"  {role:<8} -> {root / out.result.outputs[[o.role for o in out.result.outputs].index(role)].path}")

        # One convention mask from the kidney tasks (all phases share the phantom's grid).
        combined = np.zeros_like(truth)
        for task, labels in KIDNEY_TASK_LABELS.items():
            for label in labels:
                combined[(masks[task].array == label) & (combined == 0)] = label
        score("segmentation", combined, truth, [Label.KIDNEY, Label.TUMOR, Label.ARTERY, Label.VEIN, Label.URETER])
        combined_path = case_dir / "segment" / "combined.nii.gz"
        write_volume(case.labels.with_array(combined), combined_path)

        t = step("ConnectVessels (inline)")
        out = client.connect_vessels(combined_path, inline=True, progress=progress)
        report = out.result.report
        print(f"  artery pieces {report.pieces_before} -> {report.pieces_after}, "
              f"{len(report.bridges)} bridge(s); {time.monotonic() - t:.1f}s")
        repaired = out.volumes["mask"]

        t = step("ConnectUreters (inline)")
        out = client.connect_ureters(repaired, inline=True, progress=progress)
        report = out.result.report
        print(f"  ureter pieces {report.pieces_before} -> {report.pieces_after}, "
              f"{len(report.bridges)} bridge(s); {time.monotonic() - t:.1f}s")
        repaired = out.volumes["mask"]
        repaired_path = case_dir / "segment" / "repaired.nii.gz"
        write_volume(repaired, repaired_path)

        t = step("AddFat with the organ mask and the CT (by reference)")
        out = client.add_fat(Ref(str(repaired_path.relative_to(root))),
                             Ref(str((root / "demo/segment/total.nii.gz").relative_to(root))),
                             ref["portal"], output="demo/final_mask.nii.gz", progress=progress)
        print(f"  fat {out.result.fat_volume_ml:.1f} ml (truth {np.count_nonzero(truth == Label.FAT) * case.labels.voxel_volume_mm3 / 1000:.1f} ml), "
              f"CT used: {out.result.used_ct}; {time.monotonic() - t:.1f}s")
        final = read_volume(root / out.result.output.path)
        score("final mask", final.array, truth, list(Label)[1:])

        t = step("MeshMask -> OBJ + MTL (by reference)")
        out = client.mesh(Ref("demo/final_mask.nii.gz"), output="demo/model.obj", progress=progress)
        for m in out.result.meshes:
            print(f"  {m.name:<8} {m.faces:>7} faces {m.volume_ml:8.1f} ml closed={m.closed}")
        print(f"  files: {', '.join(str(root / p) for p in out.result.paths)}; {time.monotonic() - t:.1f}s")

        t = step("Measure the final mask (by reference)")
        out = client.measure(Ref("demo/final_mask.nii.gz"))
        for m in out.result.labels:
            print(f"  {m.name:<8} {m.volume_ml:8.1f} ml, {m.component_count} piece(s), "
                  f"largest diameter {m.largest_diameter_mm:.1f} mm")

        t = step("SampleFromTemplate on the kidney/tumor mask (by reference)")
        out = client.sample_from_template(Ref("demo/segment/tumor.nii.gz"), output="demo/sample.nii.gz",
                                          progress=progress)
        fit = out.result.fit
        print(f"  kidney Dice {fit.kidney_dice_before:.3f} -> {fit.kidney_dice_after:.3f}; "
              f"{time.monotonic() - t:.1f}s -> {root / out.result.output.path}")

    print(f"\nDone in {time.monotonic() - started:.0f}s. Outputs are under {case_dir}. "
          "The stack is still up: try `medseg status` or grpcurl; `make down` stops it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
