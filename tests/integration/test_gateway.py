"""The Envoy gateway in front of the real servers: reflection, health routing, unknown
paths, by-reference calls with grpcurl, the admin interface, and a draining server."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medseg import addresses
from medseg.client import Client
from medseg.labels import Label
from medseg.nnunet.v1 import nnunet_pb2  # noqa: F401  (registers the descriptors)
from medseg.postprocess.v1 import postprocess_pb2  # noqa: F401
from medseg.smoothing.v1 import smoothing_pb2  # noqa: F401
from medseg.volumes import Volume, write_volume

pytestmark = pytest.mark.integration

SERVICE_NAMES = addresses.SERVICE_NAMES


def grpcurl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    binary = Path(sys.executable).parent / "grpcurl"
    return subprocess.run([str(binary), "-plaintext", *args], capture_output=True, text=True,
                          timeout=timeout)


def json_messages(text: str) -> list[dict]:
    """grpcurl prints one JSON object per streamed message, one after another."""
    decoder, messages, index = json.JSONDecoder(), [], 0
    text = text.strip()
    while index < len(text):
        message, index = decoder.raw_decode(text, index)
        messages.append(message)
        while index < len(text) and text[index].isspace():
            index += 1
    return messages


def test_reflection_through_gateway_lists_every_service(stack):
    result = grpcurl(stack.gateway, "list")
    assert result.returncode == 0, result.stderr
    listed = set(result.stdout.split())
    assert set(SERVICE_NAMES.values()) | {"google.longrunning.Operations"} <= listed
    assert "grpc.health.v1.Health" in listed


@pytest.mark.parametrize("service", sorted(SERVICE_NAMES))
def test_describe_through_gateway_shows_every_method(stack, service):
    full_name = SERVICE_NAMES[service]
    result = grpcurl(stack.gateway, "describe", full_name)
    assert result.returncode == 0, result.stderr
    methods = [m.name for m in descriptor_pool.Default().FindServiceByName(full_name).methods]
    assert methods
    for method in methods:
        assert f"rpc {method} (" in result.stdout, f"{full_name}.{method} missing:\n{result.stdout}"


def test_status_through_gateway_reports_each_running_service(stack):
    states = stack.status()
    assert set(states) == set(SERVICE_NAMES)
    for name in stack.services:
        assert states[name] == "SERVING", states
    for name in set(SERVICE_NAMES) - set(stack.services):
        # Not started: Envoy has no healthy host for it.
        assert states[name].startswith("UNAVAILABLE"), states


def test_health_without_header_goes_to_postprocess(stack):
    if "postprocess" not in stack.services:
        pytest.skip("postprocess not started")
    with grpc.insecure_channel(stack.gateway) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAMES["postprocess"]), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_unknown_paths_get_unimplemented(stack):
    with grpc.insecure_channel(stack.gateway) as channel:
        # No route at all: Envoy's local 404, which gRPC callers see as UNIMPLEMENTED.
        unrouted = channel.unary_unary("/medseg.nothing.v1.NothingService/Do")
        with pytest.raises(grpc.RpcError) as caught:
            unrouted(b"", timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        if "postprocess" in stack.services:
            # Routed to a server that has no such method: the server says UNIMPLEMENTED.
            unknown_method = channel.unary_unary("/medseg.postprocess.v1.PostprocessService/Nope")
            with pytest.raises(grpc.RpcError) as caught:
                unknown_method(b"", timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_measure_by_reference_with_grpcurl_json(stack, data_root):
    if "postprocess" not in stack.services:
        pytest.skip("postprocess not started")
    array = np.zeros((20, 30, 40), np.uint8)          # (z, y, x)
    array[2:8, 5:15, 10:30] = Label.KIDNEY            # 6 x 10 x 20 = 1200 voxels
    array[12:16, 20:25, 5:8] = Label.TUMOR            # 4 x 5 x 3 = 60 voxels
    spacing = (0.8, 0.8, 2.0)
    write_volume(Volume(array, spacing, (10.0, -20.0, 5.0)), data_root / "grpcurl" / "mask.nii.gz")
    request = json.dumps({"params": {"mask_path": "grpcurl/mask.nii.gz"}})
    result = grpcurl("-d", request, stack.gateway,
                     f"{SERVICE_NAMES['postprocess']}/Measure")
    assert result.returncode == 0, result.stderr
    messages = json_messages(result.stdout)
    final = messages[-1]["result"]
    by_value = {int(label.get("value", 0)): label for label in final["labels"]}
    voxel_ml = 0.8 * 0.8 * 2.0 / 1000.0
    assert int(by_value[Label.KIDNEY]["voxel_count"]) == 1200   # grpcurl keeps proto field names
    assert int(by_value[Label.TUMOR]["voxel_count"]) == 60
    assert by_value[Label.KIDNEY]["volume_ml"] == pytest.approx(1200 * voxel_ml)
    received = final["info"]["received"][0]
    assert received["path"] == "grpcurl/mask.nii.gz"


def test_admin_serves_prometheus_on_loopback_only(stack):
    with urllib.request.urlopen(f"{stack.admin_url}/stats/prometheus", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    for service in stack.services:
        assert f'envoy_cluster_health_check_success{{envoy_cluster_name="{service}"}}' in text
    assert "envoy_cluster_upstream_rq_total" in text
    # Bound to 127.0.0.1: another local address of this host must refuse.
    other = _non_loopback_address()
    if other is None:
        pytest.skip("host has no non-loopback IPv4 address to try")
    with socket.socket() as sock:
        sock.settimeout(2)
        assert sock.connect_ex((other, stack.ports["admin"])) != 0


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))  # no packet is sent; picks the outgoing address
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def _direct_health(stack, service: str) -> str:
    with grpc.insecure_channel(stack.direct(service)) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAMES[service]), timeout=2)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _envoy_host_flags(stack, cluster: str) -> str:
    with urllib.request.urlopen(f"{stack.admin_url}/clusters", timeout=5) as reply:
        lines = reply.read().decode().splitlines()
    return " ".join(line for line in lines if line.startswith(f"{cluster}::") and "health_flags" in line)


def _real_call(stack, service: str) -> None:
    """One small real operation of `service` through the gateway."""
    mask = np.zeros((12, 12, 12), np.uint8)
    mask[3:9, 3:9, 3:9] = Label.KIDNEY
    volume = Volume(mask, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    with Client(stack.gateway, timeout=60) as client:
        if service == "postprocess":
            assert client.measure(volume).result.labels[0].voxel_count == 216
        elif service == "smoothing":
            assert client.mesh(volume).result.meshes[0].closed


def test_sigterm_drains_one_server_while_the_others_keep_serving(stack):
    if len(stack.services) < 2:
        pytest.skip("needs two running services")
    # Stopping postprocess also shows reflection falling back to the next cluster.
    victim = "postprocess" if "postprocess" in stack.services else stack.services[-1]
    others = [s for s in stack.services if s != victim and s != "nnunet"]
    pid = stack.pid(victim)
    assert _direct_health(stack, victim) == "SERVING"

    stack.signal_program(victim, "TERM")
    direct_states, gateway_states, envoy_flags = [], [], ""
    deadline = time.monotonic() + 30
    while _pid_alive(pid) and time.monotonic() < deadline:
        direct_states.append(_direct_health(stack, victim))
        gateway_states.append(stack.status(timeout=2)[victim])
        flags = _envoy_host_flags(stack, victim)
        if "failed_active_hc" in flags and _pid_alive(pid):
            envoy_flags = flags
        # The others answer through the gateway the whole time.
        assert all(stack.status(timeout=2)[o] == "SERVING" for o in others)
        time.sleep(0.1)
    assert not _pid_alive(pid), "server did not exit after SIGTERM"

    # While still alive, the server said NOT_SERVING (not a broken connection) ...
    assert "NOT_SERVING" in direct_states, direct_states
    assert direct_states[0] in ("SERVING", "NOT_SERVING")
    # ... and Envoy's health check took it out of rotation before it exited.
    assert envoy_flags, "Envoy never marked the draining host failed_active_hc"
    # Through the gateway it stopped being SERVING (NOT_SERVING, then no healthy upstream).
    first_change = next(s for s in gateway_states if s != "SERVING")
    assert first_change == "NOT_SERVING" or first_change.startswith("UNAVAILABLE"), gateway_states
    assert stack.status()[victim].startswith("UNAVAILABLE")
    for other in others:
        assert stack.status()[other] == "SERVING"
        _real_call(stack, other)
    # Reflection is still answered (by the next cluster in the aggregate) for everything.
    listed = grpcurl(stack.gateway, "list")
    assert listed.returncode == 0, listed.stderr
    assert set(SERVICE_NAMES.values()) <= set(listed.stdout.split())

    # Put it back for the rest of the session.
    stack.start_program(victim)
    stack.wait_ready(timeout=120, say=lambda line: None)
    _real_call(stack, victim)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False



# --- stack.py itself (no shared stack needed) -------------------------------------------

def test_rendered_envoy_config_validates_without_warnings(tmp_path):
    from gateway_envoy.stack import Stack, free_ports

    names = ("gateway", "admin") + tuple(SERVICE_NAMES)
    stack = Stack(run_dir=tmp_path / "run", data_root=tmp_path / "data",
                  ports=dict(zip(names, free_ports(len(names)))))
    paths = stack.render()
    output = stack.validate_envoy()
    assert "OK" in output and "warn" not in output.lower(), output
    config = paths["envoy.yaml"].read_text()
    assert f"port_value: {stack.ports['gateway']}" in config
    assert "address: 127.0.0.1, port_value: " + str(stack.ports["admin"]) in config
    supervisor = paths["supervisord.conf"].read_text()
    assert supervisor.count("stopsignal=TERM") == 2 + len(SERVICE_NAMES)  # envoy + the viewer + each server
    assert f'MEDSEG_POSTPROCESS_PORT="{stack.ports["postprocess"]}"' in supervisor


def test_up_fails_with_the_log_tail_and_leaves_nothing_running(tmp_path):
    """A server that dies at start-up: `stack.py up` exits 1, shows why, stops everything."""
    from gateway_envoy.stack import Stack, free_ports, port_is_free

    names = ("gateway", "admin") + tuple(SERVICE_NAMES)
    ports = dict(zip(names, free_ports(len(names))))
    env = {**os.environ, "MEDSEG_RUN_DIR": str(tmp_path / "run"),
           "MEDSEG_DATA_ROOT": str(tmp_path / "data"), "MEDSEG_SERVICES": "postprocess",
           # An impossible setting: the server refuses to start (capacity below workers).
           "MEDSEG_POSTPROCESS_QUEUE": "0", "MEDSEG_UP_TIMEOUT": "60",
           **{f"MEDSEG_{name.upper()}_PORT": str(port) for name, port in ports.items()}}
    script = Path(__file__).resolve().parents[2] / "gateway_envoy" / "stack.py"
    result = subprocess.run([sys.executable, str(script), "up"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "postprocess is" in result.stderr and "queue capacity 0" in result.stderr, result.stderr
    assert not Stack(run_dir=tmp_path / "run").running()
    assert port_is_free(ports["gateway"]) and port_is_free(ports["admin"])
