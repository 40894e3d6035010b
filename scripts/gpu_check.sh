#!/usr/bin/env bash
# GPU check (issue 17 item 4): one script a machine with an NVIDIA GPU runs in < 10 minutes.
#
#   scripts/gpu_check.sh                     # 512 x 512 x 300 case, CPU comparison on 192 x 192 x 120
#   GPU_CHECK_SIZE="48 48 40" GPU_CHECK_SPACING="3 3 3" GPU_CHECK_COMPARE_SIZE="48 48 40" \
#       GPU_CHECK_TASKS=tumor GPU_CHECK_REPEAT=1 scripts/gpu_check.sh                 # quick
#
# What it does, in order (each step prints one line; all figures also go to
# $GPU_CHECK_OUT/gpu_check.json):
#   1. environment: python, torch and its CUDA, the GPU (nvidia-smi), free memory;
#   2. packages: what the check needs (nnunetv2 and its small dependencies, grpcio, SimpleITK,
#      scipy) are imported; missing ones are installed offline from wheels travelling with
#      the working tree (GPU_CHECK_WHEELS, default shared/wheels or wheels/: pip --no-index,
#      never a registry). CUDA torch is expected preinstalled and is never installed here;
#   3. a phantom case (medseg.phantom) at GPU_CHECK_SIZE;
#   4. the nnunet service on cuda:0 (predictors resident, nnU-Net's fp16 accumulation), on a
#      free port, no gateway; a warm-up SegmentCase, then the four tasks (total, vessels,
#      ureter, tumor) timed warm through the SDK, GPU_CHECK_REPEAT times (best shown);
#   5. masks against a CPU run: a second service with CUDA hidden segments a smaller case
#      (GPU_CHECK_COMPARE_SIZE, so the CPU part fits the 10 minutes; the same size as
#      GPU_CHECK_SIZE compares the timed case itself) and the GPU service the same case;
#      per task: equal or not, differing voxels, Dice per label;
#   6. cugraph = SciPy on the repair graphs (postprocess_svc.graph) where cugraph, cupy and
#      cudf import; otherwise says why (RAPIDS wheels are ~1 GB, far over the 64 MiB the
#      working tree may carry, so on the lent machines it normally cannot be brought).
# Without a GPU (or with CUDA_VISIBLE_DEVICES=""), every step still runs on the CPU and the
# result says so ("device": "cpu"): that is the fallback path tests/test_gpu_check.py runs.
#
# Environment: PYTHON (default .venv/bin/python, else python3), GPU_CHECK_SIZE, GPU_CHECK_COMPARE_SIZE
# ("0" skips step 5), GPU_CHECK_SPACING (mm "x y z"; default the phantom's 380 x 380 x 300 mm
# field of view over the size), GPU_CHECK_TASKS (default "total vessels ureter tumor"),
# GPU_CHECK_REPEAT (default 2), GPU_CHECK_OUT (default out/gpu_check), GPU_CHECK_WHEELS,
# GPU_CHECK_TIMEOUT (seconds per call, default 400).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export GPU_CHECK_SIZE="${GPU_CHECK_SIZE:-512 512 300}"
export GPU_CHECK_COMPARE_SIZE="${GPU_CHECK_COMPARE_SIZE:-192 192 120}"
export GPU_CHECK_REPEAT="${GPU_CHECK_REPEAT:-2}"
export GPU_CHECK_OUT="${GPU_CHECK_OUT:-out/gpu_check}"
export GPU_CHECK_TIMEOUT="${GPU_CHECK_TIMEOUT:-400}"
export PYTHONPATH="$ROOT:$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$GPU_CHECK_OUT"

echo "== gpu_check: $(date -u +%FT%TZ) on $(hostname), python $PYTHON"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader 2>/dev/null \
        | sed 's/^/== gpu: /' || echo "== gpu: nvidia-smi failed"
else
    echo "== gpu: no nvidia-smi (CPU fallback)"
fi

# Step 2: packages. Only offline installs from wheels that came with the working tree.
WHEELS="${GPU_CHECK_WHEELS:-}"
if [[ -z "$WHEELS" ]]; then
    for candidate in shared/wheels wheels; do [[ -d "$candidate" ]] && WHEELS="$candidate" && break; done
fi
missing="$("$PYTHON" - <<'EOF'
import importlib
need = {"torch": "torch", "nnunetv2": "nnunetv2", "grpc": "grpcio", "SimpleITK": "SimpleITK",
        "scipy": "scipy", "numpy": "numpy", "google.protobuf": "protobuf"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod.split(".")[0]) is None))
EOF
)"
if [[ -n "$missing" ]]; then
    if [[ " $missing " == *" torch "* ]]; then
        echo "== packages: torch is missing; this check expects CUDA PyTorch preinstalled" >&2
        exit 2
    fi
    if [[ -n "$WHEELS" ]]; then
        echo "== packages: installing $missing from $WHEELS (offline)"
        "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" $missing
    else
        echo "== packages: missing $missing and no wheels folder (GPU_CHECK_WHEELS)" >&2
        exit 2
    fi
else
    echo "== packages: all present"
fi

exec "$PYTHON" - <<'EOF'
"""Steps 3-6 (see scripts/gpu_check.sh)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(os.environ["GPU_CHECK_OUT"]).resolve()
SIZE = tuple(int(v) for v in os.environ["GPU_CHECK_SIZE"].split())
COMPARE = os.environ["GPU_CHECK_COMPARE_SIZE"].strip()
COMPARE_SIZE = None if COMPARE in ("", "0") else tuple(int(v) for v in COMPARE.split())
REPEAT = max(1, int(os.environ["GPU_CHECK_REPEAT"]))
TIMEOUT = float(os.environ["GPU_CHECK_TIMEOUT"])
TASKS = os.environ.get("GPU_CHECK_TASKS", "total vessels ureter tumor").split()
SPACING = tuple(float(v) for v in os.environ["GPU_CHECK_SPACING"].split()) if os.environ.get("GPU_CHECK_SPACING") else None
report: dict = {"size": SIZE, "compare_size": COMPARE_SIZE, "tasks": TASKS}
started = time.perf_counter()


def say(step: str, text: str) -> None:
    print(f"== {step}: {text}", flush=True)


def save() -> None:
    report["wall_s"] = round(time.perf_counter() - started, 1)
    (OUT / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))


import torch  # noqa: E402

cuda = torch.cuda.is_available()
report["torch"] = torch.__version__
report["torch_cuda"] = torch.version.cuda
report["device"] = "cuda:0" if cuda else "cpu"
if cuda:
    report["gpu"] = torch.cuda.get_device_name(0)
say("torch", f"{torch.__version__} (CUDA {torch.version.cuda}), device {report['device']}"
    + (f" {report['gpu']}" if cuda else " (no GPU visible: CPU fallback)"))

from medseg.client import Client, Ref  # noqa: E402
from medseg.phantom import make_phantom  # noqa: E402
from medseg.volumes import read_volume  # noqa: E402

DATA = OUT / "data"


def write_case(name: str, size) -> None:
    t = time.perf_counter()
    make_phantom(size, spacing=SPACING, seed=5).write(DATA / name)
    say("phantom", f"{name}: {size[0]}x{size[1]}x{size[2]} written in {time.perf_counter() - t:.1f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """nnunet_svc.server in a subprocess; `gpu=False` hides CUDA from it."""

    def __init__(self, gpu: bool):
        self.port = free_port()
        env = dict(os.environ, MEDSEG_DATA_ROOT=str(DATA), MEDSEG_NNUNET_PORT=str(self.port),
                   MEDSEG_NNUNET_HOST="127.0.0.1")
        env.setdefault("MEDSEG_DRAIN_SECONDS", "0")  # nothing in flight when it is stopped
        if gpu:
            env.setdefault("CUDA_VISIBLE_DEVICES", "0")  # cuda:0
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""
        self.log = open(OUT / f"nnunet_{'gpu' if gpu else 'cpu'}.log", "w")
        t = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "nnunet_svc.server"], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.client = Client(f"127.0.0.1:{self.port}", timeout=TIMEOUT)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nnunet service exited ({self.proc.returncode}); see {self.log.name}")
            try:
                if self.client.status(timeout=2).get("nnunet") == "SERVING":
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"nnunet service not SERVING after 300 s; see {self.log.name}")
            time.sleep(1)
        self.start_s = time.perf_counter() - t

    def segment(self, case: str, out: str):
        t = time.perf_counter()
        self.client.segment_case(TASKS, arterial=Ref(f"{case}/arterial.nii.gz"), portal=Ref(f"{case}/portal.nii.gz"),
                                 delayed=Ref(f"{case}/delayed.nii.gz"), output_dir=out)
        return time.perf_counter() - t

    def stop(self) -> None:
        self.client.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def masks(out: str) -> dict:
    return {task: read_volume(DATA / out / f"{task}.nii.gz").array for task in TASKS}


def compare(a: dict, b: dict) -> dict:
    result = {}
    for task in TASKS:
        x, y = a[task], b[task]
        dice = {}
        for label in sorted(set(np.unique(x).tolist()) | set(np.unique(y).tolist()) - {0}):
            p, q = x == label, y == label
            dice[int(label)] = round(float(2 * (p & q).sum() / max(p.sum() + q.sum(), 1)), 5)
        result[task] = {"equal": bool(np.array_equal(x, y)), "differing_voxels": int((x != y).sum()),
                        "voxels": int(x.size), "dice": dice}
    return result


# Step 3-4: the timed case on the service's device.
write_case("case", SIZE)
if COMPARE_SIZE and COMPARE_SIZE != SIZE:
    write_case("compare", COMPARE_SIZE)
service = Service(gpu=cuda)
try:
    say("service", f"nnunet on {report['device']} SERVING after {service.start_s:.1f} s")
    report["service_start_s"] = round(service.start_s, 1)
    warm = service.segment("case", "warmup")
    say("warm-up", f"{' + '.join(TASKS)} {warm:.2f} s (first call)")
    times = [service.segment("case", f"timed{i}") for i in range(REPEAT)]
    report["warmup_s"] = round(warm, 2)
    report["case_s"] = [round(t, 2) for t in times]
    say("timed", f"{' + '.join(TASKS)} at {SIZE[0]}x{SIZE[1]}x{SIZE[2]}, warm: best {min(times):.2f} s of {REPEAT} "
        f"({', '.join(f'{t:.2f}' for t in times)})")
    if cuda:
        report["gpu_peak_memory_note"] = "see nvidia-smi; torch in the service process, not here"
    save()
    # Step 5: masks against a CPU run.
    if COMPARE_SIZE:
        compare_case = "case" if COMPARE_SIZE == SIZE else "compare"
        if compare_case == "compare":
            service.segment("compare", "compare_device")
            device_masks = masks("compare_device")
        else:
            device_masks = masks("timed0")
        if cuda:
            cpu = Service(gpu=False)
            try:
                cpu_s = cpu.segment(compare_case, "compare_cpu")
            finally:
                cpu.stop()
            report["compare_cpu_s"] = round(cpu_s, 2)
            result = compare(device_masks, masks("compare_cpu"))
            report["gpu_vs_cpu"] = result
            for task, r in result.items():
                say("gpu = cpu", f"{task}: {'equal' if r['equal'] else 'DIFFERENT'}, {r['differing_voxels']} of "
                    f"{r['voxels']} voxels differ, Dice {r['dice']}")
        else:
            # No GPU: the comparison is CPU against CPU (two calls must agree: determinism).
            service.segment(compare_case, "compare_again")
            result = compare(device_masks, masks("compare_again"))
            report["cpu_vs_cpu"] = result
            say("gpu = cpu", "no GPU: compared two CPU runs instead: "
                + ", ".join(f"{t} {'equal' if r['equal'] else str(r['differing_voxels']) + ' voxels differ'}"
                            for t, r in result.items()))
    else:
        say("gpu = cpu", "skipped (GPU_CHECK_COMPARE_SIZE=0)")
finally:
    service.stop()
save()

# Step 6: cugraph = SciPy on repair-shaped graphs.
from postprocess_svc.graph import ScipyBackend, cugraph_available  # noqa: E402

if not cugraph_available():
    reason = []
    for module in ("cupy", "cugraph", "cudf"):
        try:
            __import__(module)
        except Exception as exc:  # noqa: BLE001
            reason.append(f"{module}: {type(exc).__name__}")
    report["cugraph"] = {"available": False, "why": ", ".join(reason) or "no CUDA device",
                         "note": "RAPIDS cugraph + cudf + cupy wheels are ~1 GB, over the 64 MiB that travels"}
    say("cugraph", f"not available ({report['cugraph']['why']}); the comparison cannot run here")
else:
    from postprocess_svc.graph import CugraphBackend

    rng = np.random.default_rng(0)
    n = 200_000
    edges = np.stack([rng.integers(0, n, 300_000), rng.integers(0, n, 300_000)], axis=1)
    weights = rng.random(len(edges))
    gpu_backend, cpu_backend = CugraphBackend(), ScipyBackend()
    figures = {}
    for name, call in (("components", lambda b: b.connected_components(n, edges)),
                       ("mst", lambda b: b.minimum_spanning_edges(n, edges, weights))):
        t = time.perf_counter(); a = call(cpu_backend); cpu_t = time.perf_counter() - t
        call(gpu_backend)  # warm
        t = time.perf_counter(); b = call(gpu_backend); gpu_t = time.perf_counter() - t
        figures[name] = {"equal": bool(np.array_equal(a, b)), "scipy_s": round(cpu_t, 3), "cugraph_s": round(gpu_t, 3)}
    report["cugraph"] = {"available": True, **figures}
    say("cugraph", ", ".join(f"{k}: {'equal' if v['equal'] else 'DIFFERENT'} (SciPy {v['scipy_s']} s, "
                             f"cugraph {v['cugraph_s']} s)" for k, v in figures.items()))
save()
say("done", f"{report['wall_s']} s; figures in {OUT / 'gpu_check.json'}")
EOF
