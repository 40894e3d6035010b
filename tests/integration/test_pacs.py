"""A PACS round trip with a real Orthanc (issue 13 item 6): Debian's Orthanc 1.10 with its
DICOMweb plugin (orthanc-dicomweb), started on loopback with a temporary configuration (HTTP
and DICOM on free ports, remote access off, basic authentication, storage in tmp) and stopped
at the end. A phantom study (three contrast phases and a scout) is stored into it; then
`medseg case run --pacs URL --study UID` pulls it over QIDO-RS/WADO-RS, assigns the phases,
runs the case job through the real stack, and stores the DICOM-SEG back with STOW-RS; the SEG
is found under the same study, references the portal series, and equals the job's mask."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests import tools

pytestmark = pytest.mark.integration

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
USER, PASSWORD = "medseg", "pw-" + os.urandom(6).hex()  # the secret must show up nowhere
SIZE, SPACING = (96, 80, 80), (3.0, 3.0, 3.0)  # the case tests' phantom: a job in ~50 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if not (Path(ORTHANC).exists() and Path(DICOMWEB_PLUGIN).exists()):
        tools.missing("Debian packages orthanc and orthanc-dicomweb (apt-get install orthanc orthanc-dicomweb)")
    root = tmp_path_factory.mktemp("orthanc")
    http, dicom = _free_port(), _free_port()
    config = {
        "Name": "medseg-test", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
        "HttpPort": http, "DicomPort": dicom, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
        "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False, "DicomCheckCalledAet": True,
        "Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": "127.0.0.1"},
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log = (root / "orthanc.log").open("w")
    process = subprocess.Popen([ORTHANC, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                               cwd=root)
    url = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (root / "orthanc.log").read_text()[-2000:]
            try:
                if requests.get(f"{url}/system", auth=(USER, PASSWORD), timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "Orthanc did not answer within 60 s"
            time.sleep(0.2)
        assert requests.get(f"{url}/system", timeout=5).status_code == 401  # authentication is on
        yield {"url": url, "dicomweb": f"{url}/dicom-web", "log": root / "orthanc.log", "root": root}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def study(orthanc, tmp_path_factory):
    """A phantom study stored into Orthanc: arterial, portal, delayed and a scout."""
    from pydicom.uid import generate_uid

    from medseg.dicom.web import PacsAuth, store
    from medseg.dicom.write import write_series
    from medseg.phantom import make_phantom
    from medseg.volumes import Volume

    folder = tmp_path_factory.mktemp("study")
    case = make_phantom(size=SIZE, spacing=SPACING, seed=1234)
    study_uid, frame_of_reference = generate_uid(), generate_uid()
    uids, files = {}, []
    for number, (phase, description, time_of) in enumerate(
            [("arterial", "Abdomen arterial 3.0", "120130"), ("portal", "Abdomen portal venous 3.0", "120210"),
             ("delayed", "Abdomen delayed excretory 3.0", "120800")], start=2):
        uids[phase] = generate_uid()
        files += write_series(case.phases[phase], folder / phase, study_uid=study_uid, series_uid=uids[phase],
                              frame_of_reference_uid=frame_of_reference, description=description,
                              series_number=number, contrast="IOHEXOL 350", acquisition_time=time_of)
    portal = case.phases["portal"]
    scout = Volume(portal.array[:2].copy(), spacing=portal.spacing, origin=portal.origin, direction=portal.direction)
    uids["scout"] = generate_uid()
    files += write_series(scout, folder / "scout", study_uid=study_uid, series_uid=uids["scout"],
                          description="Topogram 0.6",
                          series_number=1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    stored = store(orthanc["dicomweb"], files, PacsAuth("basic", USER, PASSWORD))
    assert len(stored) == len(files)
    return {"uid": study_uid, "series": uids, "case": case, "folder": folder}


def _medseg(args, env_extra, timeout=900):
    env = {k: v for k, v in {**os.environ, **env_extra}.items() if v is not None}
    return subprocess.run([sys.executable, "-m", "medseg.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_wrong_password_is_a_clear_error_and_never_shown(orthanc, study, tmp_path):
    wrong = "not-" + PASSWORD
    result = _medseg(["--quiet", "--gateway", "127.0.0.1:1", "case", "run", "--pacs", orthanc["dicomweb"],
                      "--study", study["uid"], "--pacs-user", USER, "-o", str(tmp_path / "out")],
                     {"MEDSEG_PACS_PASSWORD": wrong}, timeout=120)
    assert result.returncode != 0
    assert "HTTP 401" in result.stderr and "authentication failed" in result.stderr, result.stderr
    assert wrong not in result.stdout + result.stderr
    missing = _medseg(["--quiet", "case", "run", "--pacs", orthanc["dicomweb"], "--study", study["uid"],
                       "--pacs-user", USER], {"MEDSEG_PACS_PASSWORD": None}, timeout=60)
    assert missing.returncode != 0 and "MEDSEG_PACS_PASSWORD" in missing.stderr, missing.stderr


def test_case_run_pulls_the_study_and_stores_the_seg_back(orthanc, study, case_stack, tmp_path):
    import highdicom as hd
    from dicomweb_client.api import DICOMwebClient

    from medseg.dicom import read_dicom
    from medseg.dicom.seg import read_seg
    from medseg.dicom.web import PacsAuth, series_of_study
    from medseg.volumes import read_volume

    out = tmp_path / "out"
    started = time.monotonic()
    result = _medseg(["--quiet", "--gateway", case_stack.gateway, "--timeout", "600", "case", "run",
                      "--pacs", orthanc["dicomweb"], "--study", study["uid"], "--pacs-user", USER,
                      "-o", str(out)], {"MEDSEG_PACS_PASSWORD": PASSWORD})
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"\nPACS round trip: {seconds:.1f} s\n{result.stdout}")
    # phases: by description, the scout left out
    for phase in ("arterial", "portal", "delayed"):
        assert f"phase {phase}: {study['series'][phase]} " in result.stdout and "(description)" in result.stdout
    assert f"phase left out: {study['series']['scout']} 'Topogram 0.6' (localizer)" in result.stdout
    # the secret is nowhere: not printed, not in the stack's or Orthanc's logs
    assert PASSWORD not in result.stdout + result.stderr
    for log in list(Path(case_stack.run_dir).rglob("*.log")) + [orthanc["log"]]:
        assert PASSWORD not in log.read_text(errors="replace"), log
    # the SEG is in the same study, on the PACS
    auth = PacsAuth("basic", USER, PASSWORD)
    series = series_of_study(orthanc["dicomweb"], study["uid"], auth)
    segs = [s for s in series if s["modality"] == "SEG"]
    assert len(segs) == 1, series
    client = DICOMwebClient(url=orthanc["dicomweb"], session=_session())
    [instance] = client.retrieve_series(study["uid"], segs[0]["uid"])
    instance.save_as(tmp_path / "from_pacs.dcm")
    seg = hd.seg.segread(tmp_path / "from_pacs.dcm")
    assert seg.StudyInstanceUID == study["uid"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study["series"]["portal"]
    assert seg.FrameOfReferenceUID == read_dicom(study["folder"] / "portal").series.headers[0].FrameOfReferenceUID
    # voxel for voxel the job's mask, on the portal series
    portal = read_dicom(study["folder"] / "portal")
    back = read_seg(tmp_path / "from_pacs.dcm", portal)
    mask = read_volume(out / "mask.nii.gz")
    assert back.same_grid(mask, tol=1e-4) and np.array_equal(back.array, mask.array)
    assert {"kidney", "tumor"} <= set(back.labels.values())
    assert (out / "mask.dcm").exists() and (out / "report.json").exists()
    # the fetched masks keep their tables: measured by name without --labels
    total = read_volume(out / "masks" / "total.nii.gz")
    assert total.labels and "spleen" in total.labels.values()
    assert read_volume(out / "mask.nii.gz").labels[1] == "kidney"
    measured = _medseg(["--quiet", "--gateway", case_stack.gateway, "measure", str(out / "masks" / "total.nii.gz")],
                       {})
    assert measured.returncode == 0 and "spleen" in measured.stdout, measured.stdout + measured.stderr


def test_single_task_from_a_dicomweb_url_stores_its_seg(orthanc, study, case_stack, tmp_path):
    import pydicom

    from medseg.dicom import read_dicom
    from medseg.dicom.seg import read_seg
    from medseg.dicom.web import PacsAuth, series_of_study

    auth = PacsAuth("basic", USER, PASSWORD)
    before = {s["uid"] for s in series_of_study(orthanc["dicomweb"], study["uid"], auth) if s["modality"] == "SEG"}
    url = f"{orthanc['dicomweb']}/studies/{study['uid']}/series/{study['series']['portal']}"
    result = _medseg(["--quiet", "--gateway", case_stack.gateway, "--timeout", "600", "segment", "tumor", url,
                      "--pacs-user", USER, "-o", str(tmp_path / "tumor.dcm"), "--store"],
                     {"MEDSEG_PACS_PASSWORD": PASSWORD})
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"stored in the PACS study {study['uid']}" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    after = [s for s in series_of_study(orthanc["dicomweb"], study["uid"], auth)
             if s["modality"] == "SEG" and s["uid"] not in before]
    assert len(after) == 1
    local = pydicom.dcmread(tmp_path / "tumor.dcm")
    assert after[0]["uid"] == local.SeriesInstanceUID
    assert local.ReferencedSeriesSequence[0].SeriesInstanceUID == study["series"]["portal"]
    back = read_seg(tmp_path / "tumor.dcm", read_dicom(study["folder"] / "portal"))
    assert {"kidney"} <= set(back.labels.values()) and (back.array == 1).any()


def _session():
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    return session


@pytest.fixture(scope="module")
def case_stack(stack):
    for needed in ("case", "nnunet", "smoothing", "postprocess"):
        if needed not in stack.services:
            if tools.in_ci():
                pytest.fail(f"{needed} not started in this session")
            pytest.skip(f"{needed} not started in this session (MEDSEG_TEST_SERVICES)")
    return stack
