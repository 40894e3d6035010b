"""Phantom generation speed and memory, against a no-bounding-box baseline in the same run.

The baseline is the same code with the per-structure bounding boxes and z-chunking switched
off, i.e. every structure evaluated over the whole volume (what a naive rasteriser does).
Each measurement runs in its own single-threaded subprocess so peak RSS is its own.

    .venv/bin/python bench/bench_phantom.py [--full-size 512 512 300]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from ratios import record  # bench/, the script's folder

CHILD = r"""
import json, resource, sys, time
import medseg.phantom as ph
size, naive = tuple(json.loads(sys.argv[1])), sys.argv[2] == "naive"
if naive:
    ph._CHUNK_SLICES = 1 << 30
    whole = lambda self, lo, hi: tuple(slice(0, n) for n in self.shape)
    ph._Grid.index_box = whole
start = time.perf_counter()
case = ph.make_phantom(size, seed=3)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "labels_sha": case.labels.sha256()}))
"""


def run(size, mode: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(list(size)), mode],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--compare-size", type=int, nargs=3, default=(192, 192, 112))
    parser.add_argument("--full-size", type=int, nargs=3, default=(512, 512, 300))
    args = parser.parse_args()

    size = tuple(args.compare_size)
    fast, naive = run(size, "boxes"), run(size, "naive")
    same = "identical" if fast["labels_sha"] == naive["labels_sha"] else "DIFFERENT"
    print(f"phantom {size}: boxes {fast['seconds']:.2f} s, {fast['peak_mib']:.0f} MiB peak | "
          f"whole-volume baseline {naive['seconds']:.2f} s, {naive['peak_mib']:.0f} MiB peak | "
          f"speed-up x{naive['seconds'] / fast['seconds']:.1f}, memory ratio "
          f"{fast['peak_mib'] / naive['peak_mib']:.2f} | label masks {same}")
    where = "x".join(map(str, size))
    record("phantom", f"phantom at {where}: whole-volume / per-structure boxes", naive["seconds"] / fast["seconds"],
           note=f"time, 1 thread; label masks {same}")
    record("phantom", f"phantom at {where}: peak RSS boxes / whole-volume", fast["peak_mib"] / naive["peak_mib"],
           note="memory")
    full = run(tuple(args.full_size), "boxes")
    voxels = args.full_size[0] * args.full_size[1] * args.full_size[2]
    print(f"phantom {tuple(args.full_size)} ({voxels / 1e6:.0f} Mvox, 1 thread): {full['seconds']:.2f} s, "
          f"{full['peak_mib']:.0f} MiB peak (outputs alone: {voxels * 8 / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
