"""Measure speed on a full-size phantom, against naive baselines in the same run.

summarize_labels (bincount + find_objects, two passes) vs a per-label np.nonzero over the whole
volume; measure_mask (per-label box, row-end hull candidates) vs a baseline that builds the
hull from every voxel of the label. Peak memory is tracemalloc's (numpy allocations).

    .venv/bin/python bench/bench_measure.py [--size 512 512 300]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from scipy.spatial import ConvexHull  # noqa: E402

from medseg.phantom import make_phantom  # noqa: E402
from postprocess_svc import measure  # noqa: E402

from ratios import record  # noqa: E402  (bench/, the script's folder)


def timed(fn):
    tracemalloc.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def naive_summary(volume):
    out = []
    for value in np.unique(volume.array):
        if value == 0:
            continue
        z, y, x = np.nonzero(volume.array == value)
        out.append((int(value), len(x), (x.min(), y.min(), z.min()), (x.max(), y.max(), z.max())))
    return out


def naive_diameter(volume, value):
    z, y, x = np.nonzero(volume.array == value)
    points = np.stack([x, y, z, np.ones_like(x)]).T.astype(float) @ volume.index_to_physical_matrix().T
    hull = ConvexHull(points[:, :3])
    return measure._max_pairwise_distance(points[hull.vertices, :3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, nargs=3, default=(512, 512, 300))
    args = parser.parse_args()
    case = make_phantom(tuple(args.size), seed=3)
    print(f"phantom {tuple(args.size)} spacing {tuple(round(s, 3) for s in case.labels.spacing)}")

    for name, volume in (("labels", case.labels), ("organs", case.organs)):
        fast, t_fast, m_fast = timed(lambda: measure.summarize_labels(volume))
        slow, t_slow, m_slow = timed(lambda: naive_summary(volume))
        assert [(s.value, s.voxel_count, s.min_index, s.max_index) for s in fast] == slow
        print(f"summarize_labels({name}, {len(fast)} labels): {t_fast:.2f} s, {m_fast:.0f} MiB peak | "
              f"per-label np.nonzero baseline {t_slow:.2f} s, {m_slow:.0f} MiB | speed-up x{t_slow / t_fast:.1f}")
        record("measure", f"summarize_labels({name}) at {'x'.join(map(str, args.size))}: per-label np.nonzero / ours",
               t_slow / t_fast, note="time, same run")
        full, t_full, m_full = timed(lambda: measure.measure_mask(volume))
        print(f"measure_mask({name}): {t_full:.2f} s, {m_full:.0f} MiB peak "
              f"({sum(m.component_count for m in full)} components)")

    kidney = next(m for m in measure.measure_mask(case.labels) if m.value == 1)
    value = 1
    _, t_naive, m_naive = timed(lambda: naive_diameter(case.labels, value))
    expected = naive_diameter(case.labels, value)
    inside = case.labels.array == value
    _, t_hull, m_hull = timed(lambda: measure._diameter_mm(inside, (0, 0, 0), case.labels.index_to_physical_matrix()))
    assert abs(kidney.largest_diameter_mm - expected) < 1e-6
    print(f"kidney diameter {expected:.1f} mm ({kidney.voxel_count} voxels): row-end hull {t_hull:.2f} s, "
          f"{m_hull:.0f} MiB | all-voxel hull baseline {t_naive:.2f} s, {m_naive:.0f} MiB | speed-up x{t_naive / t_hull:.1f}")
    record("measure", "kidney largest diameter: all-voxel hull / row-end hull", t_naive / t_hull, note="time, same run")


if __name__ == "__main__":
    main()
