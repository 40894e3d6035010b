"""Client-side reading (issue 13 item 3): every unreadable local input of the issue's list
exits 1 with the file and the reason before any stream opens (the gateway is 127.0.0.1:1,
where nothing listens: a call would be exit 2 UNAVAILABLE). Inputs that are readable now
(enhanced multi-frame, a chosen series) get as far as the call."""
from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medseg.cli import main
from tests.dicom_builders import phantom_volume, stack_of

NOWHERE = "127.0.0.1:1"


def _bad_inputs(root):
    """name -> (path, words the message must hold)."""
    cases = {}
    cases["typo'd path"] = (root / "protal.nii.gz", ["no such file or folder"])
    four_d = root / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.int16), np.eye(4)), four_d)
    cases["4D file"] = (four_d, ["expected a 3D image, got 4D"])
    nifti2 = root / "n2.nii.gz"
    nib.save(nib.Nifti2Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), nifti2)
    cases["NIfTI-2"] = (nifti2, ["NIfTI-2", "NIfTI-1"])
    mgz = root / "brain.mgz"
    nib.save(nib.MGHImage(np.zeros((8, 8, 8), np.int32), np.eye(4)), mgz)
    cases[".mgz"] = (mgz, ["MGH/MGZ is not supported", "NIfTI"])
    (root / "empty").mkdir()
    cases["empty folder"] = (root / "empty", ["holds no files"])
    (root / "cd" / "DICOM" / "ST000").mkdir(parents=True)
    (root / "cd" / "DICOM" / "ST000" / "NOTES.TXT").write_text("x")
    cases["nested folder without images"] = (root / "cd", ["holds no DICOM series"])
    files = stack_of("CT_small.dcm", root / "sizes", n=4)
    ds = pydicom.dcmread(files[3])
    ds.PixelData, ds.Rows = ds.pixel_array[:64].tobytes(), 64
    ds.save_as(files[3])
    cases["mixed slice sizes"] = (root / "sizes", ["different sizes"])
    stack_of("CT_small.dcm", root / "two", n=3, description="arterial")
    stack_of("CT_small.dcm", root / "two", n=3, description="portal", start=50)
    cases["two series, no --series"] = (root / "two", ["holds 2 series", "--series UID", "'arterial'", "'portal'"])
    stack_of("CT_small.dcm", root / "gap", n=10, skip=(4, 5))
    cases["gap"] = (root / "gap", ["gap of 15.0 mm", "about 2 slice(s) missing"])
    stack_of("MR_small.dcm", root / "mr", n=4)
    cases["MR series"] = (root / "mr", ["modality MR, not CT"])
    files = stack_of("CT_small.dcm", root / "dup", n=4)
    ds = pydicom.dcmread(files[1])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.PixelData = (ds.pixel_array + 7).tobytes()
    ds.save_as(root / "dup" / "conflict")
    cases["conflicting duplicate"] = (root / "dup", ["same position", "different pixels"])
    files = stack_of("CT_small.dcm", root / "scouts", n=2)
    for path, orientation in zip(files, ([1, 0, 0, 0, 0, -1], [0, 1, 0, 0, 0, -1])):
        ds = pydicom.dcmread(path)
        ds.ImageType, ds.ImageOrientationPatient = ["ORIGINAL", "PRIMARY", "LOCALIZER"], orientation
        ds.save_as(path)
    cases["two perpendicular scouts"] = (root / "scouts", ["only localizer"])
    return cases


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    return _bad_inputs(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("case", ["typo'd path", "4D file", "NIfTI-2", ".mgz", "empty folder",
                                  "nested folder without images", "mixed slice sizes", "two series, no --series",
                                  "gap", "MR series", "conflicting duplicate", "two perpendicular scouts"])
def test_unreadable_local_input_exits_1_with_file_and_reason(bad_inputs, case, capsys, tmp_path):
    path, words = bad_inputs[case]
    target = tmp_path / "mask.nii.gz"
    assert main(["--quiet", "--gateway", NOWHERE, "segment", "total", str(path), "-o", str(target)]) == 1
    err = capsys.readouterr().err
    assert f"cannot read ct '{path}'" in err, err
    for word in words:
        assert word in err, (word, err)
    assert "UNAVAILABLE" not in err and "UNKNOWN" not in err and "Exception iterating" not in err
    assert not target.exists()


def test_every_case_in_a_subprocess_is_exit_1_never_an_abort(bad_inputs, tmp_path):
    """One interpreter per input: an abort (134) or a crash would show here, not in-process."""
    script = ("import sys; from medseg.cli import main\n"
              "codes = [main(['--quiet', '--gateway', '%s', 'segment', 'tumor', p]) for p in sys.argv[1:]]\n"
              "print(codes)\n" % NOWHERE)
    paths = [str(p) for p, _ in bad_inputs.values()]
    result = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str([1] * len(paths)), result.stdout + result.stderr
    single = subprocess.run([sys.executable, "-m", "medseg.cli", "--quiet", "--gateway", NOWHERE, "segment",
                             "total", paths[1]], capture_output=True, text=True, timeout=60)
    assert single.returncode == 1 and "got 4D" in single.stderr, single.stderr


def test_series_option_chooses_and_the_read_gets_to_the_call(bad_inputs, capsys):
    path, _ = bad_inputs["two series, no --series"]
    uids = sorted({str(pydicom.dcmread(p).SeriesInstanceUID) for p in path.iterdir()})
    assert main(["--quiet", "--gateway", NOWHERE, "--timeout", "2", "segment", "total", str(path),
                 "--series", uids[0], "--allow-non-ct"]) == 2
    assert "UNAVAILABLE" in capsys.readouterr().err  # read fine; only the call failed


def test_enhanced_multiframe_folder_is_read_now(tmp_path, capsys):
    import highdicom as hd
    from pydicom.uid import generate_uid

    from medseg.dicom.write import series_datasets

    _, volume = phantom_volume(size=(24, 24, 8))
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(series_datasets(volume), series_instance_uid=generate_uid(),
                                                        series_number=1, sop_instance_uid=generate_uid(),
                                                        instance_number=1)
    (tmp_path / "mf").mkdir()
    enhanced.save_as(tmp_path / "mf" / "ct.dcm")
    assert main(["--quiet", "--gateway", NOWHERE, "--timeout", "2", "segment", "total", str(tmp_path / "mf")]) == 2
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_notes_are_printed(tmp_path, capsys):
    files = stack_of("CT_small.dcm", tmp_path / "s", n=4)
    import shutil

    shutil.copy(files[1], tmp_path / "s" / "again")
    assert main(["--quiet", "--gateway", NOWHERE, "--timeout", "2", "segment", "total", str(tmp_path / "s")]) == 2
    assert "note: ct '" in capsys.readouterr().err



# --- by reference: the same QC through a real server, as INVALID_ARGUMENT on the path field -------

@pytest.fixture(scope="module")
def postprocess(tmp_path_factory):
    from medseg.serving.config import ServerConfig
    from postprocess_svc.server import create_server

    root = tmp_path_factory.mktemp("root")
    server = create_server(ServerConfig(service="postprocess", data_root=root, port=0)).start()
    server.set_serving(True)
    yield f"127.0.0.1:{server.port}", root
    server.stop(drain_seconds=0, grace=0)


@pytest.mark.parametrize("case, words", [("gap", ["gap of 15.0 mm", "about 2 slice(s) missing"]),
                                         ("two", ["holds 2 series", "'arterial'", "'portal'"]),
                                         ("mr", ["modality MR, not CT"])])
def test_by_reference_the_same_rules_answer_invalid_argument(postprocess, case, words):
    import grpc
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    from medseg.client import Client, Ref

    address, root = postprocess
    folder = root / "study" / case
    if case == "gap":
        stack_of("CT_small.dcm", folder, n=10, skip=(4, 5))
    elif case == "two":
        stack_of("CT_small.dcm", folder, n=3, description="arterial")
        stack_of("CT_small.dcm", folder, n=3, description="portal", start=50)
    else:
        stack_of("MR_small.dcm", folder, n=4)
    with Client(address, timeout=30) as client, pytest.raises(grpc.RpcError) as err:
        client.measure(Ref(f"study/{case}"))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    message = err.value.details()
    assert message.startswith(f"params.mask_path: 'study/{case}': "), message
    for word in words:
        assert word in message, message
    assert str(root) not in message
    [detail] = rpc_status.from_call(err.value).details
    info = error_details_pb2.BadRequest()
    assert detail.Unpack(info) and info.field_violations[0].field == "params.mask_path"
