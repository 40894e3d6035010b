"""Shared server plumbing over real sockets: health, reflection, status mapping, data-root
confinement, the bounded work queue and cancellation."""
import os
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from medseg import addresses
from medseg.client import Client, Ref
from medseg.postprocess.v1 import postprocess_pb2 as pp
from medseg.serving.config import ServerConfig
from medseg.progress import OperationCancelled
from medseg.serving.errors import FieldError, QueueFull
from medseg.serving.paths import DataRoot
from medseg.serving.work import WorkQueue
from medseg.volumes import Volume, write_volume
from postprocess_svc.server import create_server


@pytest.fixture
def server(tmp_path):
    srv = create_server(ServerConfig(service="postprocess", data_root=tmp_path, port=0)).start()
    srv.set_serving(True)
    yield srv
    srv.stop(drain_seconds=0, grace=0)


@pytest.fixture
def client(server):
    with Client(f"127.0.0.1:{server.port}", timeout=60) as c:
        yield c


def _mask():
    mask = np.zeros((20, 30, 30), np.uint8)
    mask[5:15, 10:20, 8:18] = 1
    return Volume(mask, (1.0, 1.0, 2.0))


# --- data root -----------------------------------------------------------------------

def test_data_root_confinement(tmp_path):
    root = DataRoot(tmp_path / "root")
    (tmp_path / "root").mkdir()
    (tmp_path / "secret.nii").write_text("x")
    (tmp_path / "root" / "ok.nii").write_text("x")
    os.symlink(tmp_path / "secret.nii", tmp_path / "root" / "link.nii")
    assert root.input("f", "ok.nii") == (tmp_path / "root" / "ok.nii").resolve()
    for bad in ["../secret.nii", "sub/../../secret.nii", str(tmp_path / "secret.nii"), "link.nii"]:
        with pytest.raises(PermissionError, match="outside the data root"):
            root.input("f", bad)
    with pytest.raises(FileNotFoundError):
        root.input("f", "missing.nii")
    with pytest.raises(FieldError, match="NUL"):
        root.input("f", "a\x00b")


# --- work queue ----------------------------------------------------------------------

def test_full_queue_refuses_at_once_and_cancelled_jobs_leave_it():
    queue = WorkQueue(workers=1, capacity=2)
    release = threading.Event()
    first = queue.submit(lambda progress, cancelled: release.wait(10))
    second = queue.submit(lambda progress, cancelled: "second ran")
    with pytest.raises(QueueFull, match="busy"):
        queue.submit(lambda progress, cancelled: None)
    second.cancel()  # still waiting: leaves the queue
    deadline = time.monotonic() + 5
    while queue.depth > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    third = queue.submit(lambda progress, cancelled: "third ran")
    release.set()
    assert first.result() is True
    assert third.result() == "third ran"
    with pytest.raises(OperationCancelled):
        second.result()
    queue.shutdown()


def test_running_job_sees_cancellation():
    queue = WorkQueue(workers=1, capacity=1)
    started = threading.Event()

    def work(progress, cancelled):
        started.set()
        while not cancelled():
            time.sleep(0.01)
        progress("never", 1.0)  # raises Cancelled once cancelled

    job = queue.submit(work)
    started.wait(5)
    job.cancel()
    with pytest.raises(OperationCancelled):
        job.result()
    assert queue.submit(lambda p, c: 42).result() == 42
    queue.shutdown()


# --- health and reflection -----------------------------------------------------------

def test_health_is_not_serving_until_ready_and_after_shutdown(tmp_path):
    srv = create_server(ServerConfig(service="postprocess", data_root=tmp_path, port=0)).start()
    name = addresses.SERVICE_NAMES["postprocess"]
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        check = lambda: health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
        assert check() == health_pb2.HealthCheckResponse.NOT_SERVING
        srv.set_serving(True)
        assert check() == health_pb2.HealthCheckResponse.SERVING
        stopper = threading.Thread(target=srv.stop, kwargs=dict(drain_seconds=1.0, grace=0))
        stopper.start()
        time.sleep(0.3)
        assert check() == health_pb2.HealthCheckResponse.NOT_SERVING  # draining, still answering
        stopper.join()


def test_reflection_describes_all_three_services(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        [reply] = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for s in reply.list_services_response.service}
    assert set(addresses.SERVICE_NAMES.values()) <= names


# --- status mapping through a real server -----------------------------------------------

def test_field_errors_carry_bad_request_details(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pp_grpc_stub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Measure(iter([pp.MeasureRequest(params=pp.MeasureParams())]), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mask_path" in info.value.details()
    status = rpc_status.from_call(info.value)
    assert status is not None and status.details, "BadRequest detail expected"


def pp_grpc_stub(channel):
    from medseg.postprocess.v1 import postprocess_pb2_grpc
    return postprocess_pb2_grpc.PostprocessServiceStub(channel)


def test_params_must_come_first(server):
    from medseg import codec
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        chunks = [pp.MeasureRequest(chunk=c) for c in codec.volume_chunks(_mask(), "mask")]
        with pytest.raises(grpc.RpcError) as info:
            list(pp_grpc_stub(channel).Measure(iter(chunks), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first message" in info.value.details()


def test_paths_outside_root_and_missing_files(client, tmp_path):
    for ref, code in [(Ref("../x.nii.gz"), grpc.StatusCode.PERMISSION_DENIED),
                      (Ref("/etc/passwd"), grpc.StatusCode.PERMISSION_DENIED),
                      (Ref("nope.nii.gz"), grpc.StatusCode.NOT_FOUND)]:
        with pytest.raises(grpc.RpcError) as info:
            client.add_fat(ref, ref)
        assert info.value.code() == code
        assert "mask_path" in info.value.details()


def test_unreadable_file_is_invalid_argument(client, tmp_path):
    (tmp_path / "junk.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(grpc.RpcError) as info:
        client.add_fat(Ref("junk.nii.gz"), Ref("junk.nii.gz"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_cancelled_upload_frees_the_server(server, client):
    """A client that gives up mid-upload leaves nothing behind; the next call works."""
    from medseg import codec
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stalled = threading.Event()

        def requests():
            yield pp.MeasureRequest(params=pp.MeasureParams())
            yield pp.MeasureRequest(chunk=next(codec.volume_chunks(_mask(), "mask")))
            stalled.wait(5)  # never sends the data

        call = pp_grpc_stub(channel).Measure(requests(), timeout=30)
        time.sleep(0.3)
        call.cancel()
        stalled.set()
        with pytest.raises(grpc.RpcError) as info:
            list(call)
        assert info.value.code() == grpc.StatusCode.CANCELLED
    out = client.add_fat(_mask(), _mask())
    assert out.result.output.labels


def test_by_ref_output_is_written_atomically_next_to_the_input(client, tmp_path):
    write_volume(_mask(), tmp_path / "case" / "mask.nii.gz")
    write_volume(_mask(), tmp_path / "case" / "organs.nii.gz")
    out = client.add_fat(Ref("case/mask.nii.gz"), Ref("case/organs.nii.gz"))
    assert out.result.output.path == "case/mask_fat.nii.gz"
    assert sorted(p.name for p in (tmp_path / "case").iterdir()) == [
        "mask.nii.gz", "mask_fat.nii.gz", "organs.nii.gz"]  # no partial files left
    assert [d.path for d in out.result.info.received] == ["case/mask.nii.gz", "case/organs.nii.gz"]
