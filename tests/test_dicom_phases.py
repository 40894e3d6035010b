"""Phases assigned from one study (issue 13 item 1), each documented rule of
medseg.dicom.phases on a real study folder written from the phantom, and a local
`case` study through study_case (reads each phase, QC'd, as NIfTI for upload)."""
from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import generate_uid

from medseg.dicom import DicomError, list_series
from medseg.dicom.phases import assign_phases
from medseg.dicom.study import pacs_auth, study_case
from medseg.dicom.write import write_series
from medseg.phantom import make_phantom
from medseg.volumes import Volume, read_volume


@pytest.fixture(scope="module")
def case():
    return make_phantom(size=(24, 24, 8), seed=9)


def _study(folder, case, series):
    """series: (phase image, description, contrast, time, image_type or None) tuples."""
    study, frame = generate_uid(), generate_uid()
    uids = []
    for number, (phase, description, contrast, time_of, image_type) in enumerate(series, start=1):
        uid = generate_uid()
        extra = {"image_type": image_type} if image_type else {}
        write_series(case.phases[phase], folder / f"s{number}", study_uid=study, series_uid=uid,
                     frame_of_reference_uid=frame, description=description, series_number=number,
                     contrast=contrast, acquisition_time=time_of, **extra)
        uids.append(uid)
    return uids


def test_descriptions_name_the_phases(tmp_path, case):
    uids = _study(tmp_path, case, [("delayed", "Urogram 5 min", "IOHEXOL", "121000", None),
                                   ("arterial", "CTA abdomen", "IOHEXOL", "120100", None),
                                   ("portal", "Abdomen PV 1.0", "IOHEXOL", "120200", None)])
    chosen, lines = assign_phases(list_series(tmp_path))
    assert {p: s.uid for p, s in chosen.items()} == {"delayed": uids[0], "arterial": uids[1], "portal": uids[2]}
    assert all("(description)" in line for line in lines)


def test_acquisition_order_fills_phases_without_keywords(tmp_path, case):
    uids = _study(tmp_path, case, [("portal", "Abdomen 1.0 B30f", "IOHEXOL", "120230", None),
                                   ("arterial", "Abdomen 1.0 B30f", "IOHEXOL", "120100", None),
                                   ("delayed", "Abdomen 1.0 B30f", "IOHEXOL", "121500", None)])
    chosen, lines = assign_phases(list_series(tmp_path))
    assert [chosen[p].uid for p in ("arterial", "portal", "delayed")] == [uids[1], uids[0], uids[2]]
    assert "acquisition order, time 120100" in lines[0] or any("time 120100" in line for line in lines)


def test_non_contrast_and_localizers_are_left_out(tmp_path, case):
    uids = _study(tmp_path, case, [("portal", "Topogram", "", "115900", ("ORIGINAL", "PRIMARY", "LOCALIZER")),
                                   ("portal", "Abdomen native", "", "120000", None),
                                   ("portal", "Abdomen portal", "IOHEXOL", "120200", None)])
    chosen, lines = assign_phases(list_series(tmp_path))
    assert set(chosen) == {"portal"} and chosen["portal"].uid == uids[2]
    assert any(f"left out: {uids[0]}" in line and "(localizer)" in line for line in lines)
    assert any(f"left out: {uids[1]}" in line and "(non-contrast)" in line for line in lines)


def test_override_wins_and_bad_overrides_are_named(tmp_path, case):
    uids = _study(tmp_path, case, [("arterial", "arterial", "X", "120100", None),
                                   ("portal", "portal", "X", "120200", None)])
    chosen, lines = assign_phases(list_series(tmp_path), {"portal": uids[0]})
    assert chosen["portal"].uid == uids[0] and "(override)" in lines[0]
    assert set(chosen) == {"portal"}  # the other one says 'portal', a phase taken by the override
    assert any(f"left out: {uids[1]}" in line and "(its phase is taken)" in line for line in lines)
    with pytest.raises(DicomError, match="no such series"):
        assign_phases(list_series(tmp_path), {"portal": "1.2.3"})
    with pytest.raises(DicomError, match="unknown phase"):
        assign_phases(list_series(tmp_path), {"venous": uids[0]})


def test_a_study_without_contrast_ct_is_refused(tmp_path, case):
    _study(tmp_path, case, [("portal", "Topogram", "", "115900", ("ORIGINAL", "PRIMARY", "LOCALIZER"))])
    with pytest.raises(DicomError, match="no contrast CT series"):
        assign_phases(list_series(tmp_path))


def test_study_case_reads_each_assigned_phase(tmp_path, case):
    uids = _study(tmp_path / "study", case, [("arterial", "arterial", "X", "120100", None),
                                             ("portal", "portal venous", "X", "120200", None)])
    with study_case(tmp_path / "study") as study:
        assert set(study.files) == {"arterial", "portal"}
        portal = read_volume(study.files["portal"])
        assert np.array_equal(portal.array, case.phases["portal"].array)
        assert study.seg_source()[0] == "portal" and study.reads["portal"].series.uid == uids[1]
        assert isinstance(study.reads["arterial"].volume, Volume)


def test_pacs_credentials_come_from_the_environment():
    assert pacs_auth("u", environ={"MEDSEG_PACS_PASSWORD": "p"}).secret == "p"
    assert "p" not in repr(pacs_auth("u", environ={"MEDSEG_PACS_PASSWORD": "p"})).replace("PacsAuth", "")
    assert pacs_auth(bearer=True, environ={"MEDSEG_PACS_TOKEN": "t"}).kind == "bearer"
    with pytest.raises(DicomError, match="MEDSEG_PACS_PASSWORD"):
        pacs_auth("u", environ={})
    with pytest.raises(DicomError, match="not both"):
        pacs_auth("u", bearer=True, environ={})


def test_phantom_command_writes_a_dicom_study_the_rules_assign(tmp_path, capsys):
    from medseg.cli import main

    assert main(["phantom", str(tmp_path / "p"), "--size", "24", "24", "8", "--dicom"]) == 0
    assert "DICOM series" in capsys.readouterr().out
    series = list_series(tmp_path / "p" / "dicom")
    assert len({s.study_uid for s in series}) == 1
    chosen, _ = assign_phases(series)
    assert set(chosen) == {"arterial", "portal", "delayed"}
    with study_case(tmp_path / "p" / "dicom") as study:
        for phase in chosen:
            nifti = read_volume(tmp_path / "p" / f"{phase}.nii.gz")
            assert np.array_equal(read_volume(study.files[phase]).array, nifti.array)


def test_case_run_with_a_broken_local_study_exits_1_before_any_call(tmp_path, case, capsys):
    from medseg.cli import main

    _study(tmp_path / "study", case, [("portal", "Topogram", "", "115900", ("ORIGINAL", "PRIMARY", "LOCALIZER"))])
    assert main(["--quiet", "--gateway", "127.0.0.1:1", "case", "run", "--study-dir", str(tmp_path / "study")]) == 1
    err = capsys.readouterr().err
    assert f"cannot read study '{tmp_path / 'study'}'" in err and "no contrast CT series" in err
    assert "UNAVAILABLE" not in err
