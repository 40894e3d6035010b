"""The phantom written as DICOM segments like its NIfTI (issue 13 Must show), through a real
nnunet server on loopback and the `medseg` command: the same mask (Dice 1 against the NIfTI
run, equal Dice against the truth), and `-o NAME.dcm` a SEG on the source series that reads
back equal to the NIfTI run's mask."""
from __future__ import annotations

import numpy as np
import pytest

from medseg.cli import main
from medseg.dicom import read_dicom
from medseg.dicom.seg import read_seg
from medseg.metrics import dice
from medseg.serving.config import ServerConfig
from medseg.volumes import read_volume
from tests.dicom_builders import oblique_direction, write_phantom_series


@pytest.fixture(scope="module")
def nnunet(tmp_path_factory):
    from nnunet_svc.registry import load_registry
    from nnunet_svc.server import create_server

    root = tmp_path_factory.mktemp("root")
    server, servicer = create_server(ServerConfig(service="nnunet", data_root=root, port=0, queue_capacity=2),
                                     load_registry())
    server.start()
    servicer.load(on_ready=lambda: server.set_serving(True))
    assert servicer.load_error is None, servicer.load_error
    yield f"127.0.0.1:{server.port}", root
    server.stop(drain_seconds=0, grace=0)



@pytest.mark.parametrize("oblique", [False, True])
def test_phantom_as_dicom_segments_like_its_nifti(nnunet, tmp_path, oblique, capsys):
    case, volume, _ = write_phantom_series(tmp_path / "CD" / "SE1", size=(64, 64, 40), seed=11,
                                           direction=oblique_direction() if oblique else None)
    case.write(tmp_path / "nifti")
    common = ["--quiet", "--gateway", nnunet[0], "--timeout", "600", "segment", "tumor"]
    assert main(common + [str(tmp_path / "nifti" / "portal.nii.gz"), "-o", str(tmp_path / "from_nifti.nii.gz")]) == 0
    assert main(common + [str(tmp_path / "CD"), "-o", str(tmp_path / "from_dicom.dcm")]) == 0
    capsys.readouterr()
    from_nifti = read_volume(tmp_path / "from_nifti.nii.gz")
    from_dicom = read_seg(tmp_path / "from_dicom.dcm", read_dicom(tmp_path / "CD"))  # on the series' grid
    assert from_dicom.same_grid(from_nifti, tol=1e-4)
    truth = case.labels.array
    for value in (1, 2):
        assert dice(from_dicom.array == value, from_nifti.array == value) == 1.0
        assert dice(from_dicom.array == value, truth == value) == dice(from_nifti.array == value, truth == value)
    assert dice(from_dicom.array == 1, truth == 1) > 0.8
    assert from_dicom.labels == {0: "background", 1: "kidney", 2: "tumor"}


def test_by_reference_the_contract_chooses_the_series(nnunet, capsys):
    """DicomSelection.series_uids in the request: a folder with two series is refused on that
    field, listing them, and read once one is named."""
    import grpc
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    from medseg.client import Client, DicomReading, Ref

    address, root = nnunet
    _, arterial, _ = write_phantom_series(root / "study" / "a", size=(48, 48, 32), seed=12, description="arterial")
    _, portal, files = write_phantom_series(root / "study" / "p", size=(48, 48, 32), seed=12, description="portal")
    import shutil

    shutil.copy(files[3], root / "study" / "p" / "resent.dcm")  # the same slice sent twice: dropped, noted
    uids = {read_dicom(root / "study" / name).series.description: read_dicom(root / "study" / name).series.uid
            for name in ("a", "p")}
    with Client(address, timeout=600) as client, pytest.raises(grpc.RpcError) as err:
        client.segment_tumor(Ref("study"), inline=True)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "holds 2 series" in err.value.details() and uids["portal"] in err.value.details()
    info = error_details_pb2.BadRequest()
    assert rpc_status.from_call(err.value).details[0].Unpack(info)
    assert info.field_violations[0].field == "params.dicom.series_uids"
    with Client(address, timeout=600, dicom=DicomReading(series_uids=(uids["portal"],))) as client:
        out = client.segment_tumor(Ref("study"), inline=True)
    assert out.volumes["tumor"].same_grid(portal, tol=1e-4)
    assert out.result.info.received[0].path == "study"
    assert list(out.result.info.notes) == ["'study': 1 duplicate slice(s) dropped (same position and pixels): "
                                           "resent.dcm"]
    # OutputOptions: a .dcm path (or format DICOM_SEG) is written by the server as a SEG on that series
    from medseg.volume.v1 import volume_pb2 as vpb

    with Client(address, timeout=600, dicom=DicomReading(series_uids=(uids["portal"],))) as client:
        by_path = client.segment_tumor(Ref("study"), output="out/tumor.dcm")
    assert by_path.result.outputs[0].path == "out/tumor.dcm"
    portal_read = read_dicom(root / "study" / "p")
    seg = read_seg(root / "out" / "tumor.dcm", portal_read)
    assert np.array_equal(seg.array, out.volumes["tumor"].array)
    import pydicom

    written = pydicom.dcmread(root / "out" / "tumor.dcm")
    assert written.ReferencedSeriesSequence[0].SeriesInstanceUID == uids["portal"]
    assert written.StudyInstanceUID == portal_read.series.study_uid
    sent = {d.path: d.sha256 for d in by_path.result.info.sent}
    import hashlib

    assert sent["out/tumor.dcm"] == hashlib.sha256((root / "out" / "tumor.dcm").read_bytes()).hexdigest()
    # the explicit option: a name without .dcm, format DICOM_SEG, in a raw request
    from medseg.nnunet.v1 import nnunet_pb2 as nn

    params = nn.SegmentTumorParams(ct_path="study", dicom=vpb.DicomSelection(series_uids=[uids["portal"]]),
                                   output=vpb.OutputOptions(path="out/tumor_seg", format=vpb.OUTPUT_FORMAT_DICOM_SEG))
    with Client(address, timeout=600) as client:
        replies = list(client.nnunet.SegmentTumor(iter([nn.SegmentTumorRequest(params=params)]), timeout=600))
    assert replies[-1].result.outputs[0].path == "out/tumor_seg"
    assert np.array_equal(read_seg(root / "out" / "tumor_seg", portal_read).array, out.volumes["tumor"].array)
