"""The Node.js client (clients/node, issue 15 item 6) through the gateway: stubs generated
from protos/ with buf + protoc-gen-es at test time, then a health check, Measure inline and
MeshMask inline from Node; the results must equal the Python client's for the same mask
(Measure's labels field for field, the OBJ and MTL byte for byte).

Setup is `npm ci` from the committed package-lock.json (cached in clients/node/node_modules,
rerun when the lock file changes), `npm run generate` and `npm run typecheck` (tsc); `make node` does the same by hand.
Without node/npm the test skips locally and fails under CI=true."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

from medseg.client import Client
from medseg.labels import Label
from medseg.smoothing.v1 import smoothing_pb2 as sm
from medseg.volumes import Volume
from tests import tools

pytestmark = pytest.mark.integration

NODE_DIR = Path(__file__).resolve().parents[2] / "clients" / "node"


def _run(args: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=NODE_DIR, capture_output=True, text=True, timeout=timeout,
                            **kwargs)
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def node_client() -> Path:
    """clients/node installed (npm ci, only when the lock file changed) and its stubs generated."""
    for name in ("node", "npm"):
        if shutil.which(name) is None:
            tools.missing(f"'{name}' not on PATH (Node.js 20 + npm: clients/node)")
    version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 20:
        tools.missing(f"Node.js >= 20 (found {version})")
    lock, installed = NODE_DIR / "package-lock.json", NODE_DIR / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        _run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], timeout=300)
    _run(["npm", "run", "-s", "generate"], timeout=120)
    _run(["npm", "run", "-s", "typecheck"], timeout=120)  # tsc --noEmit: stubs + example agree
    return NODE_DIR


def _mask() -> Volume:
    """An asymmetric mask on a non-trivial grid: swapping x and z, or getting the
    direction wrong, changes the boxes, the millimetres or the mesh."""
    array = np.zeros((14, 18, 22), np.uint8)  # [z, y, x]
    array[2:11, 3:15, 4:17] = Label.KIDNEY
    z, y, x = np.ogrid[:14, :18, :22]
    array[(x - 13) ** 2 + (y - 9) ** 2 + (z - 6) ** 2 <= 10] = Label.TUMOR
    array[1:13, 8:10, 19:21] = Label.ARTERY
    return Volume(array, spacing=(0.8, 0.9, 1.5), origin=(100.0, 120.0, -50.0),
                  direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))


def test_node_client_matches_the_python_client(stack, node_client, tmp_path):
    volume = _mask()
    (tmp_path / "mask.raw").write_bytes(volume.array.tobytes())  # C order [z, y, x] = x fastest
    (tmp_path / "mask.json").write_text(json.dumps({
        "size": list(volume.size), "spacing": list(volume.spacing), "origin": list(volume.origin),
        "direction": list(volume.direction), "raw": "mask.raw"}))
    out_dir = tmp_path / "node-out"
    env = {**os.environ, "NODE_NO_WARNINGS": "1"}
    result = _run([str(NODE_DIR / "node_modules" / ".bin" / "tsx"), "src/example.ts",
                   "--gateway", stack.gateway, "--mask", str(tmp_path / "mask.json"),
                   "--out-dir", str(out_dir), "--file-stem", "model"], timeout=120, env=env)
    node = json.loads(result.stdout)

    assert node["health"] == {"postprocess": "SERVING", "smoothing": "SERVING"}

    with Client(stack.gateway, timeout=60) as client:
        measured = client.measure(volume).result
        meshed = client.mesh(volume, inline=True, file_stem="model", fmt=sm.MESH_FORMAT_OBJ)

    # Measure: labels, voxel counts, volumes, boxes, components, diameters all identical.
    python_labels = json_format.MessageToDict(measured)["labels"]
    assert [(l["value"], l["voxelCount"]) for l in node["measure"]["labels"]] == \
        [(l["value"], l["voxelCount"]) for l in python_labels]
    assert {l["value"] for l in python_labels} == {1, 2, 3}
    assert node["measure"]["labels"] == python_labels
    # The same voxels reached the server (its digest of what it received).
    received = {d["role"]: d["sha256"] for d in node["measure"]["info"]["received"]}
    assert received == {d.role: d.sha256 for d in measured.info.received}

    # MeshMask: the same files, byte for byte, each matching the digest the server sent.
    assert set(node["mesh"]["files"]) == set(meshed.files) == {"model.obj", "model.mtl"}
    for name, data in meshed.files.items():
        assert node["mesh"]["files"][name]["verified"], name
        assert (out_dir / name).read_bytes() == data, f"{name} differs from the Python client's"
    assert b"mtllib model.mtl" in meshed.files["model.obj"]
    node_meshes = node["mesh"]["result"]["meshes"]
    assert node_meshes == json_format.MessageToDict(meshed.result)["meshes"]
