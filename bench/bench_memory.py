#!/usr/bin/env python
"""Peak resident memory (VmHWM) per service at clinical size: 512 x 512 x Z phantom cases
(0.74 x 0.74 x 300/Z*... mm: the phantom's 380 x 380 x 300 mm field of view), issue 12 item 1.

Every measurement runs in a fresh subprocess and reads /proc/self/status (VmHWM = peak RSS):
- nnunet: the four tasks' TaskPredictors (models/registry.yaml) built and warmed up, the three phases
  read from NIfTI as the service reads them, then `segment_case` over total, tumor, ureter, vessels
  (what SegmentCase runs), then the four masks written as .nii.gz (what the service delivers);
  once with nnU-Net's own pre/post-processing (`--modes stock`, MEDSEG_NNUNET_LEAN=0, the "before")
  and once with the bounded-memory path (`lean`, the default). The masks of the two modes are
  compared voxel for voxel.
- postprocess (add_fat, connect_vessels, measure) and smoothing (mesh_labels) science functions on
  the phantom's true masks (`--services`).

Usage:
  .venv/bin/python bench/bench_memory.py                      # 512x512x300, stock and lean, + services
  .venv/bin/python bench/bench_memory.py --sizes 300 800 --modes lean --services
Case files are kept under --workdir (default /tmp/medseg_bench_memory) and reused.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "python"))
sys.path.insert(0, str(REPO / "bench"))
from procstat import reset_peak, status_mb  # noqa: E402
from ratios import record  # noqa: E402

FOV_MM = (380.0, 380.0, 300.0)
TASKS = ("total", "tumor", "ureter", "vessels")


# ----------------------------------------------------------------------------- subprocess bodies

def make_case(folder: Path, z: int, seed: int) -> None:
    from medseg.phantom import make_phantom
    from medseg.volumes import write_volume

    case = make_phantom(size=(512, 512, z), seed=seed, fov_mm=FOV_MM)
    folder.mkdir(parents=True, exist_ok=True)
    for p, v in case.phases.items():
        write_volume(v, folder / f"{p}.nii")
    write_volume(case.labels, folder / "labels.nii")
    write_volume(case.organs, folder / "organs.nii")


def run_nnunet(folder: Path, mode: str, out: Path) -> dict:
    import torch

    from medseg.volumes import read_volume, write_volume
    from nnunet_svc.predict import build_predictors, segment_case
    from nnunet_svc.registry import load_registry

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    rec: dict = {"mode": mode}
    t = time.perf_counter()
    predictors = build_predictors(load_registry(), torch.device("cpu"), warm_up=True, lean=(mode == "lean"),
                                  max_voxels=512 * 512 * 1024)
    rec["load_s"] = time.perf_counter() - t
    rec["loaded_mb"] = status_mb("VmHWM")
    phases = {p: read_volume(folder / f"{p}.nii") for p in ("arterial", "portal", "delayed")}
    rec["phase_dtype"] = str(phases["portal"].array.dtype)
    rec["after_read_rss_mb"] = status_mb("VmRSS")
    rec["after_read_peak_mb"] = status_mb("VmHWM")
    per_task: dict[str, float] = {}
    state = {"task": None, "t": time.perf_counter()}
    task_s: dict[str, float] = {}

    def progress(stage: str, fraction: float, message: str) -> None:
        task = stage.split(":", 1)[0]
        if state["task"] is not None:
            per_task[state["task"]] = max(per_task.get(state["task"], 0.0), status_mb("VmHWM"))
        if task != state["task"]:
            now = time.perf_counter()
            if state["task"] is not None:
                task_s[state["task"]] = now - state["t"]
            state.update(task=task, t=now)
        reset_peak()

    t = time.perf_counter()
    masks = segment_case(predictors, phases, TASKS, progress=progress)
    rec["segment_s"] = time.perf_counter() - t
    per_task[state["task"]] = max(per_task.get(state["task"], 0.0), status_mb("VmHWM"))
    task_s[state["task"]] = time.perf_counter() - state["t"]
    rec["task_peak_mb"] = per_task
    rec["task_s"] = task_s
    rec["segment_peak_mb"] = max([rec["after_read_peak_mb"], *per_task.values()])
    rec["lean_paths"] = {t: sorted({getattr(part.predictor, "lean_path", "-") for part in p.parts})
                         for t, p in predictors.items()}
    reset_peak()
    out.mkdir(parents=True, exist_ok=True)
    for task, mask in masks.items():
        write_volume(mask, out / f"{task}.nii.gz")
    rec["write_peak_mb"] = status_mb("VmHWM")
    rec["peak_mb"] = max(rec["segment_peak_mb"], rec["write_peak_mb"])
    return rec


def run_service(folder: Path, what: str) -> dict:
    from medseg.volumes import read_volume

    rec: dict = {"function": what}
    labels = read_volume(folder / "labels.nii")
    extra = {}
    if what == "add_fat":
        extra = {"organs": read_volume(folder / "organs.nii"), "ct": read_volume(folder / "portal.nii")}
    # import the science module before the baseline so its import cost is not counted as work
    if what == "add_fat":
        from postprocess_svc.fat import add_fat as fn
    elif what == "connect_vessels":
        from postprocess_svc.repair import connect_vessels as fn
    elif what == "measure":
        from postprocess_svc.measure import measure_mask as fn
    else:
        from smoothing_svc.meshing import mesh_labels as fn
    rec["inputs_rss_mb"] = status_mb("VmRSS")
    reset_peak()
    t = time.perf_counter()
    if what == "add_fat":
        fn(labels, extra["organs"], extra["ct"])
    else:
        fn(labels)
    rec["seconds"] = time.perf_counter() - t
    rec["peak_mb"] = status_mb("VmHWM")
    return rec


# ----------------------------------------------------------------------------- driver

def child(args: list[str], env: dict | None = None, timeout: float = 3600) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'python'}", **(env or {})})
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"rc {proc.returncode}"],
                "rc": proc.returncode}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def masks_equal(a: Path, b: Path) -> dict[str, bool]:
    import numpy as np

    from medseg.volumes import read_volume

    return {t: bool(np.array_equal(read_volume(a / f"{t}.nii.gz").array, read_volume(b / f"{t}.nii.gz").array))
            for t in TASKS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[300], help="slice counts Z of 512x512xZ cases")
    ap.add_argument("--modes", nargs="+", default=["stock", "lean"], choices=["stock", "lean"])
    ap.add_argument("--services", action="store_true", help="also postprocess and smoothing science functions")
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/medseg_bench_memory"))
    ap.add_argument("--json", type=Path, help="write the records here")
    ap.add_argument("--_make", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--_nnunet", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--_service", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._make:
        make_case(Path(args._make[0]), int(args._make[1]), args.seed)
        print(json.dumps({"ok": True}))
        return
    if args._nnunet:
        print(json.dumps(run_nnunet(Path(args._nnunet[0]), args._nnunet[1], Path(args._nnunet[2]))))
        return
    if args._service:
        print(json.dumps(run_service(Path(args._service[0]), args._service[1])))
        return

    records = []
    for z in args.sizes:
        folder = args.workdir / f"512x512x{z}_seed{args.seed}"
        if not (folder / "labels.nii").is_file():
            t = time.perf_counter()
            print(f"making the 512x512x{z} phantom in {folder} ...", flush=True)
            child(["--_make", str(folder), str(z), "--seed", str(args.seed)])
            print(f"  {time.perf_counter() - t:.0f} s", flush=True)
        for mode in args.modes:
            print(f"nnunet {mode} 512x512x{z} ...", flush=True)
            rec = child(["--_nnunet", str(folder), mode, str(folder / f"masks_{mode}")],
                        env={"MEDSEG_NNUNET_LEAN": "1" if mode == "lean" else "0"})
            rec.update(service="nnunet", size=f"512x512x{z}")
            records.append(rec)
            print("  " + json.dumps(rec), flush=True)
        if set(args.modes) == {"stock", "lean"} and all("error" not in r for r in records if r.get("size") == f"512x512x{z}"):
            eq = masks_equal(folder / "masks_stock", folder / "masks_lean")
            records.append({"service": "nnunet", "size": f"512x512x{z}", "masks_identical": eq})
            print(f"  masks lean == stock: {eq}", flush=True)
            peak = {r["mode"]: r["peak_mb"] for r in records if r.get("size") == f"512x512x{z}" and "mode" in r}
            same = "identical" if all(eq.values()) else "DIFFERENT"
            record("memory", f"nnunet SegmentCase x4 at 512x512x{z}: peak RSS stock / lean", peak["stock"] / peak["lean"],
                   note=f"lean {peak['lean']:.0f} MB, stock {peak['stock']:.0f} MB; masks {same}")
        if args.services:
            for what in ("add_fat", "connect_vessels", "measure", "mesh_labels"):
                print(f"{what} 512x512x{z} ...", flush=True)
                rec = child(["--_service", str(folder), what])
                rec.update(service="smoothing" if what == "mesh_labels" else "postprocess", size=f"512x512x{z}")
                records.append(rec)
                print("  " + json.dumps(rec), flush=True)

    print("\n| service | size | what | peak RSS (MB) | time (s) | notes |")
    print("|---|---|---|---|---|---|")
    for r in records:
        if "masks_identical" in r:
            print(f"| nnunet | {r['size']} | lean vs stock masks | | | identical: {r['masks_identical']} |")
        elif "error" in r:
            print(f"| {r['service']} | {r['size']} | {r.get('mode') or r.get('function')} | failed | | {r['error']} |")
        elif r["service"] == "nnunet":
            tasks = ", ".join(f"{t} {v:.0f}" for t, v in r["task_peak_mb"].items())
            print(f"| nnunet | {r['size']} | SegmentCase x4, {r['mode']} | {r['peak_mb']:.0f} | {r['segment_s']:.0f} | "
                  f"loaded {r['loaded_mb']:.0f}, phases read {r['after_read_rss_mb']:.0f}; per task {tasks}; "
                  f"writing masks {r['write_peak_mb']:.0f} |")
        else:
            print(f"| {r['service']} | {r['size']} | {r['function']} | {r['peak_mb']:.0f} | {r['seconds']:.1f} | "
                  f"inputs held {r['inputs_rss_mb']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
