"""Benchmark: label mask -> OBJ surface meshes, smoothing_svc.meshing vs a plain baseline.

The six-structure phantom (medseg.phantom) is generated once and saved; each pipeline then
runs in its own fresh subprocess that loads the mask, meshes every label and writes an OBJ,
reporting wall time and peak RSS (resource.getrusage). Both run in this one invocation so
the ratio compares like with like.

- ours:     smoothing_svc.meshing.mesh_labels + write_meshes with their defaults: surface
            nets over the labels' common box, every label in one pass (shared interfaces),
            per-structure smoothing blend, closed-form per-piece volume correction, OBJ.
            --method flying_edges: per-label crop, flying edges, windowed sinc instead.
- baseline: per label on the full volume, skimage.measure.marching_cubes (level 0.5, with
            the voxel spacing), trimesh.smoothing.filter_taubin (its defaults), affine to
            LPS mm, one trimesh Scene exported to OBJ.

    .venv/bin/python bench/bench_mesh.py                # 512 x 512 x 300
    .venv/bin/python bench/bench_mesh.py --size 256 256 150 --threads 2
    .venv/bin/python bench/bench_mesh.py --method flying_edges --skip-baseline
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
sys.path.insert(0, str(ROOT))
from ratios import record  # noqa: E402  (bench/, the script's folder)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _load(folder: Path):
    import numpy as np

    from medseg.volumes import Volume

    geometry = json.loads((folder / "geometry.json").read_text())
    return Volume(np.load(folder / "labels.npy"), **geometry)


def _closed_and_volume(vertices, faces) -> tuple[bool, float]:
    from smoothing_svc.meshing import is_closed_and_consistent, signed_volume

    return is_closed_and_consistent(faces, len(vertices)), abs(signed_volume(vertices, faces)) / 1000.0


def run_ours(folder: Path, out: Path) -> dict:
    from smoothing_svc.meshing import MeshOptions, mesh_labels, write_meshes

    mask = _load(folder)
    method = os.environ.get("BENCH_MESH_METHOD", "surface_nets")
    rss_loaded = _peak_rss_mb()
    cpu = _cpu_s()
    start = time.perf_counter()
    meshes = mesh_labels(mask, MeshOptions(method=method))
    meshed = time.perf_counter()
    write_meshes(meshes, out / "ours.obj")
    done = time.perf_counter()
    return {
        "mesh_s": meshed - start,
        "total_s": done - start,
        "cpu_s": _cpu_s() - cpu,
        "rss_loaded_mb": rss_loaded,
        "labels": {m.name: {"faces": len(m.faces), "ml": m.volume_ml, "closed": m.closed} for m in meshes},
    }


def run_baseline(folder: Path, out: Path) -> dict:
    import numpy as np
    import trimesh
    from skimage.measure import marching_cubes

    from medseg.labels import STRUCTURES

    mask = _load(folder)
    rss_loaded = _peak_rss_mb()
    cpu = _cpu_s()
    start = time.perf_counter()
    matrix = mask.index_to_physical_matrix()
    scene = trimesh.Scene()
    labels = {}
    for value in np.unique(mask.array):
        if value == 0:
            continue
        # marching_cubes works on (z, y, x) with unit steps; map indices to mm afterwards.
        vertices_zyx, faces, _, _ = marching_cubes((mask.array == value).astype(np.float32), level=0.5)
        vertices = vertices_zyx[:, ::-1] @ matrix[:3, :3].T + matrix[:3, 3]
        mesh = trimesh.Trimesh(vertices, faces, process=False)
        trimesh.smoothing.filter_taubin(mesh)
        closed, ml = _closed_and_volume(mesh.vertices, mesh.faces)
        labels[STRUCTURES[int(value)]] = {"faces": len(mesh.faces), "ml": ml, "closed": closed}
        scene.add_geometry(mesh, node_name=STRUCTURES[int(value)], geom_name=STRUCTURES[int(value)])
    meshed = time.perf_counter()
    scene.export(out / "baseline.obj")
    done = time.perf_counter()
    return {"mesh_s": meshed - start, "total_s": done - start, "cpu_s": _cpu_s() - cpu,
            "rss_loaded_mb": rss_loaded, "labels": labels}


def worker(kind: str, folder: Path) -> None:
    result = (run_ours if kind == "ours" else run_baseline)(folder, folder)
    result["peak_rss_mb"] = _peak_rss_mb()
    print("RESULT " + json.dumps(result))


def spawn(kind: str, folder: Path, threads: int, method: str = "surface_nets") -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MEDSEG_MESH_THREADS=str(threads), BENCH_MESH_METHOD=method,
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    # Pin the worker to `threads` cores so the comparison is the one the target names.
    cores = sorted(os.sched_getaffinity(0))[:threads]
    command = [sys.executable, __file__, "--worker", kind, "--data", str(folder)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True,
                          preexec_fn=lambda: os.sched_setaffinity(0, cores))
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-4000:]}")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=3, default=(512, 512, 300), metavar=("X", "Y", "Z"))
    parser.add_argument("--threads", type=int, default=2, help="cores for each pipeline (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="fresh runs per pipeline; the fastest is shown")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--method", choices=["surface_nets", "flying_edges"], default="surface_nets",
                        help="our meshing method (default surface_nets, the service's default)")
    parser.add_argument("--worker", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.data)
        return

    import numpy as np

    from medseg.labels import STRUCTURES
    from medseg.phantom import make_phantom

    with tempfile.TemporaryDirectory(prefix="bench_mesh_") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        mask = make_phantom(tuple(args.size), seed=args.seed).labels
        np.save(folder / "labels.npy", mask.array)
        (folder / "geometry.json").write_text(json.dumps(
            {"spacing": mask.spacing, "origin": mask.origin, "direction": mask.direction}))
        counts = np.bincount(mask.array.reshape(-1), minlength=max(STRUCTURES) + 1)
        voxel_ml = mask.voxel_volume_mm3 / 1000
        print(f"phantom {tuple(args.size)} voxels, spacing {tuple(round(s, 4) for s in mask.spacing)} mm, "
              f"{int((counts[1:] > 0).sum())} structures, made in {time.perf_counter() - start:.1f} s; "
              f"{args.threads} core(s) per pipeline")
        del mask

        # Best of --repeat fresh runs each (the machine may be shared); RSS from that run.
        results = {"ours": min((spawn("ours", folder, args.threads, args.method) for _ in range(args.repeat)),
                               key=lambda r: r["total_s"])}
        if not args.skip_baseline:
            results["baseline"] = min((spawn("baseline", folder, args.threads) for _ in range(args.repeat)),
                                      key=lambda r: r["total_s"])
        print(f"machine load average while measuring: {os.getloadavg()[0]:.1f}")

        names = ["ours (surface nets, all labels in one pass)" if args.method == "surface_nets"
                 else "ours (crop + flying edges + windowed sinc)", "baseline (skimage MC + trimesh taubin)"]
        for (kind, result), name in zip(results.items(), names):
            print(f"{name}: mesh {result['mesh_s']:.2f} s, mesh+OBJ {result['total_s']:.2f} s "
                  f"(CPU {result['cpu_s']:.2f} s), "
                  f"peak RSS {result['peak_rss_mb']:.0f} MB (after loading the mask {result['rss_loaded_mb']:.0f} MB)")
            for label, info in result["labels"].items():
                value = next(v for v, n in STRUCTURES.items() if n == label)
                print(f"    {label:7s} {info['faces']:8d} faces  {info['ml']:8.2f} ml "
                      f"(voxels {counts[value] * voxel_ml:8.2f} ml)  closed={info['closed']}")
        if "baseline" in results:
            ours, base = results["ours"], results["baseline"]
            extra_ours = max(ours["peak_rss_mb"] - ours["rss_loaded_mb"], 1)
            extra_base = base["peak_rss_mb"] - base["rss_loaded_mb"]
            record("mesh", f"meshing {len(ours['labels'])} structures at {'x'.join(map(str, args.size))}: "
                   f"skimage+trimesh / {args.method}, time", base["total_s"] / ours["total_s"],
                   note=f"mesh + OBJ, {args.threads} cores each, same mask")
            print(f"ratio baseline/ours: time {base['total_s'] / ours['total_s']:.1f}x, "
                  f"CPU {base['cpu_s'] / ours['cpu_s']:.1f}x (mesh only {base['mesh_s'] / ours['mesh_s']:.1f}x), "
                  f"peak RSS {base['peak_rss_mb'] / ours['peak_rss_mb']:.1f}x, "
                  f"RSS above the loaded mask {extra_base / extra_ours:.1f}x")
        target = "meets" if results["ours"]["total_s"] < 10 else "MISSES"
        print(f"target < 10 s on {args.threads} cores: {target} ({results['ours']['total_s']:.2f} s)")


if __name__ == "__main__":
    main()
