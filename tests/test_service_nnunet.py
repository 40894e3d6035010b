"""NnUNetService over real gRPC with the committed demo models: every operation inline and
by reference, SegmentCase reading each phase once, geometry kept, bad inputs, a full queue
and a cancelled queued call."""
import threading
import time

import grpc
import numpy as np
import pytest

from medseg.client import Client, Ref
from medseg.nnunet.v1 import nnunet_pb2 as nn
from medseg.phantom import make_phantom
from medseg.serving.config import ServerConfig
from medseg.volumes import Volume
from nnunet_svc.registry import load_registry

pytestmark = pytest.mark.slow

SIZE = (96, 96, 64)


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("root")


@pytest.fixture(scope="module")
def service(root, registry):
    from nnunet_svc.server import create_server

    server, servicer = create_server(ServerConfig(service="nnunet", data_root=root, port=0,
                                                  queue_capacity=2), registry)
    server.start()
    servicer.load(on_ready=lambda: server.set_serving(True))
    assert servicer.load_error is None, servicer.load_error
    yield server, servicer
    server.stop(drain_seconds=0, grace=0)


@pytest.fixture(scope="module")
def client(service):
    server, _ = service
    with Client(f"127.0.0.1:{server.port}", timeout=600) as c:
        yield c


@pytest.fixture(scope="module")
def case(root):
    phantom = make_phantom(size=SIZE, seed=4242)
    phantom.write(root / "case")
    return phantom


def _same_geometry(a: Volume, b: Volume) -> bool:
    return a.array.shape == b.array.shape and a.spacing == b.spacing and a.origin == b.origin \
        and a.direction == b.direction


def test_list_models_reports_every_task_ready(client, registry):
    reply = client.list_models()
    assert reply.device == "cpu" or reply.device.startswith("cuda")
    tasks = {nn.Task.Name(m.task): m for m in reply.models}
    assert set(tasks) == {"TASK_TOTAL", "TASK_VESSELS", "TASK_URETER", "TASK_TUMOR"}
    assert all(m.ready for m in reply.models)
    assert list(tasks["TASK_VESSELS"].phases) == registry["vessels"].phases
    assert reply.queue_capacity == 2
    # Each task names its weights: version per results folder, one digest over them.
    assert [v.split(" ")[0] for v in tasks["TASK_VESSELS"].model_versions] == [
        f"{m.folder.parent.name}/{m.folder.name}" for m in registry["vessels"].models]
    assert all(len(m.digest) == 64 for m in reply.models)
    # Each model's training spacing, x, y, z, as nnU-Net's own plans manager reads it.
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    for info in reply.models:
        for model, spacing in zip(registry[info.name].models, info.training_spacings, strict=True):
            plans = PlansManager(str(model.folder / "plans.json"))
            zyx = [plans.get_configuration("3d_fullres").spacing[i] for i in plans.transpose_backward]
            assert (spacing.x_mm, spacing.y_mm, spacing.z_mm) == pytest.approx(zyx[::-1])
    assert len({m.digest for m in reply.models}) == 4  # different weights, different digests
    # What each inference mode runs, from the registry.
    vessels = tasks["TASK_VESSELS"]
    assert vessels.accurate.tile_step_size == pytest.approx(registry["vessels"].tile_step_size)
    assert vessels.fast.tile_step_size == pytest.approx(registry["vessels"].fast.tile_step_size)
    assert vessels.fast.max_folds == registry["vessels"].fast.max_folds


def test_fast_mode_through_the_service(client, case):
    accurate = client.segment_tumor(case.phases["portal"], inline=True).volumes["tumor"]
    fast = client.segment_tumor(case.phases["portal"], inline=True, mode="fast").volumes["tumor"]
    assert fast.array.shape == accurate.array.shape
    kidney = (accurate.array == 1), (fast.array == 1)
    assert 2 * np.logical_and(*kidney).sum() / (kidney[0].sum() + kidney[1].sum()) > 0.9


@pytest.mark.parametrize("task", ["total", "tumor", "ureter", "vessels"])
def test_single_operations_inline_and_by_ref(client, case, task, registry):
    phase_of = {"total": ["portal"], "tumor": ["portal"], "ureter": ["delayed"], "vessels": ["arterial", "portal"]}
    method = {"total": client.segment_total, "tumor": client.segment_tumor,
              "ureter": client.segment_ureter, "vessels": client.segment_vessels}[task]
    inline = method(*[case.phases[p] for p in phase_of[task]], inline=True)
    mask = inline.volumes[task]
    assert _same_geometry(mask, case.phases[phase_of[task][0]])
    assert mask.labels == registry[task].labels
    assert set(np.unique(mask.array)) - {0}, f"{task} found nothing"
    by_ref = method(*[Ref(f"case/{p}.nii.gz") for p in phase_of[task]], output=f"out/{task}.nii.gz")
    assert by_ref.result.outputs[0].path == f"out/{task}.nii.gz"
    # Same image, same model: the same mask whichever way the image travelled.
    assert [(l.value, l.voxel_count) for l in by_ref.result.outputs[0].labels] == \
           [(l.value, l.voxel_count) for l in inline.result.outputs[0].labels]


def test_segment_case_reads_each_phase_once(client, case, root):
    out = client.segment_case(["total", "vessels", "ureter", "tumor"], arterial=Ref("case/arterial.nii.gz"),
                              portal=Ref("case/portal.nii.gz"), delayed=Ref("case/delayed.nii.gz"),
                              output_dir="case/all")
    reads = [d.path for d in out.result.info.received]
    assert sorted(reads) == ["case/arterial.nii.gz", "case/delayed.nii.gz", "case/portal.nii.gz"]
    assert sorted(o.role for o in out.result.outputs) == ["total", "tumor", "ureter", "vessels"]
    for output in out.result.outputs:
        assert (root / output.path).exists()


def test_bad_inputs_get_clear_statuses(client, case):
    def code_of(call):
        with pytest.raises(grpc.RpcError) as info:
            call()
        return info.value.code(), info.value.details()

    code, details = code_of(lambda: client.segment_vessels(case.phases["arterial"], None))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "portal" in details
    far = case.phases["portal"]
    far = Volume(far.array, far.spacing, tuple(o + 5000 for o in far.origin), far.direction)
    code, details = code_of(lambda: client.segment_vessels(case.phases["arterial"], far))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "overlap" in details
    flat = Volume(case.phases["portal"].array[:1], case.phases["portal"].spacing)
    code, details = code_of(lambda: client.segment_tumor(flat))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a 3D image" in details
    requests = iter([nn.SegmentCaseRequest(params=nn.SegmentCaseParams(tasks=[99]))])
    code, details = code_of(lambda: list(client.nnunet.SegmentCase(requests, timeout=30)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "task" in details
    code, details = code_of(lambda: client.segment_case([]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at least one task" in details
    requests = iter([nn.SegmentTumorRequest(params=nn.SegmentTumorParams(ct_path="x.nii.gz", mode=7))])
    code, details = code_of(lambda: list(client.nnunet.SegmentTumor(requests, timeout=30)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "inference mode 7" in details
    assert client.list_models().models  # still serving


def test_image_over_the_limit_is_refused(root, registry, case):
    from nnunet_svc.server import create_server

    server, _ = create_server(ServerConfig(service="nnunet", data_root=root, port=0,
                                           max_volume_bytes=1000), registry)
    server.start()
    try:
        with Client(f"127.0.0.1:{server.port}", timeout=30) as client:
            with pytest.raises(grpc.RpcError) as info:
                client.segment_tumor(case.phases["portal"])
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit" in info.value.details()
            # Models not loaded on this server: UNAVAILABLE, retryable.
            with pytest.raises(grpc.RpcError) as info:
                client.segment_tumor(Volume(np.zeros((4, 4, 4), np.int16)))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(drain_seconds=0, grace=0)


def test_full_queue_and_cancelled_queued_call(client, case, service):
    _, servicer = service
    busy = threading.Thread(target=lambda: client.segment_case(
        ["total", "vessels", "ureter", "tumor"], arterial=case.phases["arterial"],
        portal=case.phases["portal"], delayed=case.phases["delayed"], inline=True))
    busy.start()
    try:
        _wait(lambda: servicer.queue.depth == 1)
        queued = client.nnunet.SegmentTumor(iter(
            [nn.SegmentTumorRequest(params=nn.SegmentTumorParams(ct_path="case/portal.nii.gz"))]), timeout=600)
        _wait(lambda: servicer.queue.depth == 2)
        with pytest.raises(grpc.RpcError) as info:
            client.segment_tumor(Ref("case/portal.nii.gz"))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        queued.cancel()  # a queued call that is cancelled leaves the queue at once
        _wait(lambda: servicer.queue.depth == 1)
    finally:
        busy.join()
    assert client.segment_tumor(Ref("case/portal.nii.gz")).result.outputs


def _wait(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)
