"""Vessel/ureter repair (postprocess_svc.repair) against analytic tubes and the cut phantom.

Every case knows its truth: the uncut tube or phantom mask, the gap lengths and the radius.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from medseg.labels import Label
from medseg.params import ParameterError
from medseg.volumes import Volume
from medseg.progress import OperationCancelled
from postprocess_svc.repair import RepairLimits, connect_label, connect_ureters, connect_vessels
from tests.repair_cases import arc, cut_phantom, dice, paint_tube, pieces, segment, tube_case

ARTERY, VEIN, URETER, KIDNEY = int(Label.ARTERY), int(Label.VEIN), int(Label.URETER), int(Label.KIDNEY)
RADIUS = 3.0
GAPS = [(18.0, 2.0), (40.0, 5.0), (64.0, 8.0)]  # (arc length of the gap's centre, gap) mm


def check_repaired(cut: Volume, truth: Volume, label: int, gaps, radius: float, **kw):
    assert pieces(cut.array, label) == len(gaps) + 1
    out, report = connect_label(cut, label, **kw)
    assert report.pieces_before == len(gaps) + 1
    assert report.pieces_after == 1 == pieces(out.array, label)
    assert len(report.bridges) == len(gaps)
    assert dice(out.array == label, truth.array == label) >= 0.90
    # each gap bridged once, by about its own length, at about the tube's radius
    lengths = sorted(b.length_mm for b in report.bridges)
    for measured, (_, gap) in zip(lengths, sorted(gaps, key=lambda g: g[1])):
        assert abs(measured - gap) <= 1.5, (lengths, gaps)
    for bridge in report.bridges:
        assert bridge.radius_start_mm == pytest.approx(radius, rel=0.2)
        assert bridge.radius_end_mm == pytest.approx(radius, rel=0.2)
        assert bridge.voxels_added > 0
    # the gaps themselves are filled: most removed voxels come back, little is added elsewhere
    removed = (truth.array == label) & (cut.array != label)
    assert (out.array == label)[removed].mean() >= 0.8
    assert np.count_nonzero((out.array == label) & (truth.array != label)) <= 0.25 * removed.sum()
    return out, report


def test_straight_tube_gaps_2_5_8_mm_are_bridged():
    line = segment((15, 15, 4), (15, 15, 86))
    cut, truth = tube_case((1.0, 1.0, 1.0), (30, 30, 90), line, RADIUS, GAPS, ARTERY)
    check_repaired(cut, truth, ARTERY, GAPS, RADIUS)


def test_curved_oblique_tube_on_anisotropic_grid_with_flipped_direction():
    # A quarter circle of radius 50 mm tilted out of the slice plane, on 0.8 x 0.8 x 1.5 mm
    # voxels, with a direction matrix that flips x and y (LPS vs RAS style) and an origin.
    flat = arc((0, 0, 0), 50.0, 0.1, 0.1 + math.pi / 2)
    tilt = np.array([[1, 0, 0], [0, math.cos(0.5), -math.sin(0.5)], [0, math.sin(0.5), math.cos(0.5)]])
    line = flat @ tilt.T + np.array([9.0, 5.0, 25.0])
    direction = (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)
    # paint in index space first (identity frame), then give the volume its real geometry
    cut, truth = tube_case((0.8, 0.8, 1.5), (64, 54, 56), line, RADIUS, GAPS, ARTERY)
    origin = (40.0, -12.0, 100.0)
    cut = Volume(cut.array, cut.spacing, origin, direction)
    truth = Volume(truth.array, truth.spacing, origin, direction)
    out, report = check_repaired(cut, truth, ARTERY, GAPS, RADIUS)
    # bridge ends are reported in physical LPS mm: map the centre-line the same way
    physical_line = line * np.array([-1.0, -1.0, 1.0]) + np.array(origin)
    for bridge in report.bridges:
        for point in (bridge.start_mm, bridge.end_mm):
            assert np.min(np.linalg.norm(physical_line - np.array(point), axis=1)) <= 1.5


def test_gap_beyond_the_limit_stays_open_and_is_reported():
    line = segment((15, 15, 4), (15, 15, 86))
    cut, truth = tube_case((1.0, 1.0, 1.0), (30, 30, 90), line, RADIUS, [(45.0, 15.0)], ARTERY)
    out, report = connect_label(cut, ARTERY, RepairLimits(max_gap_mm=10.0))
    assert report.pieces_after == 2 and not report.bridges
    assert np.array_equal(out.array, cut.array)
    assert any("gap 1" in why and "> 10" in why for why in report.rejected), report.rejected
    assert len(report.pieces) == 2 and "left apart" in report.note
    # the same gap is bridged once the limit allows it: the refusal above was the limit's doing
    _, wider = connect_label(cut, ARTERY, RepairLimits(max_gap_mm=18.0))
    assert wider.pieces_after == 1 and wider.bridges[0].length_mm == pytest.approx(15.0, abs=1.5)


def test_parallel_vessels_6_mm_apart_are_not_joined_to_each_other():
    # Two r = 2 mm vessels with centre-lines 6 mm apart, each broken once at a different
    # height, plus a third pair of pieces where one vessel ends and its neighbour begins
    # 6 mm to the side: only each vessel's own gap may be bridged.
    radius = 2.0
    volume = Volume(np.zeros((90, 24, 40), np.uint8))
    truth_a = paint_tube(volume, segment((12, 12, 4), (12, 12, 86)), radius, ARTERY)
    truth_b = paint_tube(volume, segment((18, 12, 4), (18, 12, 86)), radius, ARTERY)
    cut = volume.array.copy()
    cut[38:43][truth_a[38:43]] = 0  # vessel a: 5 mm gap at z 38-42
    cut[60:64][truth_b[60:64]] = 0  # vessel b: 4 mm gap at z 60-63
    lane = Volume(np.zeros((90, 24, 40), np.uint8))
    paint_tube(lane, segment((30, 12, 4), (30, 12, 44)), radius, ARTERY)  # ends at z = 44
    paint_tube(lane, segment((36, 12, 50), (36, 12, 86)), radius, ARTERY)  # begins 6 mm aside
    cut |= lane.array
    mask = Volume(cut)
    out, report = connect_label(mask, ARTERY)
    assert report.pieces_before == 6
    assert len(report.bridges) == 2 and report.pieces_after == 4
    from scipy import ndimage

    labelled, _ = ndimage.label(out.array == ARTERY, structure=np.ones((3, 3, 3)))
    ids_a, ids_b = set(np.unique(labelled[truth_a])), set(np.unique(labelled[truth_b]))
    assert len(ids_a - {0}) == 1 and len(ids_b - {0}) == 1 and not (ids_a & ids_b) - {0}
    lane_ids = set(np.unique(labelled[lane.array == ARTERY]))
    assert len(lane_ids - {0}) == 2  # the lane pair stays two pieces


def test_artery_is_never_joined_across_a_vein():
    # An artery cut by a 6 mm gap through which a vein runs crosswise.
    line = segment((20, 20, 4), (20, 20, 70))
    cut, truth = tube_case((1.0, 1.0, 1.0), (40, 40, 74), line, RADIUS, [(33.0, 6.0)], ARTERY)
    paint_tube(cut, segment((2, 20, 37), (38, 20, 37)), 1.6, VEIN)
    vein_before = cut.array == VEIN
    out, report = connect_label(cut, ARTERY)
    assert report.pieces_after == 2 and not report.bridges
    assert any("crosses vein (4)" in why for why in report.rejected), report.rejected
    assert np.array_equal(out.array == VEIN, vein_before)


def test_bridges_never_overwrite_other_labels():
    # A kidney blob presses against the gap from one side; the bridge is still made but
    # paints around it, and every kidney voxel keeps its label.
    line = segment((20, 20, 4), (20, 20, 70))
    cut, truth = tube_case((1.0, 1.0, 1.0), (40, 40, 74), line, RADIUS, [(33.0, 6.0)], ARTERY)
    _, free = connect_label(cut, ARTERY)
    z, y, x = np.indices(cut.array.shape)
    blob = ((x - 26.0) ** 2 + (y - 20.0) ** 2 + (z - 37.0) ** 2 <= 16.0) & (cut.array == 0)
    cut.array[blob] = KIDNEY
    before = cut.array.copy()
    out, report = connect_label(cut, ARTERY)
    assert report.pieces_after == 1
    changed = out.array != before
    assert np.all(before[changed] == 0) and np.all(out.array[changed] == ARTERY)
    assert np.array_equal(out.array == KIDNEY, blob)
    assert report.bridges[0].voxels_added < free.bridges[0].voxels_added


def test_cropped_and_whole_volume_paths_agree():
    line = segment((40, 30, 10), (40, 30, 80))
    cut, truth = tube_case((1.0, 1.0, 1.0), (90, 70, 90), line, RADIUS, [(30.0, 4.0), (50.0, 7.0)], ARTERY)
    cut.array[5:15, 5:15, 5:15] = KIDNEY  # something else in the volume, far away
    cropped, crop_report = connect_label(cut, ARTERY)
    whole, whole_report = connect_label(cut, ARTERY, whole_volume=True)
    assert np.array_equal(cropped.array, whole.array)
    assert crop_report.bridges == whole_report.bridges
    assert crop_report.region_voxels < whole_report.region_voxels / 5


def test_input_array_is_left_untouched_and_geometry_kept():
    line = segment((15, 15, 4), (15, 15, 60))
    cut, _ = tube_case((0.9, 0.9, 1.2), (30, 30, 64), line, RADIUS, [(25.0, 5.0)], ARTERY)
    cut = Volume(cut.array, cut.spacing, (1.0, 2.0, 3.0), labels={0: "background", ARTERY: "artery"})
    before = cut.array.copy()
    out, report = connect_vessels(cut)
    assert np.array_equal(cut.array, before)
    assert out.same_grid(cut) and out.labels == cut.labels and out.array.dtype == cut.array.dtype
    assert report.label == ARTERY and report.backend == "scipy"


def test_progress_and_cancellation():
    line = segment((15, 15, 4), (15, 15, 60))
    cut, _ = tube_case((1.0, 1.0, 1.0), (30, 30, 64), line, RADIUS, [(25.0, 5.0)], ARTERY)
    stages = []
    connect_label(cut, ARTERY, progress=lambda stage, fraction, message: stages.append((stage, fraction)))
    names = [s for s, _ in stages]
    assert names[0] == "crop" and names[-1] == "done" and "skeleton" in names and "bridge" in names
    assert [f for _, f in stages] == sorted(f for _, f in stages)
    calls = []
    with pytest.raises(OperationCancelled):
        connect_label(cut, ARTERY, cancelled=lambda: calls.append(1) or len(calls) > 2)


@pytest.mark.parametrize(
    "array_values, label, message",
    [
        ({ARTERY: 1, 9: 1}, ARTERY, "values [9] outside the label convention"),
        ({VEIN: 1}, ARTERY, "mask has no artery (label 3) voxels"),
        ({VEIN: 1}, URETER, "mask has no ureter (label 5) voxels"),
        ({ARTERY: 1}, 0, "label 0 is not a structure"),
        ({ARTERY: 1}, 7, "label 7 is not a structure"),
    ],
)
def test_bad_inputs_raise_clear_value_errors(array_values, label, message):
    array = np.zeros((10, 10, 10), np.uint8)
    for i, (value, _) in enumerate(array_values.items()):
        array[2 + 3 * i : 4 + 3 * i, 3:6, 3:6] = value
    with pytest.raises(ValueError) as error:
        connect_label(Volume(array), label)
    assert message in str(error.value)


def test_bad_limits_masks_and_backends_raise_value_errors():
    array = np.zeros((10, 10, 10), np.uint8)
    array[2:8, 4:6, 4:6] = ARTERY
    with pytest.raises(ValueError, match="max_gap_mm"):
        connect_label(Volume(array), ARTERY, RepairLimits(max_gap_mm=-1))
    with pytest.raises(ValueError, match="max_angle_deg"):
        connect_label(Volume(array), ARTERY, RepairLimits(max_angle_deg=0))
    with pytest.raises(ValueError, match="boolean"):
        connect_label(Volume(array == ARTERY), ARTERY)
    with pytest.raises(ValueError, match="whole numbers"):
        connect_label(Volume(array.astype(np.float32) + 0.5), ARTERY)
    with pytest.raises(ValueError, match="graph backend"):
        connect_label(Volume(array), ARTERY, backend="networkx")


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_gap_mm", 0.0),
        ("max_gap_mm", math.inf),
        ("max_angle_deg", 181.0),
        ("max_angle_deg", math.nan),
        ("min_radius_ratio", -0.1),
        ("min_radius_ratio", 1.5),
        ("min_piece_mm3", -1.0),
        ("aim_slack_mm", math.nan),
        ("tangent_length_mm", 0.0),
        ("skeleton_spacing_mm", 0.05),
        ("max_gap_mm", "10"),
    ],
)
def test_limits_are_checked_once_by_validate_with_the_request_field_name(field, value):
    with pytest.raises(ParameterError) as error:
        RepairLimits(**{field: value}).validate()
    assert error.value.name == f"limits.{field}"


def test_zero_radius_ratio_turns_the_radius_check_off_and_is_accepted():
    RepairLimits(min_radius_ratio=0.0, max_angle_deg=180.0, min_piece_mm3=0.0, aim_slack_mm=0.0).validate()
    RepairLimits(min_radius_ratio=1.0).validate()


def test_unknown_backend_is_a_parameter_error_named_backend():
    array = np.zeros((10, 10, 10), np.uint8)
    array[2:8, 4:6, 4:6] = ARTERY
    with pytest.raises(ParameterError) as error:
        connect_label(Volume(array), ARTERY, backend="networkx")
    assert error.value.name == "backend"


# ----------------------------------------------------------------------------------------
# phantom


@pytest.fixture(scope="module")
def phantom():
    # 1.5 mm voxels: renal arteries r ~3-4 mm, ureters r ~2.5-3 mm.
    return cut_phantom(size=(256, 256, 200), seed=0)


@pytest.mark.parametrize("operation, label, trees", [(connect_vessels, ARTERY, 1), (connect_ureters, URETER, 2)])
def test_phantom_artery_and_ureters_cut_in_several_places_come_back_whole(phantom, operation, label, trees):
    truth, cut = phantom.truth.array, phantom.cut.array
    assert pieces(truth, label) == trees  # one arterial tree; left and right ureter
    gaps = [g for g in phantom.gaps if g[3] == label]
    assert len(gaps) >= 4  # cut in several places
    assert pieces(cut, label) == trees + len(gaps)
    out, report = operation(phantom.cut)
    assert report.pieces_after == trees == pieces(out.array, label)  # ureters are not joined to each other
    assert len(report.bridges) == len(gaps)
    assert dice(out.array == label, truth == label) >= 0.90
    # the cut voxels come back, and nothing else changes
    removed = phantom.removed & (truth == label)
    assert (out.array == label)[removed].mean() >= 0.6
    changed = out.array != cut
    assert np.all(cut[changed] == 0) and np.all(out.array[changed] == label)
    assert np.count_nonzero(changed & (truth != label)) <= 0.1 * removed.sum()
    for bridge in report.bridges:
        assert 1.0 <= bridge.length_mm <= 10.0


def test_branch_cut_at_its_origin_joins_the_side_of_the_trunk():
    # A trunk (r = 6 mm) with a side branch (r = 3 mm); the branch is cut away from the trunk
    # wall out to 4 mm, so its free end faces the trunk's side, not another end.
    volume = Volume(np.zeros((70, 50, 70), np.uint8))
    trunk = paint_tube(volume, segment((20, 25, 2), (20, 25, 68)), 6.0, ARTERY)
    branch = paint_tube(Volume(np.zeros_like(volume.array)), segment((20, 25, 35), (66, 25, 35)), 3.0, ARTERY)
    truth = trunk | branch
    cut = np.where(trunk, ARTERY, 0).astype(np.uint8)
    x = np.arange(70)[None, None, :]
    cut[branch & ~trunk & (x >= 30)] = ARTERY  # the trunk wall is at x = 26: a 4 mm gap
    out, report = connect_label(Volume(cut), ARTERY)
    assert report.pieces_before == 2 and report.pieces_after == 1
    (bridge,) = report.bridges
    assert bridge.kind == "end-side" and bridge.length_mm == pytest.approx(4.0, abs=1.5)
    assert bridge.radius_start_mm == pytest.approx(3.0, rel=0.2)
    removed = branch & ~trunk & (x < 30)
    assert (out.array == ARTERY)[removed].mean() >= 0.8
    assert dice(out.array == ARTERY, truth) >= 0.95
