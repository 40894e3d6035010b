"""Benchmark: vessel/ureter repair on a cut phantom, region-cropped path vs whole-volume path.

    .venv/bin/python bench/bench_postprocess_repair.py [--size 512,512,300] [--seed 0]

The phantom's label mask is cut in several places (gaps 2-8 mm in the renal and iliac
arteries and both ureters). Each operation runs in a fresh subprocess, once on the region
around its label (the product path) and once on the whole grid (whole_volume=True, the same
algorithm without the crop), so time and peak memory are measured alike. Printed per
operation: wall time of the call, the process's peak RSS and its rise over the loaded input,
the whole/cropped ratios, and what the repair did (bridges, pieces, Dice vs the uncut truth).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "clients" / "python")]
from ratios import record  # noqa: E402  (bench/, the script's folder)
os.environ.setdefault("OMP_NUM_THREADS", "2")

OPERATIONS = ("connect_vessels", "connect_ureters")


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset this process's peak RSS (Linux: write 5 to clear_refs), so the peak measured
    is the operation's own, not left over from imports or the process that started us."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    """Peak resident set size, MB: VmHWM where available, else getrusage (KiB on Linux)."""
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(folder: Path, operation: str, whole_volume: bool) -> dict:
    """Child process: load the cut mask, time one repair, report numbers as JSON."""
    import numpy as np

    from medseg.labels import Label
    from medseg.volumes import Volume
    from postprocess_svc import repair

    meta = json.loads((folder / "meta.json").read_text())
    cut = Volume(np.load(folder / "cut.npy"), tuple(meta["spacing"]), tuple(meta["origin"]), tuple(meta["direction"]))
    _reset_peak()
    before = _status_mb("VmRSS") or _peak_mb()
    start = time.perf_counter()
    out, report = getattr(repair, operation)(cut, whole_volume=whole_volume, backend="scipy")
    seconds = time.perf_counter() - start
    peak = _peak_mb()
    label = int(Label.ARTERY if operation == "connect_vessels" else Label.URETER)
    truth = np.load(folder / "truth.npy", mmap_mode="r")
    a, b = out.array == label, np.asarray(truth) == label
    dice = 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
    return {
        "seconds": seconds,
        "peak_mb": peak,
        "input_mb": before,
        "bridges": len(report.bridges),
        "lengths": [b.length_mm for b in report.bridges],
        "pieces": f"{report.pieces_before}->{report.pieces_after}",
        "dice": float(dice),
        "region_voxels": report.region_voxels,
        "changed": int(np.count_nonzero(out.array != cut.array)),
        "sha256": out.sha256(),
        "bridge_list": [[b.start_mm, b.end_mm, b.radius_start_mm, b.radius_end_mm] for b in report.bridges],
    }


def measure(folder: Path, operation: str, whole_volume: bool) -> dict:
    command = [sys.executable, __file__, "--child", str(folder), operation, "whole" if whole_volume else "crop"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{operation} ({'whole' if whole_volume else 'crop'}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def prepare(folder: Path, size: tuple[int, int, int], seed: int) -> dict:
    """Child process (keeps the parent small): make and cut the phantom, save the masks."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "tests"))
    from repair_cases import cut_phantom

    start = time.perf_counter()
    case = cut_phantom(size=size, seed=seed)
    np.save(folder / "cut.npy", case.cut.array)
    np.save(folder / "truth.npy", case.truth.array)
    meta = {"spacing": case.cut.spacing, "origin": case.cut.origin, "direction": case.cut.direction}
    (folder / "meta.json").write_text(json.dumps(meta))
    return {"seconds": time.perf_counter() - start, "gaps": case.gaps, "spacing": case.cut.spacing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="512,512,300", help="phantom size x,y,z in voxels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        size = tuple(int(v) for v in args.size.split(","))
        print(json.dumps(prepare(Path(args.prepare), size, args.seed)))
        return
    if args.child:
        folder, operation, mode = args.child
        print(json.dumps(run_one(Path(folder), operation, mode == "whole")))
        return

    size = tuple(int(v) for v in args.size.split(","))
    with tempfile.TemporaryDirectory(prefix="bench_repair_") as tmp:
        folder = Path(tmp)
        command = [sys.executable, __file__, "--prepare", str(folder), "--size", args.size, "--seed", str(args.seed)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"making the phantom failed:\n{done.stderr[-3000:]}")
        info = json.loads(done.stdout.strip().splitlines()[-1])
        voxels = size[0] * size[1] * size[2]
        spacing = "x".join(f"{s:.3g}" for s in info["spacing"])
        print(f"phantom {size[0]}x{size[1]}x{size[2]} ({voxels / 1e6:.1f} M voxels, {spacing} mm), "
              f"{len(info['gaps'])} cuts of 2-8 mm, made in {info['seconds']:.1f} s")
        for operation in OPERATIONS:
            crop = measure(folder, operation, whole_volume=False)
            whole = measure(folder, operation, whole_volume=True)
            identical = crop["sha256"] == whole["sha256"] and crop["bridge_list"] == whole["bridge_list"]
            same = "identical masks and bridges" if identical else "RESULTS DIFFER"
            print(f"{operation}: pieces {crop['pieces']}, {crop['bridges']} bridges {crop['lengths']} mm, "
                  f"Dice vs uncut {crop['dice']:.4f}; {same} on both paths")
            for name, r in (("cropped", crop), ("whole volume", whole)):
                print(f"  {name:13s} {r['seconds']:8.2f} s   peak RSS {r['peak_mb']:7.0f} MB "
                      f"(+{r['peak_mb'] - r['input_mb']:.0f} MB over the input)   region {r['region_voxels'] / 1e6:.2f} M voxels")
            print(f"  ratio whole/cropped: time {whole['seconds'] / crop['seconds']:.1f}x, peak RSS "
                  f"{whole['peak_mb'] / crop['peak_mb']:.1f}x, RSS rise "
                  f"{(whole['peak_mb'] - whole['input_mb']) / max(crop['peak_mb'] - crop['input_mb'], 1.0):.1f}x")
            record("postprocess", f"{operation} at {'x'.join(map(str, size))}: whole-volume / cropped",
                   whole["seconds"] / crop["seconds"],
                   note=f"time; Dice vs uncut {crop['dice']:.4f}, {crop['bridges']} bridges; {same}")


if __name__ == "__main__":
    main()
