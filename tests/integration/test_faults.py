"""Faults (issue 15 item 4), through the gateway, without manual steps:

- a server killed with SIGKILL is restarted by supervisord (autorestart=unexpected: death
  by a signal is unexpected) and Envoy puts it back in rotation: health SERVING again and a
  real call succeeds; the other services answer throughout;
- nnU-Net models that fail to load (a registry naming a missing checkpoint, or a corrupt
  checkpoint) leave the nnunet server up but NOT_SERVING, and ListModels through the gateway
  (routed to it whatever its health) says why in `load_error`; work is refused UNAVAILABLE.

The restart test uses the session stack; the model test starts its own small stack (Envoy +
nnunet only, with a broken MEDSEG_MODEL_REGISTRY) and stops it."""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from gateway_envoy.stack import SERVICES, Stack, StackError, free_ports
from medseg.client import Client
from medseg.labels import Label
from medseg.nnunet.v1 import nnunet_pb2 as nn
from medseg.volumes import Volume
from tests import tools
from tests.integration.conftest import TOOLS, tool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RESTART_LIMIT_S = 60.0


def _mask() -> Volume:
    array = np.zeros((12, 12, 12), np.uint8)
    array[3:9, 3:9, 3:9] = Label.KIDNEY
    return Volume(array, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))


def _real_call(gateway: str, service: str) -> None:
    with Client(gateway, timeout=30) as client:
        if service == "postprocess":
            assert client.measure(_mask()).result.labels[0].voxel_count == 216
        elif service == "smoothing":
            assert client.mesh(_mask(), inline=True).files
        else:  # pragma: no cover
            raise ValueError(service)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.parametrize("service", ["postprocess", "smoothing"])
def test_sigkilled_server_is_restarted_and_back_in_rotation(stack, service, capsys):
    if service not in stack.services:
        pytest.skip(f"{service} is not started in this session")
    others = [s for s in stack.services if s != service and s != "nnunet"]
    timings = []
    for attempt in (1, 2):  # twice: a restarted server is restarted again
        assert stack.status()[service] == "SERVING"
        pid = stack.pid(service)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        # A call during the outage fails fast (or succeeds on the restarted server), never hangs.
        try:
            _real_call(stack.gateway, service)
            during = "OK"
        except grpc.RpcError as exc:
            during = exc.code().name
        during_s = time.monotonic() - killed
        assert during in ("OK", "UNAVAILABLE"), during
        assert during_s < 15, during_s

        new_pid = restarted = serving = None
        while time.monotonic() - killed < RESTART_LIMIT_S:
            info = stack.processes()[service]
            if restarted is None and info["pid"] and info["pid"] != pid:
                new_pid, restarted = info["pid"], time.monotonic() - killed
            if restarted is not None and stack.status(timeout=2)[service] == "SERVING":
                serving = time.monotonic() - killed
                break
            assert all(stack.status(timeout=2)[o] == "SERVING" for o in others)
            time.sleep(0.1)
        assert serving is not None, (f"{service} not SERVING {RESTART_LIMIT_S:.0f} s after SIGKILL "
                                     f"(pid {pid} -> {new_pid}):\n{stack.tail('supervisord')}\n{stack.tail(service)}")
        assert not _alive(pid) and _alive(new_pid)
        _real_call(stack.gateway, service)
        called = time.monotonic() - killed
        timings.append((attempt, pid, new_pid, during, during_s, restarted, serving, called))
        log = stack.log_path("supervisord").read_text()
        assert f"exited: {service} (terminated by SIGKILL; not expected)" in log
        # RUNNING once up for startsecs (3 s); killing it before that would count as a failed
        # start (startretries), so the second kill waits for it.
        while stack.processes()[service]["statename"] == "STARTING" and time.monotonic() - killed < RESTART_LIMIT_S:
            time.sleep(0.1)
        assert stack.processes()[service]["statename"] == "RUNNING"
    with capsys.disabled():
        for attempt, pid, new_pid, during, during_s, restarted, serving, called in timings:
            print(f"\n  {service} SIGKILL #{attempt}: pid {pid} -> {new_pid}; call during outage {during} "
                  f"in {during_s:.2f} s; restarted +{restarted:.2f} s, SERVING through the gateway "
                  f"+{serving:.2f} s, first call OK +{called:.2f} s")


# --- models that fail to load ------------------------------------------------------------

def _broken_registry(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A registry with one task (tumor, no kidney crop) whose model cannot load; returns
    its path and a piece of the reason ListModels must show."""
    source = REPO / "models" / "demo" / "Dataset905_Tumor" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder = tmp_path / "models" / "Dataset905_Tumor" / source.name
    shutil.copytree(source, folder)
    if case == "missing_checkpoint":
        checkpoint, expected = "checkpoint_missing.pth", "checkpoint_missing.pth does not exist"
    else:  # corrupt: the registry is valid, loading the weights fails
        checkpoint, expected = "checkpoint_final.pth", "(loading tumor)"
        (folder / "fold_0" / checkpoint).write_bytes(b"not a torch checkpoint\n" * 64)
    registry = tmp_path / "models" / "registry.yaml"
    registry.write_text(f"""tasks:
  tumor:
    phases: [portal]
    labels: convention
    structures: [kidney, tumor]
    models:
      - folder: Dataset905_Tumor/{source.name}
        folds: [0]
        checkpoint: {checkpoint}
        label_map: {{kidney: kidney, tumor: tumor}}
    kidney_crop: false
""")
    return registry, expected


@pytest.mark.parametrize("case", ["missing_checkpoint", "corrupt_checkpoint"])
def test_model_that_fails_to_load_is_visible_through_the_gateway(tmp_path, case, capsys):
    missing = [name for name in TOOLS if tool(name) is None]
    if missing:
        tools.missing(f"integration tools {missing} (run `make setup`)")
    registry, expected = _broken_registry(tmp_path, case)
    scratch = Path(tempfile.mkdtemp(prefix="medseg-faults-"))
    names = ("gateway", "admin") + SERVICES
    stack = Stack(run_dir=scratch / "run", data_root=scratch / "data", services=["nnunet"],
                  ports=dict(zip(names, free_ports(len(names)))),
                  extra_env={"MEDSEG_MODEL_REGISTRY": str(registry), "MEDSEG_GRACE_SECONDS": "2",
                             "MEDSEG_DRAIN_SECONDS": "1", "OMP_NUM_THREADS": "1"})
    stack.data_root.mkdir(parents=True)
    started = time.monotonic()
    try:
        # `make up`'s path: it fails fast with the reason, long before its timeout.
        with pytest.raises(StackError) as failed:
            stack.up(timeout=120, say=lambda line: None)
        up_failed_s = time.monotonic() - started
        assert "models failed to load" in str(failed.value) and expected in str(failed.value), str(failed.value)
        assert up_failed_s < 90, up_failed_s
        reply = None
        with Client(stack.gateway, timeout=5) as client:
            while time.monotonic() - started < 90:
                try:
                    reply = client.list_models()
                    if reply.load_error:
                        break
                except grpc.RpcError as exc:  # still starting: Envoy cannot connect yet
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                time.sleep(0.25)
            visible = time.monotonic() - started
            assert reply is not None and reply.load_error, f"no load_error after {visible:.0f} s:\n{stack.tail('nnunet')}"
            assert expected in reply.load_error, reply.load_error
            assert "tumor" in reply.load_error or "checkpoint" in reply.load_error, reply.load_error
            pid = stack.pid("nnunet")
            # Out of rotation for work: health is not SERVING and work is refused UNAVAILABLE.
            assert not stack.status()["nnunet"].startswith("SERVING"), stack.status()
            with pytest.raises(grpc.RpcError) as refused:
                client.segment_tumor(_mask().with_array(np.zeros((12, 12, 12), np.int16)), inline=True)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            # Up and steady, not a crash loop: supervisord calls it RUNNING once it has
            # lived startsecs (3 s), which a fast registry error can come before.
            deadline = time.monotonic() + 15
            while stack.processes()["nnunet"]["statename"] == "STARTING" and time.monotonic() < deadline:
                time.sleep(0.25)
            time.sleep(1.0)
            assert stack.processes()["nnunet"]["statename"] == "RUNNING"
            assert stack.pid("nnunet") == pid and client.list_models().load_error == reply.load_error
        with capsys.disabled():
            print(f"\n  {case}: `up` failed with the reason after {up_failed_s:.1f} s; "
                  f"load_error visible through the gateway {visible:.1f} s after start: "
                  f"{reply.load_error[:160]}")
    finally:
        if stack.running():
            stack.down(say=lambda line: None)
    shutil.rmtree(scratch, ignore_errors=True)
