"""Models without a restart (issue 14 item 5), on a real nnunet server process over a socket:

- a registry edit (the demo tumor model registered again under another name) is picked up by
  the file watch: the new task is listed by ListModels, callable with the generic Segment RPC,
  gives the same mask and digest as the original, and the process never restarts;
- a call in flight during the reload finishes (on the models it started with);
- a broken edit keeps every loaded task serving and ListModels' `reload_error` says why
  (without server paths); a broken file is not retried until it changes, SIGHUP forces it;
- every result names the model, its folder digest and the nnU-Net version."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway_envoy.stack import free_ports
from medseg.client import Client, Ref
from medseg.nnunet.v1 import nnunet_pb2 as nn
from medseg.phantom import make_phantom

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TUMOR = REPO / "models" / "demo" / "Dataset905_Tumor" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
WAIT_S = 180.0


def _task(name: str, folder: str, checkpoint: str = "checkpoint_final.pth") -> str:
    return f"""  {name}:
    phases: [portal]
    labels: convention
    structures: [kidney, tumor]
    models:
      - folder: {folder}
        folds: [0]
        checkpoint: {checkpoint}
        label_map: {{kidney: kidney, tumor: tumor}}
    kidney_crop: false
"""


def _write(path: Path, *tasks: str) -> None:
    # Written whole and renamed, as an editor or a config-map update does.
    tmp = path.with_suffix(".tmp")
    tmp.write_text("settings:\n  use_mirroring: false\n  tile_batch_size: 4\ntasks:\n" + "".join(tasks))
    os.replace(tmp, path)


def _wait(condition, what: str, proc: subprocess.Popen, log: Path, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited:\n{log.read_text()[-3000:]}"
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"{what} not within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def server(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(TUMOR, models / "tumor")
    registry = models / "registry.yaml"
    _write(registry, _task("tumor", "tumor"))
    root = tmp_path / "root"
    make_phantom(size=(48, 48, 32), seed=7).write(root / "case")
    port = free_ports(1)[0]
    log = tmp_path / "nnunet.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MEDSEG_NNUNET_PORT": str(port),
           "MEDSEG_DATA_ROOT": str(root), "MEDSEG_MODEL_REGISTRY": str(registry),
           "MEDSEG_MODEL_WATCH_SECONDS": "0.5", "MEDSEG_DRAIN_SECONDS": "0",
           "MEDSEG_GRACE_SECONDS": "2", "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nnunet_svc.server"], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    client = Client(f"127.0.0.1:{port}", timeout=120)
    health = health_pb2_grpc.HealthStub(client.channel)

    def serving():
        try:
            return health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    try:
        _wait(serving, "SERVING", proc, log)
        yield dict(proc=proc, client=client, registry=registry, models=models, log=log,
                   serving=serving, root=root)
    finally:
        client.close()
        proc.terminate()
        proc.wait(30)


def _listed(client: Client) -> dict[str, nn.ModelInfo]:
    return {m.name: m for m in client.list_models().models}


def test_registry_edit_adds_a_task_live_and_a_broken_edit_keeps_the_old(server):
    client, proc, registry, log = server["client"], server["proc"], server["registry"], server["log"]
    pid = proc.pid
    version = metadata.version("nnunetv2")

    first = _listed(client)
    assert set(first) == {"tumor"} and first["tumor"].ready
    assert first["tumor"].task == nn.TASK_TUMOR and first["tumor"].nnunet_version == version
    before = client.segment("tumor", {"portal": Ref("case/portal.nii.gz")}, inline=True)
    mask = before.volumes["tumor"].array
    assert set(np.unique(mask)) - {0}, "the demo tumor model found nothing"
    (prov,) = before.result.models
    assert (prov.task, prov.digest, prov.nnunet_version) == ("tumor", first["tumor"].digest, version)
    assert list(prov.model_versions) == list(first["tumor"].model_versions)
    # The named RPC carries the same provenance.
    named = client.segment_tumor(Ref("case/portal.nii.gz"), inline=True)
    assert named.result.models[0].digest == prov.digest
    assert np.array_equal(named.volumes["tumor"].array, mask)

    # --- the edit: the same weights under a research name; a call in flight meanwhile ----
    in_flight = {}
    thread = threading.Thread(target=lambda: in_flight.update(
        result=client.segment("tumor", {"portal": Ref("case/portal.nii.gz")}, inline=True)))
    thread.start()
    edited = time.monotonic()
    _write(registry, _task("tumor", "tumor"), _task("kidney_tumor_research", "tumor"))
    listed = _wait(lambda: (lambda m: m if m.get("kidney_tumor_research") and m["kidney_tumor_research"].ready
                            else None)(_listed(client)), "the new task listed ready", proc, log)
    swap_s = time.monotonic() - edited
    thread.join(120)
    assert np.array_equal(in_flight["result"].volumes["tumor"].array, mask)
    research = listed["kidney_tumor_research"]
    assert research.task == nn.TASK_UNSPECIFIED  # no named RPC, no enum value: Segment only
    assert research.digest == listed["tumor"].digest and listed["tumor"].ready
    out = client.segment("kidney_tumor_research", {"portal": Ref("case/portal.nii.gz")}, inline=True)
    assert np.array_equal(out.volumes["kidney_tumor_research"].array, mask)
    assert out.result.outputs[0].role == "kidney_tumor_research"
    assert (out.result.models[0].task, out.result.models[0].digest) == ("kidney_tumor_research", prov.digest)
    assert proc.pid == pid and proc.poll() is None and server["serving"]()
    assert "new or changed: kidney_tumor_research" in log.read_text()  # tumor kept its predictor

    # --- a broken edit: a checkpoint that does not exist -------------------------------
    shutil.copytree(server["models"] / "tumor", server["models"] / "broken")
    _write(registry, _task("tumor", "tumor"), _task("kidney_tumor_research", "tumor"),
           _task("broken", "broken", "checkpoint_later.pth"))
    reply = _wait(lambda: (lambda r: r if r.reload_error else None)(client.list_models()),
                  "reload_error", proc, log)
    assert "checkpoint_later.pth does not exist" in reply.reload_error, reply.reload_error
    assert str(server["models"]) not in reply.reload_error  # no server paths in messages
    assert not reply.load_error
    assert {m.name for m in reply.models} == {"tumor", "kidney_tumor_research"}
    assert all(m.ready for m in reply.models)
    again = client.segment("kidney_tumor_research", {"portal": server["root"] / "case" / "portal.nii.gz"},
                           inline=True)
    assert np.array_equal(again.volumes["kidney_tumor_research"].array, mask)
    assert server["serving"]()
    with pytest.raises(grpc.RpcError) as unknown:
        client.segment("broken", {"portal": Ref("case/portal.nii.gz")})
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "params.task" in unknown.value.details()

    # The file is not retried while unchanged; once the checkpoint exists, SIGHUP loads it.
    time.sleep(1.5)
    assert "broken" not in _listed(client)
    shutil.copy(server["models"] / "broken" / "fold_0" / "checkpoint_final.pth",
                server["models"] / "broken" / "fold_0" / "checkpoint_later.pth")
    time.sleep(1.5)
    assert "broken" not in _listed(client)
    os.kill(proc.pid, signal.SIGHUP)
    fixed = _wait(lambda: (lambda m: m if m.get("broken") and m["broken"].ready else None)(_listed(client)),
                  "the fixed task after SIGHUP", proc, log)
    assert not client.list_models().reload_error
    assert set(fixed) == {"tumor", "kidney_tumor_research", "broken"} and proc.pid == pid
    print(f"\n  registry edit -> new task listed ready in {swap_s:.1f} s, same mask and digest; "
          f"broken edit kept 2 tasks serving; SIGHUP loaded the fixed one; pid {pid} throughout")


def test_segment_bad_inputs(server):
    client = server["client"]

    def code_of(params, *chunks):
        requests = iter([nn.SegmentRequest(params=params), *chunks])
        with pytest.raises(grpc.RpcError) as info:
            list(client.nnunet.Segment(requests, timeout=30))
        return info.value.code(), info.value.details()

    code, details = code_of(nn.SegmentParams())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "params.task" in details and "tumor" in details
    code, details = code_of(nn.SegmentParams(task="nope", phase_paths={"portal": "case/portal.nii.gz"}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown task 'nope'" in details
    code, details = code_of(nn.SegmentParams(task="tumor"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "params.phase_paths[portal]" in details
    code, details = code_of(nn.SegmentParams(task="tumor", phase_paths={"portal": "case/portal.nii.gz",
                                                                        "delayed": "case/delayed.nii.gz"}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "params.phase_paths" in details and "delayed" in details
