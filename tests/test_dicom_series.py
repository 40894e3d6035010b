"""Series discovery and QC (issue 13 items 1-2): one test per rule, each on real files built
from pydicom's bundled test images or from the phantom written as CT, each with its
outcome (read, read with a note, or refused with the reason)."""
from __future__ import annotations

import copy
import shutil
import zipfile

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medseg.dicom import DicomError, list_series, read_dicom
from medseg.dicom.write import series_datasets
from medseg.volumes import read_volume, write_volume
from tests.dicom_builders import (oblique_direction, phantom_volume, rotation_x, stack_of,
                                  write_phantom_series, write_series)


# --- the phantom as DICOM: geometry equal to its NIfTI ---------------------------------------

@pytest.mark.parametrize("shape", ["axial", "oblique", "flipped"])
def test_phantom_written_as_dicom_reads_back_as_its_nifti(tmp_path, shape):
    direction = {"axial": None, "oblique": oblique_direction(), "flipped": rotation_x(180)}[shape]
    _, volume, _ = write_phantom_series(tmp_path / "dcm", direction=direction,
                                        reverse_instances=(shape == "flipped"))
    nifti = read_volume(write_volume(volume, tmp_path / "ct.nii.gz"))
    read = read_dicom(tmp_path / "dcm")
    assert read.notes == []
    assert read.volume.same_grid(nifti, tol=1e-5), (read.volume.origin, nifti.origin, read.volume.direction)
    assert np.array_equal(read.volume.array, nifti.array)
    assert read.volume.array.dtype == np.int16


# --- discovery ---------------------------------------------------------------------------------

def test_cd_style_nested_folders_are_searched(tmp_path):
    _, volume, _ = write_phantom_series(tmp_path / "CD" / "DICOM" / "ST000" / "SE000", name="IM{:d}")
    (tmp_path / "CD" / "README.TXT").write_text("not DICOM")
    assert np.array_equal(read_dicom(tmp_path / "CD").volume.array, volume.array)


def test_dicomdir_is_followed(tmp_path):
    from pydicom.fileset import FileSet

    _, volume = phantom_volume()
    fs = FileSet()
    for ds in series_datasets(volume):
        fs.add(ds)
    fs.write(tmp_path / "cd")
    assert (tmp_path / "cd" / "DICOMDIR").exists()
    for source in (tmp_path / "cd", tmp_path / "cd" / "DICOMDIR"):
        read = read_dicom(source)
        assert read.volume.same_grid(volume, tol=1e-5) and np.array_equal(read.volume.array, volume.array)


def test_pydicoms_dicomdir_with_several_patients_lists_its_series(tmp_path):
    from pathlib import Path

    folder = tmp_path / "dicomdirtests"
    shutil.copytree(Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests", folder)
    series = list_series(folder / "DICOMDIR")
    assert len(series) > 2 and {"CT", "MR"} <= {s.modality for s in series}
    with pytest.raises(DicomError, match=r"holds \d+ series; choose one") as err:
        read_dicom(folder / "DICOMDIR")
    assert all(s.uid in str(err.value) for s in series)
    assert err.value.field == "series_uid"


def test_zip_of_a_study_as_orthanc_exports_it(tmp_path):
    _, volume, files = write_phantom_series(tmp_path / "src")
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, path in enumerate(files):
            zf.write(path, f"PHANTOM Phantom/MEDSEG1 study/CT medseg phantom/CT{i:06d}.dcm")
    read = read_dicom(archive)
    assert np.array_equal(read.volume.array, volume.array)
    assert np.array_equal(read_volume(archive).array, volume.array)  # the generic reader routes zips here


@pytest.mark.parametrize("name", ["../../evil.dcm", "/etc/evil.dcm", "a/../../evil.dcm"])
def test_zip_path_traversal_is_refused_and_nothing_escapes(tmp_path, name):
    _, _, files = write_phantom_series(tmp_path / "src", size=(16, 16, 4))
    archive = tmp_path / "deep" / "er" / "study.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for i, path in enumerate(files):
            zf.write(path, f"S/IM{i}.dcm")
        zf.writestr(zipfile.ZipInfo(name), files[0].read_bytes())  # ZipInfo keeps the name as given
    before = set(tmp_path.rglob("*"))
    with pytest.raises(DicomError, match="outside the archive"):
        read_dicom(archive)
    assert set(tmp_path.rglob("*")) == before
    assert not list(tmp_path.rglob("evil.dcm"))


def test_zip_symlink_member_is_refused(tmp_path):
    archive = tmp_path / "s.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("S/link.dcm")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DicomError, match="symbolic link"):
        read_dicom(archive)


def test_empty_folder_and_folder_without_dicom(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomError, match="holds no files"):
        read_dicom(tmp_path / "empty")
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "sub" / "a.txt").write_text("hello")
    with pytest.raises(DicomError, match="holds no DICOM series"):
        read_dicom(tmp_path / "docs")


def test_two_series_need_a_choice_and_the_choice_is_honoured(tmp_path):
    # two equal-sized series: no 'largest' to fall back on
    a = stack_of("CT_small.dcm", tmp_path / "study", n=6, description="arterial")
    b = stack_of("CT_small.dcm", tmp_path / "study", n=6, description="portal", start=100)
    uid_a = pydicom.dcmread(a[0]).SeriesInstanceUID
    uid_b = pydicom.dcmread(b[0]).SeriesInstanceUID
    with pytest.raises(DicomError) as err:
        read_dicom(tmp_path / "study")
    text = str(err.value)
    for expected in (uid_a, uid_b, "'arterial'", "'portal'", "CT", "6 slices", "0.661 x 0.661 x 5 mm"):
        assert expected in text, text
    assert read_dicom(tmp_path / "study", series_uid=uid_b).series.description == "portal"
    assert read_dicom(tmp_path / "study", series_uid={uid_b, "9.9.9"}).series.uid == uid_b
    with pytest.raises(DicomError, match="has no series 1.2.3"):
        read_dicom(tmp_path / "study", series_uid="1.2.3")


def test_seg_objects_beside_the_series_are_not_candidates(tmp_path):
    files = stack_of("CT_small.dcm", tmp_path / "s", n=4)
    other = copy.deepcopy(pydicom.dcmread(files[0]))
    other.Modality, other.SeriesInstanceUID = "SEG", generate_uid()
    other.save_as(tmp_path / "s" / "seg.dcm")
    assert len(list_series(tmp_path / "s")) == 1


# --- QC rules -----------------------------------------------------------------------------------

def test_rule_modality_mr_refused_unless_research(tmp_path):
    stack_of("MR_small.dcm", tmp_path / "mr", n=5, step=2.0)
    with pytest.raises(DicomError, match="modality MR, not CT"):
        read_dicom(tmp_path / "mr")
    read = read_dicom(tmp_path / "mr", allow_non_ct=True)
    assert read.volume.size == (64, 64, 5) and "research" in read.notes[0]


def test_rule_localizer_inside_a_series_is_dropped_with_a_note(tmp_path):
    files = stack_of("CT_small.dcm", tmp_path / "s", n=6)
    scout = pydicom.dcmread(files[0])
    scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal scout
    scout.save_as(tmp_path / "s" / "scout.dcm")
    read = read_dicom(tmp_path / "s")
    assert read.volume.size == (128, 128, 6)
    assert "1 localizer image(s) dropped: scout.dcm" in read.notes[0]


def test_rule_two_perpendicular_scouts_are_not_a_volume(tmp_path):
    files = stack_of("CT_small.dcm", tmp_path / "s", n=2)
    for path, orientation in zip(files, ([1, 0, 0, 0, 0, -1], [0, 1, 0, 0, 0, -1])):
        ds = pydicom.dcmread(path)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.ImageOrientationPatient = orientation
        ds.save_as(path)
    with pytest.raises(DicomError, match="only localizer"):
        read_dicom(tmp_path / "s")
    for path in files:  # the same pair without the LOCALIZER type: orientation refuses it
        ds = pydicom.dcmread(path)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.save_as(path)
    with pytest.raises(DicomError, match="2 different orientations"):
        read_dicom(tmp_path / "s")


def test_rule_gap_is_refused_with_the_missing_count(tmp_path):
    stack_of("CT_small.dcm", tmp_path / "s", n=12, step=2.5, skip=(5, 6, 7))
    with pytest.raises(DicomError, match=r"gap of 10.0 mm .* 2.5 mm apart: about 3 slice\(s\) missing"):
        read_dicom(tmp_path / "s")


def test_rule_one_missing_slice_is_refused(tmp_path):
    stack_of("CT_small.dcm", tmp_path / "s", n=10, step=5.0, skip=(4,))
    with pytest.raises(DicomError, match=r"about 1 slice\(s\) missing"):
        read_dicom(tmp_path / "s")


def test_rule_two_stacks_far_apart_are_a_gap_not_an_average(tmp_path):
    """The issue's 202 mm gap once averaged into a 68 mm spacing."""
    positions = [np.array([0.0, 0.0, z]) for z in (0, 5, 10, 212, 217, 222)]
    stack_of("CT_small.dcm", tmp_path / "s", n=6, positions=positions)
    with pytest.raises(DicomError, match=r"gap of 202.0 mm"):
        read_dicom(tmp_path / "s")


def test_rule_irregular_spacing_is_refused(tmp_path):
    positions = [np.array([0.0, 0.0, z]) for z in (0, 5, 10, 13, 18, 23, 28)]
    stack_of("CT_small.dcm", tmp_path / "s", n=7, positions=positions)
    with pytest.raises(DicomError, match="irregular slice spacing: 3 mm"):
        read_dicom(tmp_path / "s")


def test_rule_duplicate_slices_are_dropped_with_a_note(tmp_path):
    files = stack_of("CT_small.dcm", tmp_path / "s", n=6)
    shutil.copy(files[2], tmp_path / "s" / "copy_of_3")  # same SOP instance sent twice
    ds = pydicom.dcmread(files[4])  # same pixels, re-sent with a new UID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "s" / "resent_5")
    read = read_dicom(tmp_path / "s")
    assert read.volume.size == (128, 128, 6)
    assert read.notes and "2 duplicate slice(s) dropped" in read.notes[0]


def test_rule_conflicting_slices_at_one_position_are_refused(tmp_path):
    files = stack_of("CT_small.dcm", tmp_path / "s", n=6)
    ds = pydicom.dcmread(files[3])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    pixels = ds.pixel_array.copy()
    pixels[:10] += 50
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "s" / "other_phase_4")
    with pytest.raises(DicomError, match="same position .* with different pixels"):
        read_dicom(tmp_path / "s")


def test_rule_mixed_slice_sizes_are_refused(tmp_path):
    files = stack_of("CT_small.dcm", tmp_path / "s", n=6)
    ds = pydicom.dcmread(files[5])
    ds.PixelData = ds.pixel_array[:64].tobytes()
    ds.Rows = 64
    ds.save_as(files[5])
    with pytest.raises(DicomError, match=r"different sizes \(5 of 128x128, 1 of 128x64 pixels\)"):
        read_dicom(tmp_path / "s")


def test_rule_single_slice_is_not_a_volume(tmp_path):
    stack_of("CT_small.dcm", tmp_path / "s", n=1)
    with pytest.raises(DicomError, match="holds 1 slice"):
        read_dicom(tmp_path / "s")


def test_rule_missing_position_is_refused(tmp_path):
    files = stack_of("CT_small.dcm", tmp_path / "s", n=4)
    ds = pydicom.dcmread(files[1])
    del ds.ImagePositionPatient
    ds.save_as(files[1])
    with pytest.raises(DicomError, match="IM0002 has no valid ImagePositionPatient"):
        read_dicom(tmp_path / "s")


def test_rule_gantry_tilt_is_corrected_by_resampling(tmp_path):
    """A 20 deg tilted acquisition of a ball: image planes tilted about x, the table moving
    along z, so slice positions drift 0.36 mm in-plane per 1 mm along the normal. Read
    naively (no shear) the ball's centre is off by up to 16 mm; resampled it is where it is."""
    tilt = np.radians(20.0)
    row, col = np.array([1.0, 0, 0]), np.array([0, np.cos(tilt), np.sin(tilt)])
    normal = np.cross(row, col)
    size, pitch, table_step, nz = 64, 2.0, 2.5, 40
    centre, radius = np.array([0.0, 10.0, 50.0]), 20.0
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    uid = generate_uid()
    (tmp_path / "s").mkdir()
    ii, jj = np.meshgrid(np.arange(size), np.arange(size), indexing="xy")
    for k in range(nz):
        position = np.array([-size * pitch / 2, -size * pitch / 2, k * table_step])
        points = position + ii[..., None] * pitch * row + jj[..., None] * pitch * col
        inside = np.linalg.norm(points - centre, axis=-1) <= radius
        hu = np.where(inside, 40, -1000).astype(np.int32)
        hu[:, :4] = -50  # a strip of soft tissue so the HU check sees both
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID, ds.InstanceNumber, ds.GantryDetectorTilt = uid, k + 1, 20.0
        ds.Rows = ds.Columns = size
        ds.PixelSpacing = [pitch, pitch]
        ds.ImageOrientationPatient = [*row, *col]
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
        ds.save_as(tmp_path / "s" / f"IM{k}")
    read = read_dicom(tmp_path / "s")
    assert read.resampled and "gantry tilt 20.0 deg corrected" in read.notes[0]
    volume = read.volume
    zz, yy, xx = np.nonzero(volume.array > -500)
    keep = xx >= 4  # leave the soft-tissue strip out
    points = (volume.index_to_physical_matrix() @ np.stack([xx[keep], yy[keep], zz[keep], np.ones(keep.sum())]))[:3]
    found = points.mean(axis=1)
    assert np.linalg.norm(found - centre) < 1.0, found
    ball_ml = keep.sum() * volume.voxel_volume_mm3 / 1000
    assert abs(ball_ml - 4 / 3 * np.pi * radius**3 / 1000) / (4 / 3 * np.pi * radius**3 / 1000) < 0.05
    # the check that can fail: the unsheared reading puts the ball elsewhere
    assert read.checked.tilt_deg == pytest.approx(20.0, abs=0.05)
    assert abs(float(read.checked.step @ normal)) == pytest.approx(table_step * np.cos(tilt), rel=1e-6)


def test_rule_rescale_slope_and_intercept_are_applied(tmp_path):
    files = stack_of("CT_small.dcm", tmp_path / "s", n=4)
    stored = pydicom.dcmread(files[0]).pixel_array.astype(np.float64)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.RescaleSlope, ds.RescaleIntercept = 1.25, -1280
        ds.save_as(path)
    volume = read_dicom(tmp_path / "s").volume
    assert volume.array.dtype == np.float32
    assert np.allclose(volume.array[0], stored * 1.25 - 1280)


def test_rule_hu_plausibility_refuses_a_missing_rescale(tmp_path):
    """Stored values read as HU (intercept lost in an export): no air, not an abdominal CT."""
    _, volume = phantom_volume(size=(32, 32, 8))
    write_series(volume, tmp_path / "s", intercept=-1024.0)
    for path in (tmp_path / "s").iterdir():
        ds = pydicom.dcmread(path)
        ds.RescaleIntercept = 0
        ds.save_as(path)
    with pytest.raises(DicomError, match="not an abdominal CT in Hounsfield units"):
        read_dicom(tmp_path / "s")
    assert read_dicom(tmp_path / "s", allow_non_ct=True).volume.array.min() >= 0


def test_rule_enhanced_multiframe_ct_in_a_folder_and_as_a_file(tmp_path):
    import highdicom as hd

    _, volume = phantom_volume(size=(32, 32, 12), direction=oblique_direction())
    legacy = series_datasets(volume)
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy, series_instance_uid=generate_uid(), series_number=2, sop_instance_uid=generate_uid(),
        instance_number=1)
    (tmp_path / "mf").mkdir()
    enhanced.save_as(tmp_path / "mf" / "enhanced.dcm")
    for source in (tmp_path / "mf", tmp_path / "mf" / "enhanced.dcm"):
        read = read_dicom(source)
        assert read.series.enhanced
        assert read.volume.same_grid(volume, tol=1e-4) and np.array_equal(read.volume.array, volume.array)


def test_single_classic_file_asks_for_the_folder(tmp_path):
    files = stack_of("CT_small.dcm", tmp_path / "s", n=3)
    with pytest.raises(DicomError, match="single DICOM file holding one slice: give the folder"):
        read_dicom(files[0])


def test_a_series_over_the_byte_limit_is_refused_before_decoding(tmp_path):
    from medseg.codec import VolumeTooLarge

    stack_of("CT_small.dcm", tmp_path / "s", n=4)
    with pytest.raises(VolumeTooLarge, match=r"128x128x4 voxels need 262144 bytes"):
        read_dicom(tmp_path / "s", max_bytes=100_000)
    assert read_dicom(tmp_path / "s", max_bytes=262_144).volume.size == (128, 128, 4)
