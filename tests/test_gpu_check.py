"""scripts/gpu_check.sh: valid bash, and its CPU fallback path end to end on a tiny case."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def test_gpu_check_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert os.access(SCRIPT, os.X_OK)


@pytest.mark.slow  # ~45-70 s on two cores: the service loads every task's predictors
def test_gpu_check_cpu_fallback_on_a_tiny_case(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", GPU_CHECK_OUT=str(tmp_path), GPU_CHECK_SIZE="48 48 40",
               GPU_CHECK_SPACING="3 3 3", GPU_CHECK_COMPARE_SIZE="48 48 40", GPU_CHECK_TASKS="tumor",
               GPU_CHECK_REPEAT="1", GPU_CHECK_TIMEOUT="120")
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("== ")]
    steps = [line.split(":")[0][3:] for line in lines]
    for step in ("torch", "phantom", "service", "warm-up", "timed", "gpu = cpu", "cugraph", "done"):
        assert step in steps, proc.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["device"] == "cpu"
    assert report["case_s"] and report["case_s"][0] > 0
    # Without a GPU the comparison is two CPU runs, which must agree exactly.
    assert report["cpu_vs_cpu"]["tumor"]["equal"] is True
    assert report["cugraph"]["available"] in (True, False)
    if not report["cugraph"]["available"]:
        assert "cannot run here" in proc.stdout
