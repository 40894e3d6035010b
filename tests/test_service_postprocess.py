"""PostprocessService over real gRPC: each operation inline and by reference, bad inputs get
their status and the server keeps serving."""
import grpc
import numpy as np
import pytest

from medseg.client import Client, Ref
from medseg.labels import Label
from medseg.phantom import make_phantom
from medseg.serving.config import ServerConfig
from medseg.volumes import Volume
from postprocess_svc.server import create_server


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("root")


@pytest.fixture(scope="module")
def client(root):
    server = create_server(ServerConfig(service="postprocess", data_root=root, port=0)).start()
    server.set_serving(True)
    with Client(f"127.0.0.1:{server.port}", timeout=300) as c:
        yield c
    server.stop(drain_seconds=0, grace=0)


@pytest.fixture(scope="module")
def case(root):
    phantom = make_phantom(size=(96, 96, 64), seed=11)
    phantom.write(root / "case")
    return phantom


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_add_fat_inline_and_by_ref_agree(client, case):
    no_fat = case.labels.with_array(np.where(case.labels.array == Label.FAT, 0, case.labels.array))
    inline = client.add_fat(no_fat, case.organs, case.phases["portal"], inline=True)
    by_ref = client.add_fat(Ref("case/labels.nii.gz"), Ref("case/organs.nii.gz"), Ref("case/portal.nii.gz"),
                            output="case/fat.nii.gz", inline=True)
    assert inline.result.used_ct and by_ref.result.used_ct
    assert by_ref.result.output.path == "case/fat.nii.gz"
    fat_inline = inline.volumes["mask"].array == Label.FAT
    assert fat_inline.any()
    # The input's own fat does not change what is added around the kidneys.
    assert inline.result.fat_volume_ml == pytest.approx(by_ref.result.fat_volume_ml, rel=0.25)
    assert [d.role for d in inline.result.info.received] == ["mask", "organs", "ct"]


def test_add_fat_without_ct_says_so(client, case):
    out = client.add_fat(case.labels, case.organs, inline=True)
    assert not out.result.used_ct
    assert "CT" in out.result.note


def test_bad_inputs_get_clear_statuses_and_the_server_stays_up(client, case):
    empty = case.labels.with_array(np.zeros_like(case.labels.array))
    code, details = _code(lambda: client.add_fat(empty, case.organs))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "kidney" in details
    odd = case.labels.with_array(np.where(case.labels.array == Label.FAT, 42, case.labels.array).astype(np.uint8))
    code, details = _code(lambda: client.connect_vessels(odd))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "42" in details
    shifted = Volume(case.phases["portal"].array, case.labels.spacing,
                     tuple(o + 5 for o in case.labels.origin), case.labels.direction)
    code, details = _code(lambda: client.add_fat(case.labels, case.organs, shifted))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and ("grid" in details.lower() or "origin" in details)
    code, details = _code(lambda: client.connect_ureters(case.labels, limits={"max_gap_mm": -1}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_gap_mm" in details
    code, details = _code(lambda: client.add_fat(case.labels, case.organs, hu_min=0, hu_max=-10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "hu_min" in details
    float_mask = case.labels.with_array(case.labels.array.astype(np.float32))
    code, details = _code(lambda: client.measure(float_mask))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "float32" in details
    # Still serving.
    assert client.measure(case.labels).result.labels


def test_measure_inline_matches_ground_truth(client, case):
    out = client.measure(case.labels)
    counts = dict(zip(*np.unique(case.labels.array, return_counts=True)))
    assert {m.value: m.voxel_count for m in out.result.labels} == {int(v): int(c) for v, c in counts.items() if v}


def test_measure_with_tumor_facts_over_grpc(client, case):
    out = client.measure(case.labels, tumor_facts=True)
    (tumor,) = out.result.tumors
    truth = case.anatomy["tumor"]
    assert tumor.side == truth["side"]
    assert abs(tumor.max_diameter_mm - 2 * truth["radius_mm"]) < 3 * max(case.labels.spacing)
    assert tumor.renal.radius in (1, 2, 3) and tumor.renal.anterior in ("a", "p", "x")
    assert tumor.HasField("exophytic_fraction") and 0 <= tumor.exophytic_fraction <= 1
    assert not client.measure(case.labels).result.tumors  # only when asked


def test_connect_vessels_and_ureters_report_what_they_did(client, case):
    cut = case.labels.array.copy()
    artery_z = np.nonzero(cut == Label.ARTERY)[0]
    z = int(np.median(artery_z))
    cut[z:z + 2][cut[z:z + 2] == Label.ARTERY] = 0  # a ~5 mm gap across the aorta
    out = client.connect_vessels(case.labels.with_array(cut), inline=True)
    report = out.result.report
    assert report.backend == "scipy"
    assert report.pieces_after <= report.pieces_before
    out = client.connect_ureters(Ref("case/labels.nii.gz"), output="case/ureters.nii.gz")
    assert out.result.output.path == "case/ureters.nii.gz"


def test_sample_from_template_keeps_patient_kidney_and_tumor(client, case):
    kidney_tumor = np.where(np.isin(case.labels.array, [Label.KIDNEY, Label.TUMOR]), case.labels.array, 0)
    out = client.sample_from_template(case.labels.with_array(kidney_tumor.astype(np.uint8)), inline=True)
    result = out.volumes["mask"].array
    for label in (Label.KIDNEY, Label.TUMOR):
        assert np.array_equal(result == label, kidney_tumor == label)
    assert out.result.fit.kidney_dice_after >= out.result.fit.kidney_dice_before
    assert {Label.ARTERY, Label.VEIN, Label.URETER} <= set(np.unique(result).tolist())
