#!/usr/bin/env python
"""Case job benchmark, everything measured in this one run on one temporary stack:

1. one case end to end as a case job (time per step, peak resident memory of every service
   while it runs) against the same work as separate calls made by a client (SegmentCase,
   ConnectVessels, ConnectUreters, AddFat, MeshMask, Measure, by reference);
2. two cases in flight at once (MEDSEG_CASE_WORKERS=2) against the same two one after
   another: the throughput ratio shows how far the services' work overlaps (one nnU-Net
   worker, so segmentation of one case runs beside the post-processing of the other).

Usage: .venv/bin/python bench/bench_case.py [--size 512 512 300] [--seed 2000]
The default is a real scan's size (512 x 512 x 300 at about 0.74 x 0.74 x 1.0 mm); --size 127 127 100
gives a quick run at the demo models' 3 mm.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from procstat import reset_peak, status_mb  # noqa: E402
from ratios import record  # noqa: E402

SERVICES = ("case", "nnunet", "smoothing", "postprocess")


def reset_peaks(stack) -> None:
    """Restart every service's peak-RSS count (VmHWM), so the next figure is this run's."""
    for name in SERVICES:
        if not reset_peak(stack.pid(name)):
            raise RuntimeError(f"cannot reset the peak RSS of {name} (/proc/<pid>/clear_refs)")


def peaks(stack) -> dict[str, float]:
    return {name: status_mb("VmHWM", stack.pid(name)) for name in SERVICES}


def run_job(cases, files: dict[str, str], name: str):
    from medseg.case_jobs import state_name
    from medseg.client import Ref

    job = cases.submit(arterial=Ref(files["arterial"]), portal=Ref(files["portal"]),
                       delayed=Ref(files["delayed"]), display_name=name)
    job = cases.wait(job.job_id)
    if state_name(job.state) != "SUCCEEDED":
        raise SystemExit(f"job {job.job_id} ended {state_name(job.state)}: {job.error.message}")
    return job


def separate_calls(client, root: Path, files: dict[str, str], out: str) -> dict[str, float]:
    """The same work as a client would glue it: six calls, masks combined in the client."""
    import numpy as np

    from medseg.client import Ref
    from medseg.labels import Label
    from medseg.volumes import read_volume, write_volume

    times = {}
    start = time.perf_counter()
    seg = client.segment_case(["total", "tumor", "vessels", "ureter"], arterial=Ref(files["arterial"]),
                              portal=Ref(files["portal"]), delayed=Ref(files["delayed"]), output_dir=f"{out}/masks")
    times["segment"] = time.perf_counter() - start
    start = time.perf_counter()
    masks = {o.role: read_volume(root / o.path) for o in seg.result.outputs if o.role != "total"}
    combined = np.zeros_like(masks["tumor"].array)
    for task, labels in (("tumor", (Label.TUMOR, Label.KIDNEY)), ("vessels", (Label.ARTERY, Label.VEIN)),
                         ("ureter", (Label.URETER,))):
        for label in labels:
            combined[(masks[task].array == label) & (combined == 0)] = label
    write_volume(masks["tumor"].with_array(combined), root / out / "combined.nii.gz")
    times["combine"] = time.perf_counter() - start
    for name, call in (
            ("connect_vessels", lambda: client.connect_vessels(Ref(f"{out}/combined.nii.gz"), output=f"{out}/v.nii.gz")),
            ("connect_ureters", lambda: client.connect_ureters(Ref(f"{out}/v.nii.gz"), output=f"{out}/vu.nii.gz")),
            ("fat", lambda: client.add_fat(Ref(f"{out}/vu.nii.gz"), Ref(f"{out}/masks/total.nii.gz"),
                                           Ref(files["portal"]), output=f"{out}/mask.nii.gz")),
            ("mesh", lambda: client.mesh(Ref(f"{out}/mask.nii.gz"), output=f"{out}/model.obj")),
            ("measure", lambda: client.measure(Ref(f"{out}/mask.nii.gz"), tumor_facts=True))):
        start = time.perf_counter()
        call()
        times[name] = time.perf_counter() - start
    return times



def report_single(job, job_seconds, job_peaks, calls, calls_seconds, call_peaks) -> None:
    print("\n| step | case job (s) | separate calls (s) |\n|---|---|---|")
    for step in job.progress.steps:
        separate = f"{calls[step.name]:.1f}" if step.name in calls else "-"
        print(f"| {step.name} | {step.seconds:.1f} | {separate} |")
    print(f"| **total (wall)** | **{job_seconds:.1f}** | **{calls_seconds:.1f}** |")
    record("case", "the same work as separate calls / one case job, wall", calls_seconds / job_seconds,
           note="connect_* and mesh||measure concurrent; the job adds cleanup and report")
    print(f"\nratio separate calls / case job: {calls_seconds / job_seconds:.2f}x (the same work; the job "
          "runs connect_vessels || connect_ureters and mesh || measure concurrently and adds the "
          "cleanup and report steps)")
    print("\n| service | peak RSS, case job (MB) | peak RSS, separate calls (MB) |\n|---|---|---|")
    for name in SERVICES:
        print(f"| {name} | {job_peaks[name]:.0f} | {call_peaks[name]:.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=3, default=(512, 512, 300))
    parser.add_argument("--seed", type=int, default=2000)
    parser.add_argument("--no-throughput", action="store_true",
                        help="skip the two-cases part (four more jobs; long at clinical size)")
    args = parser.parse_args()

    from gateway_envoy.stack import temporary_stack
    from medseg.case_jobs import CaseClient
    from medseg.client import Client
    from medseg.phantom import make_phantom

    size = tuple(args.size)
    spacing = (380.0 / size[0], 380.0 / size[1], 300.0 / size[2])
    env = {"MEDSEG_CASE_WORKERS": "2", "MEDSEG_GRACE_SECONDS": "5"}
    with temporary_stack(SERVICES, extra_env=env, say=lambda *_: None) as stack:
        cases_files = []
        for k, seed in enumerate((args.seed, args.seed + 1)):
            make_phantom(size=size, seed=seed).write(stack.data_root / f"case{k}")
            cases_files.append({p: f"case{k}/{p}.nii.gz" for p in ("arterial", "portal", "delayed")})
        print(f"case {size} voxels, {tuple(round(s, 2) for s in spacing)} mm, seeds {args.seed}/{args.seed + 1}")
        with CaseClient(stack.gateway, timeout=3600) as cases, Client(stack.gateway, timeout=3600) as client:
            reset_peaks(stack)
            start = time.perf_counter()
            job = run_job(cases, cases_files[0], "bench-job")
            job_seconds = time.perf_counter() - start
            job_peaks = peaks(stack)

            reset_peaks(stack)
            start = time.perf_counter()
            calls = separate_calls(client, stack.data_root, cases_files[0], "separate0")
            calls_seconds = time.perf_counter() - start
            call_peaks = peaks(stack)

            report_single(job, job_seconds, job_peaks, calls, calls_seconds, call_peaks)
            if args.no_throughput:
                return 0
            start = time.perf_counter()
            for k in (0, 1):
                run_job(cases, cases_files[k], f"sequential{k}")
            sequential = time.perf_counter() - start
            start = time.perf_counter()
            threads = [threading.Thread(target=run_job, args=(cases, cases_files[k], f"parallel{k}")) for k in (0, 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            parallel = time.perf_counter() - start

    record("case", "two case jobs: sequential / both in flight", sequential / parallel)
    print(f"\ntwo cases: one after another {sequential:.1f} s, both in flight {parallel:.1f} s, "
          f"throughput ratio {sequential / parallel:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
