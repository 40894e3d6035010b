#!/usr/bin/env python
"""AddFat and SampleFromTemplate on a phantom: region-cropped path vs whole-volume path.

Each run happens in a fresh subprocess that loads the inputs, then runs one operation once;
it reports wall time, CPU time (user + system: the host is shared, wall time is noisy) and
peak RSS, both in total and above what the loaded inputs already held. The ratio is the
whole-volume path over the cropped path, measured in the same run.

    .venv/bin/python bench/bench_postprocess_fat_template.py [--size 512 512 300] [--seed 0]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from ratios import record  # noqa: E402  (bench/, the script's folder)

RUNS = (("fat", False), ("fat", True), ("template", False), ("template", True))


def _peak_rss_mib() -> float:
    """Peak resident memory of this process since it started. VmHWM first: ru_maxrss on
    Linux carries the parent's RSS over fork+exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_inputs(folder: Path, size, seed: int) -> dict:
    """Generate the phantom once and store the arrays the operations need (.npy + geometry)."""
    import numpy as np

    from medseg.labels import Label
    from medseg.phantom import make_phantom

    case = make_phantom(size=tuple(size), seed=seed)
    labels = case.labels.array
    np.save(folder / "mask_nofat.npy", np.where(labels == Label.FAT, 0, labels).astype(np.uint8))
    np.save(folder / "patient.npy", np.where(np.isin(labels, [Label.KIDNEY, Label.TUMOR]), labels, 0).astype(np.uint8))
    np.save(folder / "organs.npy", case.organs.array)
    np.save(folder / "ct.npy", case.phases["portal"].array)
    geometry = {
        "spacing": case.labels.spacing,
        "origin": case.labels.origin,
        "direction": case.labels.direction,
        "organ_labels": {str(k): v for k, v in case.organs.labels.items()},
        "fat_margin_mm": max(s["thickness_mm"] for s in case.anatomy["perirenal_fat"].values()) + max(case.labels.spacing),
        "truth_fat_ml": float((labels == Label.FAT).sum() * case.labels.voxel_volume_mm3 / 1000),
    }
    (folder / "geometry.json").write_text(json.dumps(geometry))
    return geometry


def child(folder: Path, operation: str, whole_volume: bool) -> None:
    """Run one operation once and print a JSON line with its measurements."""
    import numpy as np

    from medseg.labels import NAMES
    from medseg.volumes import Volume

    geometry = json.loads((folder / "geometry.json").read_text())
    grid = dict(spacing=geometry["spacing"], origin=geometry["origin"], direction=geometry["direction"])
    if operation == "fat":
        from postprocess_svc.fat import add_fat

        mask = Volume(np.load(folder / "mask_nofat.npy"), labels=dict(NAMES), **grid)
        organs = Volume(np.load(folder / "organs.npy"), labels={int(k): v for k, v in geometry["organ_labels"].items()}, **grid)
        ct = Volume(np.load(folder / "ct.npy"), **grid)
        inputs_mib = _peak_rss_mib()
        wall, cpu = time.perf_counter(), _cpu_s()
        out, report = add_fat(mask, organs, ct, margin_mm=geometry["fat_margin_mm"], whole_volume=whole_volume)
        detail = (f"fat {report.fat_volume_ml:.1f} ml (truth {geometry['truth_fat_ml']:.1f} ml incl. polar caps the default "
                  f"kidney-extent limit leaves out), region {report.region_shape}")
    else:
        from postprocess_svc.template import fit_template

        patient = Volume(np.load(folder / "patient.npy"), labels=dict(NAMES), **grid)
        inputs_mib = _peak_rss_mib()
        wall, cpu = time.perf_counter(), _cpu_s()
        out, report = fit_template(patient, whole_volume=whole_volume)
        detail = f"kidney Dice {report.kidney_dice_before:.3f} -> {report.kidney_dice_after:.3f}, region {report.region_shape}"
    wall, cpu = time.perf_counter() - wall, _cpu_s() - cpu
    print(json.dumps({
        "wall_s": wall, "cpu_s": cpu, "peak_mib": _peak_rss_mib(), "inputs_mib": inputs_mib,
        "digest": hashlib.sha256(np.ascontiguousarray(out.array).tobytes()).hexdigest()[:16], "detail": detail,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description="AddFat / SampleFromTemplate: cropped vs whole-volume path")
    parser.add_argument("--size", type=int, nargs=3, default=(512, 512, 300), metavar=("X", "Y", "Z"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--make-inputs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1], args.child[2] == "whole")
        return
    if args.make_inputs:
        write_inputs(args.make_inputs, args.size, args.seed)
        return

    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory(prefix="bench_fat_template_") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        # In a subprocess too: the parent stays small, so nothing it held shows in the children.
        subprocess.run([sys.executable, __file__, "--make-inputs", str(folder), "--size", *map(str, args.size),
                        "--seed", str(args.seed)], env=env, check=True)
        print(f"phantom {args.size[0]}x{args.size[1]}x{args.size[2]} seed {args.seed}: generated in "
              f"{time.perf_counter() - started:.1f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        results = {}
        for operation, whole in RUNS:
            path = "whole" if whole else "cropped"
            done = subprocess.run(
                [sys.executable, __file__, "--child", str(folder), operation, path],
                env=env, capture_output=True, text=True, check=False,
            )
            if done.returncode != 0:
                print(f"{operation} {path}: FAILED\n{done.stderr[-2000:]}")
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results[(operation, path)] = result
            print(f"{operation:8s} {path:7s}: wall {result['wall_s']:6.2f} s  cpu {result['cpu_s']:6.2f} s  "
                  f"peak RSS {result['peak_mib']:7.0f} MiB (+{result['peak_mib'] - result['inputs_mib']:6.0f} MiB over inputs)  "
                  f"{result['detail']}")
        for operation in ("fat", "template"):
            cropped, whole = results.get((operation, "cropped")), results.get((operation, "whole"))
            if not (cropped and whole):
                continue
            extra = lambda r: max(1.0, r["peak_mib"] - r["inputs_mib"])  # noqa: E731
            same = "identical" if cropped["digest"] == whole["digest"] else "different (see the test for agreement)"
            print(f"{operation:8s} whole/cropped ratio: wall x{whole['wall_s'] / cropped['wall_s']:.1f}, "
                  f"cpu x{whole['cpu_s'] / cropped['cpu_s']:.1f}, peak RSS x{whole['peak_mib'] / cropped['peak_mib']:.2f} "
                  f"(over inputs x{extra(whole) / extra(cropped):.1f}); outputs {same}")
            size = "x".join(map(str, args.size))
            name = {"fat": "AddFat", "template": "SampleFromTemplate"}[operation]
            record("postprocess", f"{name} at {size}: whole-volume / cropped", whole["cpu_s"] / cropped["cpu_s"],
                   note="CPU time; outputs " + ("identical" if cropped["digest"] == whole["digest"] else "different"))
            record("postprocess", f"{name} at {size}: peak RSS rise whole-volume / cropped",
                   extra(whole) / extra(cropped), note="memory over the loaded inputs")


if __name__ == "__main__":
    main()
