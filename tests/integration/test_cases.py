"""Case jobs through the real gateway: a phantom case end to end, a client that goes away,
the case service SIGKILLed mid-job, cancel, idempotent submit, bad inputs, a failing step.

One small phantom at 3 mm (96 x 80 x 80 voxels, the kidney region; the ureter's fine model runs it at 1.5 mm), so a
whole job takes about 20 s on two cores."""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from medseg.case_jobs import CaseClient, Digest, state_name
from medseg.cases.v1 import cases_pb2 as pb
from medseg.client import Client, Ref
from medseg.phantom import make_phantom
from medseg.volumes import read_volume

pytestmark = pytest.mark.integration

SIZE = (96, 80, 80)
COMPARED = ("mask.nii.gz", "masks/total.nii.gz", "masks/tumor.nii.gz", "masks/vessels.nii.gz",
            "masks/ureter.nii.gz", "meshes/model.obj", "meshes/model.mtl", "meshes/model.glb")


@pytest.fixture(scope="module")
def case_stack(stack):
    for needed in ("case", "nnunet", "smoothing", "postprocess"):
        if needed not in stack.services:
            if os.environ.get("CI") == "true":
                pytest.fail(f"{needed} not started in this session")
            pytest.skip(f"{needed} not started in this session (MEDSEG_TEST_SERVICES)")
    return stack


@pytest.fixture(scope="module")
def phantom(case_stack, data_root):
    case = make_phantom(size=SIZE, spacing=(3.0, 3.0, 3.0), seed=1234)
    return case, case.write(data_root / "cases_phantom")


@pytest.fixture(scope="module")
def cases(case_stack):
    with CaseClient(case_stack.gateway) as client:
        yield client


def refs(*phases):
    return {p: Ref(f"cases_phantom/{p}.nii.gz") for p in phases}


def digests(root, job) -> dict[str, str]:
    return {o.name: o.sha256 for o in job.result.outputs}


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def step_states(job) -> dict[str, str]:
    from medseg.case_jobs import step_state_name

    return {s.name: step_state_name(s.state) for s in job.progress.steps}


def bad_request_field(exc: grpc.RpcError) -> str:
    status = rpc_status.from_call(exc)
    for detail in status.details:
        info = error_details_pb2.BadRequest()
        if detail.Unpack(info):
            return info.field_violations[0].field
    return ""


@pytest.fixture(scope="module")
def finished_job(cases, phantom, data_root):
    """The reference run: uploads for two phases, a path for the third; the client's first
    watch goes away after a few messages and a second one re-attaches."""
    _case, files = phantom
    request_id = uuid.uuid4().hex
    started = time.monotonic()
    job = cases.submit(arterial=files["arterial"], portal=files["portal"],
                       delayed=Ref("cases_phantom/delayed.nii.gz"), request_id=request_id,
                       display_name="phantom 1234")
    assert state_name(job.state) in ("QUEUED", "RUNNING")
    # A first watcher reads a few messages, then disconnects mid-job.
    call = cases.stub.WatchCase(pb.WatchCaseRequest(job_id=job.job_id))
    first = [next(call) for _ in range(3)]
    call.cancel()
    assert first[0].HasField("snapshot")
    # The retried submit (same request_id) answers the same job, with no second job.
    again = cases.submit(arterial=Digest(job.inputs[0].sha256), portal=files["portal"],
                         request_id=request_id)
    assert again.job_id == job.job_id
    # Re-attach: a snapshot first, events, the final snapshot last.
    messages = list(cases.watch(job.job_id))
    seconds = time.monotonic() - started
    assert messages[0].HasField("snapshot") and messages[-1].HasField("snapshot")
    assert any(m.HasField("event") and m.event.kind == pb.CASE_EVENT_KIND_PROGRESS for m in messages)
    final = messages[-1].snapshot
    print(f"\nreference job {job.job_id}: {seconds:.1f} s; steps "
          + ", ".join(f"{s.name} {s.seconds:.1f}s" for s in final.progress.steps))
    return final, request_id


def test_phantom_case_end_to_end(cases, finished_job, phantom, data_root, tmp_path):
    job, request_id = finished_job
    assert state_name(job.state) == "SUCCEEDED", job.error
    assert set(step_states(job).values()) == {"DONE"}
    names = {o.name for o in job.result.outputs}
    assert set(COMPARED) | {"report.json", "report.html"} <= names
    assert sum(1 for j in cases.list() if j.request_id == request_id) == 1
    # Every file is where the result says, with its digest; fetch brings them over the wire.
    for out in job.result.outputs:
        path = data_root / out.path
        assert hashlib.sha256(path.read_bytes()).hexdigest() == out.sha256
    fetched = cases.fetch(job.job_id, tmp_path / "out")
    assert {p.relative_to(tmp_path / "out").as_posix() for p in fetched} == \
        {n for n in names if not n.startswith("work/")}
    # The combined mask follows the convention and has every kidney structure.
    mask = read_volume(tmp_path / "out" / "mask.nii.gz")
    assert {1, 2, 3, 4, 5, 6} <= set(int(v) for v in set(mask.array.ravel().tolist()))
    structures = {s.name for s in job.result.structures}
    assert {"kidney", "tumor", "artery", "vein", "ureter", "fat"} <= structures
    import json
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["state"] == "SUCCEEDED" and report["case_id"] == job.job_id
    assert set(report["inputs"]) == {"arterial", "portal", "delayed"}
    assert report["outputs"]["mask.nii.gz"]["sha256"] == digests(data_root, job)["mask.nii.gz"]
    # The tumor facts and the models' identities reach the report.
    case, _files = phantom
    (tumor,) = report["tumors"]
    assert tumor["side"] == case.anatomy["tumor"]["side"] and tumor["renal"]["R"] in (1, 2, 3)
    assert all(len(m["digest"]) == 64 and m["version"] for m in report["models"])
    # The same job as a google.longrunning Operation, through the gateway.
    ops = operations_pb2_grpc.OperationsStub(cases.channel)
    op = ops.GetOperation(operations_pb2.GetOperationRequest(name=job.job_id), timeout=10)
    assert op.done and op.response.Is(pb.CaseResult.DESCRIPTOR)
    result = pb.CaseResult()
    op.response.Unpack(result)
    assert {o.name for o in result.outputs} == names
    listed = ops.ListOperations(operations_pb2.ListOperationsRequest(filter="state=SUCCEEDED"), timeout=10)
    assert job.job_id in {o.name for o in listed.operations}


def test_sigkill_mid_job_resumes_with_the_same_outputs(cases, case_stack, finished_job, phantom, data_root):
    reference, _ = finished_job
    job = cases.submit(**refs("arterial", "portal", "delayed"))
    folder = data_root / "cases" / job.job_id
    # Kill the case service as soon as the first step is done (the job is mid-way).
    wait_for(lambda: step_states(cases.get(job.job_id))["segment"] == "DONE", 120, "segment done", 0.1)
    masks_mtime = {p.name: p.stat().st_mtime_ns for p in (folder / "masks").iterdir()}
    pid = case_stack.pid("case")
    case_stack.signal_program("case", "KILL")
    wait_for(lambda: case_stack.processes()["case"]["statename"] == "RUNNING"
             and case_stack.pid("case") != pid, 60, "supervisord to restart the case service")
    final = cases.wait(job.job_id)
    assert state_name(final.state) == "SUCCEEDED", final.error
    assert final.attempts == 2
    # The finished step was not run again, and the outputs equal the undisturbed run's.
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "masks").iterdir()} == masks_mtime
    got, want = digests(data_root, final), digests(data_root, reference)
    assert {n: got[n] for n in COMPARED} == {n: want[n] for n in COMPARED}


def test_cancel_stops_the_running_step(cases, case_stack):
    job = cases.submit(**refs("arterial", "portal", "delayed"))
    wait_for(lambda: cases.get(job.job_id).progress.fraction > 0.05, 60, "segment under way")
    asked = time.monotonic()
    cases.cancel(job.job_id)
    final = wait_for(lambda: (j := cases.get(job.job_id)).state == pb.CASE_STATE_CANCELLED and j, 10,
                     "CANCELLED")
    assert time.monotonic() - asked < 10
    assert step_states(final)["segment"] == "CANCELLED"
    # The downstream SegmentCase was cancelled: the device queue empties within seconds.
    with Client(case_stack.gateway) as client:
        wait_for(lambda: client.list_models().queue_depth == 0, 10, "nnunet queue to empty")
    with pytest.raises(grpc.RpcError) as err:  # a finished job cannot be cancelled
        cases.cancel(next(j.job_id for j in cases.list("succeeded")))
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert state_name(cases.cancel(job.job_id).state) == "CANCELLED"  # again: a no-op


def test_bad_inputs_are_refused_with_their_field(cases, phantom):
    with pytest.raises(grpc.RpcError) as err:
        cases.submit(delayed=Ref("cases_phantom/delayed.nii.gz"), tasks=["tumor", "vessels"])
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "portal" in err.value.details() and bad_request_field(err.value) == "portal"
    with pytest.raises(grpc.RpcError) as err:
        cases.submit()
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "missing" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        cases.submit(portal=Digest("ab" * 32))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    assert "sha256" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        cases.submit(portal=Ref("cases_phantom/nothing.nii.gz"))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    assert str(phantom[1]["portal"].parent) not in err.value.details()  # no server paths
    for call in (cases.get, cases.cancel, lambda i: list(cases.watch(i, reattach=False))):
        with pytest.raises(grpc.RpcError) as err:
            call("no-such-job")
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
    # An upload that is not a volume.
    with pytest.raises(grpc.RpcError) as err:
        cases.stub.UploadVolume(iter([pb.UploadVolumeRequest(data=b"not a nifti file" * 40)]), timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_a_failing_step_fails_the_job_and_keeps_earlier_outputs(cases, case_stack, data_root):
    supervisor = case_stack.supervisor().supervisor
    supervisor.stopProcess("services:smoothing", True)
    try:
        job = cases.submit(**refs("delayed"))  # default tasks: only ureter can run
        final = cases.wait(job.job_id)
    finally:
        supervisor.startProcess("services:smoothing", True)
        case_stack.wait_ready(120, say=lambda _line: None)
    assert state_name(final.state) == "FAILED"
    assert final.error.step == "mesh" and final.error.code == "UNAVAILABLE", final.error
    states = step_states(final)
    assert states["segment"] == "DONE" and states["cleanup"] == "DONE" and states["mesh"] == "FAILED"
    assert states["fat"] == "SKIPPED"  # no total task: no organ mask
    kept = {o.name for o in final.result.outputs}
    assert {"masks/ureter.nii.gz", "mask.nii.gz"} <= kept
    for out in final.result.outputs:
        assert (data_root / out.path).is_file()
    skipped = {s.task: s.reason for s in final.result.skipped}
    assert len(skipped) == 3
    assert all("portal" in reason for reason in skipped.values())


# --- two replicas on one Postgres ------------------------------------------------------------

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway Postgres 15 on a free loopback port (run as the postgres user when root)."""
    if not (PG_BIN / "initdb").exists():
        if os.environ.get("CI") == "true":
            pytest.fail("postgresql 15 is not installed (.ci/run installs it)")
        pytest.skip("postgresql 15 not installed (apt-get install -y postgresql)")
    from gateway_envoy.stack import free_ports

    base = Path(tempfile.mkdtemp(prefix="medseg-pg-"))
    base.chmod(0o755)
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    as_user = []
    if os.geteuid() == 0:  # initdb refuses root
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_ports(1)[0]
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)  # noqa: E731
    run(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "medseg", "--no-sync")
    run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "pg.log"), "-w", "-o",
        f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        yield f"postgresql+psycopg://medseg@127.0.0.1:{port}/postgres"
    finally:
        run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


def _replica(case_stack, url: str, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, **case_stack.environment(), "MEDSEG_CASE_DB_URL": url,
           "MEDSEG_CASE_PORT": str(port), "MEDSEG_GATEWAY": case_stack.gateway,
           "MEDSEG_CASE_LEASE_SECONDS": "3", "MEDSEG_CASE_WORKERS": "1",
           "MEDSEG_DRAIN_SECONDS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "case_svc.server"], env=env, cwd=Path(__file__).parents[2],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def test_two_replicas_on_postgres_split_the_queue_and_take_over(case_stack, postgres_url, phantom, tmp_path):
    from gateway_envoy.stack import free_ports

    ports = free_ports(2)
    procs = [_replica(case_stack, postgres_url, p, tmp_path / f"replica{i}.log") for i, p in enumerate(ports)]
    clients = [CaseClient(f"127.0.0.1:{p}") for p in ports]
    try:
        for client, proc, i in zip(clients, procs, range(2)):
            try:
                wait_for(lambda c=client: _serving(c), 60, "replica serving", 0.5)
            except AssertionError:
                raise AssertionError((tmp_path / f"replica{i}.log").read_text()[-3000:]) from None
        # Two jobs, submitted to one replica: each replica runs one (one worker each).
        jobs = [clients[0].submit(**refs("delayed")) for _ in range(2)]
        owners = wait_for(lambda: (o := {_owner(postgres_url, j.job_id) for j in jobs}) == {
            f"{socket.gethostname()}:{p}" for p in ports} and o, 60, "both replicas running a job")
        assert len(owners) == 2
        # SIGKILL the first replica: its job is taken over by the other once the lease expires.
        procs[0].kill()
        procs[0].wait(10)
        finals = [clients[1].wait(j.job_id) for j in jobs]
        print("\n" + (tmp_path / "replica1.log").read_text()[-2000:])
        assert [state_name(f.state) for f in finals] == ["SUCCEEDED", "SUCCEEDED"], [f.error for f in finals]
        assert max(f.attempts for f in finals) == 2
        assert {_owner(postgres_url, j.job_id) for j in jobs} == {f"{socket.gethostname()}:{ports[1]}"}
        assert finals[0].result.outputs[0].sha256 and \
            {o.name: o.sha256 for o in finals[0].result.outputs if o.name.startswith(("mask", "meshes"))} == \
            {o.name: o.sha256 for o in finals[1].result.outputs if o.name.startswith(("mask", "meshes"))}
    finally:
        for client in clients:
            client.close()
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _serving(client: CaseClient) -> bool:
    try:
        list(client.list(page_size=1))
        return True
    except grpc.RpcError:
        return False


def _owner(url: str, job_id: str) -> str | None:
    from case_svc.store import Store

    store = Store(url)
    try:
        return store.job(job_id)["owner"]
    finally:
        store.close()


def test_cli_run_detaches_on_ctrl_c_and_watch_reattaches(case_stack, phantom, tmp_path):
    """`medseg case run` uploads local files; Ctrl-C detaches (the job goes on) and says how
    to re-attach; `watch` follows it to the end; `fetch` brings the outputs."""
    import json
    import signal

    _case, files = phantom
    cli = [sys.executable, "-m", "medseg.cli", "--gateway", case_stack.gateway, "case"]
    run = subprocess.Popen(cli + ["run", "--portal", str(files["portal"]), "--delayed", str(files["delayed"]),
                                  "-o", str(tmp_path / "run")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_id = None
    for line in run.stderr:  # "job <id> submitted" comes once the upload and submit are done
        if line.startswith("job ") and "submitted" in line:
            job_id = line.split()[1]
            break
    assert job_id, "no job id printed"
    time.sleep(1.0)
    run.send_signal(signal.SIGINT)
    _out, err = run.communicate(timeout=30)
    assert run.returncode == 130
    assert f"medseg case watch {job_id}" in err
    watched = subprocess.run(cli + ["watch", job_id], capture_output=True, text=True, timeout=300)
    assert watched.returncode == 0, watched.stderr
    status = subprocess.run(cli + ["status", job_id, "--json"], capture_output=True, text=True, timeout=30)
    assert json.loads(status.stdout)["state"] == "CASE_STATE_SUCCEEDED"
    fetched = subprocess.run(cli + ["fetch", job_id, "-o", str(tmp_path / "fetched")],
                             capture_output=True, text=True, timeout=120)
    assert fetched.returncode == 0, fetched.stderr
    report = json.loads((tmp_path / "fetched" / "report.json").read_text())
    assert [s["task"] for s in report["skipped"]] == ["vessels"]  # no arterial phase given
    assert (tmp_path / "fetched" / "meshes" / "model.obj").exists()
