"""DICOM-SEG out (issue 13 item 5): written with highdicom against the source series, opened
again with highdicom, equal voxel for voxel to the mask on the source grid (axial, flipped
slice order, oblique, enhanced multi-frame), its own geometry equal to the mask's (the
anterior/posterior flip TotalSegmentator once shipped), its references those of the source."""
from __future__ import annotations

import zipfile

import highdicom as hd
import numpy as np
import pydicom
import pytest

from medseg.dicom import DicomError, read_dicom
from medseg.dicom.seg import read_seg, write_seg
from tests.dicom_builders import oblique_direction, phantom_volume, rotation_x, write_phantom_series


def _physical_check(seg_path, mask) -> None:
    """Every voxel of the SEG, placed by the SEG's own geometry (highdicom's volume), holds
    the mask's value at that physical point."""
    volume = hd.seg.segread(seg_path).get_volume(combine_segments=True, relabel=False)
    assert volume.array.shape == mask.array.shape[::1] or sorted(volume.array.shape) == sorted(mask.array.shape)
    idx = np.indices(volume.array.shape).reshape(3, -1)
    points = volume.affine @ np.vstack([idx, np.ones(idx.shape[1])])
    mine = np.linalg.inv(mask.index_to_physical_matrix()) @ points  # (x, y, z) indices of the mask
    rounded = np.rint(mine[:3]).astype(int)
    assert np.abs(mine[:3] - rounded).max() < 1e-3, "the SEG's grid is not the mask's"
    x, y, z = rounded
    inside = (x >= 0) & (y >= 0) & (z >= 0) & (x < mask.size[0]) & (y < mask.size[1]) & (z < mask.size[2])
    assert inside.all()
    numbers = volume.array.reshape(-1)
    seg = hd.seg.segread(seg_path)
    value_of = {n: int(seg.get_segment_description(n).tracking_id.split()[-1]) for n in seg.segment_numbers}
    lut = np.zeros(max(value_of) + 1, dtype=int)
    for n, v in value_of.items():
        lut[n] = v
    assert np.array_equal(lut[numbers], mask.array[z, y, x])


def _references(seg_path, read) -> None:
    seg = pydicom.dcmread(seg_path)
    source = read.series.headers[0]
    assert seg.Modality == "SEG"
    for attribute in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID", "PatientName", "AccessionNumber",
                      "StudyDate", "StudyID"):
        assert seg.get(attribute) == source.get(attribute), attribute
    assert seg.SeriesInstanceUID != read.series.uid
    [ref] = seg.ReferencedSeriesSequence
    assert ref.SeriesInstanceUID == read.series.uid
    assert {r.ReferencedSOPInstanceUID for r in ref.ReferencedInstanceSequence} == \
        {str(h.SOPInstanceUID) for h in read.series.headers}


@pytest.mark.parametrize("shape", ["axial", "flipped", "oblique"])
def test_seg_round_trip_voxel_for_voxel(tmp_path, shape):
    direction = {"axial": None, "flipped": rotation_x(180), "oblique": oblique_direction()}[shape]
    case, _, _ = write_phantom_series(tmp_path / "ct", size=(40, 40, 24), direction=direction,
                                      reverse_instances=shape == "flipped")
    read = read_dicom(tmp_path / "ct")
    mask = read.volume.with_array(case.labels.array, labels=case.labels.labels)
    write_seg(mask, tmp_path / "seg.dcm", read)
    back = read_seg(tmp_path / "seg.dcm", read)
    assert back.same_grid(mask) and np.array_equal(back.array, mask.array)
    assert back.labels == {v: n for v, n in case.labels.labels.items() if v == 0 or (mask.array == v).any()}
    _physical_check(tmp_path / "seg.dcm", mask)
    _references(tmp_path / "seg.dcm", read)


def test_anterior_and_posterior_stay_where_they_are(tmp_path):
    """A mask with one label only in front of the body (LPS y < 0) and another only behind:
    the SEG's own frame positions must keep them there (the flip TotalSegmentator fixed)."""
    case, _, _ = write_phantom_series(tmp_path / "ct", size=(32, 32, 16), direction=rotation_x(180),
                                      reverse_instances=True)
    read = read_dicom(tmp_path / "ct")
    mask = read.volume.with_array(np.zeros(read.volume.array.shape, np.uint8), labels={0: "background",
                                                                                        1: "kidney", 3: "artery"})
    physical = read.volume.index_to_physical_matrix() @ np.vstack([np.indices(mask.size).reshape(3, -1),
                                                                  np.ones(int(np.prod(mask.size)))])
    y = physical[1].reshape(mask.size).transpose(2, 1, 0)  # to (z, y, x)
    mask.array[y < -50] = 1  # anterior
    mask.array[y > 50] = 3  # posterior
    write_seg(mask, tmp_path / "seg.dcm", read)
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    volume = seg.get_volume(combine_segments=True, relabel=False)
    idx = np.indices(volume.array.shape).reshape(3, -1)
    seg_y = (volume.affine @ np.vstack([idx, np.ones(idx.shape[1])]))[1]
    numbers = volume.array.reshape(-1)
    kidney = [n for n in seg.segment_numbers if seg.get_segment_description(n).segment_label == "kidney"][0]
    artery = [n for n in seg.segment_numbers if seg.get_segment_description(n).segment_label == "artery"][0]
    assert (seg_y[numbers == kidney] < -50).all() and (numbers == kidney).any()
    assert (seg_y[numbers == artery] > 50).all() and (numbers == artery).any()


def test_segments_carry_snomed_concepts_and_the_algorithm(tmp_path):
    case, _, _ = write_phantom_series(tmp_path / "ct", size=(32, 32, 16))
    read = read_dicom(tmp_path / "ct")
    write_seg(read.volume.with_array(case.labels.array, labels=case.labels.labels), tmp_path / "seg.dcm", read,
              algorithm="medseg tumor")
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    by_label = {seg.get_segment_description(n).segment_label: seg.get_segment_description(n)
                for n in seg.segment_numbers}
    assert by_label["kidney"].segmented_property_type.value == "64033007"
    assert by_label["kidney"].segmented_property_type.scheme_designator == "SCT"
    assert by_label["tumor"].segmented_property_type.value == "108369006"
    assert by_label["tumor"].segmented_property_category.value == "49755003"
    assert by_label["artery"].segmented_property_type.value == "51114001"
    algorithm = by_label["kidney"].algorithm_identification[0]
    assert algorithm.AlgorithmName == "medseg tumor" and algorithm.AlgorithmVersion
    assert str(by_label["kidney"].SegmentAlgorithmType) == "AUTOMATIC"


def test_organ_mask_with_totalsegmentator_numbers(tmp_path):
    case, _, _ = write_phantom_series(tmp_path / "ct", size=(32, 32, 16))
    read = read_dicom(tmp_path / "ct")
    organs = read.volume.with_array(case.organs.array, labels=case.organs.labels)
    write_seg(organs, tmp_path / "seg.dcm", read)
    back = read_seg(tmp_path / "seg.dcm", read)
    assert np.array_equal(back.array, organs.array)
    assert back.labels[3] == "kidney_left" and back.labels[5] == "liver"


def test_seg_of_an_enhanced_multiframe_source(tmp_path):
    from pydicom.uid import generate_uid

    from medseg.dicom.write import series_datasets

    case, volume = phantom_volume(size=(24, 24, 10), direction=oblique_direction())
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(series_datasets(volume), series_instance_uid=generate_uid(),
                                                        series_number=1, sop_instance_uid=generate_uid(),
                                                        instance_number=1)
    (tmp_path / "mf").mkdir()
    enhanced.save_as(tmp_path / "mf" / "ct.dcm")
    read = read_dicom(tmp_path / "mf")
    mask = read.volume.with_array(case.labels.array, labels=case.labels.labels)
    write_seg(mask, tmp_path / "seg.dcm", read)
    assert np.array_equal(read_seg(tmp_path / "seg.dcm", read).array, mask.array)
    _physical_check(tmp_path / "seg.dcm", mask)


def test_seg_of_a_series_read_from_a_zip(tmp_path):
    case, _, files = write_phantom_series(tmp_path / "ct", size=(24, 24, 8))
    with zipfile.ZipFile(tmp_path / "study.zip", "w") as zf:
        for path in files:
            zf.write(path, f"P/S/{path.name}")
    read = read_dicom(tmp_path / "study.zip")  # its files are gone after the read
    mask = read.volume.with_array(case.labels.array, labels=case.labels.labels)
    write_seg(mask, tmp_path / "seg.dcm", read)
    _references(tmp_path / "seg.dcm", read)


def test_nifti_input_gets_a_seg_with_new_uids(tmp_path):
    case, volume = phantom_volume(size=(24, 24, 8))
    write_seg(case.labels, tmp_path / "seg.dcm")
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert len(seg.segment_numbers) == len([v for v in np.unique(case.labels.array) if v])
    _physical_check(tmp_path / "seg.dcm", case.labels)


def test_seg_of_a_resampled_series_is_refused(tmp_path):
    case, _, _ = write_phantom_series(tmp_path / "ct", size=(24, 24, 8))
    read = read_dicom(tmp_path / "ct")
    read.checked.tilt_deg = 12.0  # as QC leaves it after correcting a tilt
    with pytest.raises(DicomError, match="resampled to correct its gantry tilt"):
        write_seg(read.volume.with_array(case.labels.array, labels=case.labels.labels), tmp_path / "s.dcm", read)
    assert not (tmp_path / "s.dcm").exists()
