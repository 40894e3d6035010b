"""Measurements of label masks, checked against the phantom's voxels and analytic shapes."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from medseg.labels import NAMES, Label
from medseg.phantom import make_phantom
from medseg.volumes import Volume
from postprocess_svc.measure import measure_mask, summarize_labels
from medseg.progress import OperationCancelled


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((96, 96, 64), spacing=(3.5, 3.7, 4.6), seed=3)


def _sitk_corner_box(volume: Volume, lo, hi):
    """Physical box of the index box's corners, computed by SimpleITK (independent path)."""
    image = volume.to_image()
    corners = [image.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z)))
               for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    return np.min(corners, axis=0), np.max(corners, axis=0)


def _brute_diameter(volume: Volume, inside: np.ndarray) -> float:
    z, y, x = np.nonzero(inside)
    points = np.stack([x, y, z, np.ones_like(x)]).T.astype(float) @ volume.index_to_physical_matrix().T
    return float(pdist(points[:, :3]).max()) if len(points) > 1 else 0.0


def _ball(shape, centre, radius_vox):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) <= radius_vox**2


def test_matches_phantom_ground_truth_exactly(phantom):
    mask = phantom.labels
    measured = measure_mask(mask)
    assert [m.value for m in measured] == sorted(NAMES)[1:]  # every structure, by value
    for m in measured:
        inside = mask.array == m.value
        assert m.name == NAMES[m.value]
        assert m.voxel_count == np.count_nonzero(inside)
        assert m.volume_ml == pytest.approx(m.voxel_count * mask.voxel_volume_mm3 / 1000.0)
        z, y, x = np.nonzero(inside)
        assert m.min_index == (x.min(), y.min(), z.min())
        assert m.max_index == (x.max(), y.max(), z.max())
        lo_mm, hi_mm = _sitk_corner_box(mask, m.min_index, m.max_index)
        assert np.allclose(m.min_mm, lo_mm) and np.allclose(m.max_mm, hi_mm)
        assert sum(c.voxel_count for c in m.components) == m.voxel_count
        assert m.component_count == len(m.components)
        sizes = [c.voxel_count for c in m.components]
        assert sizes == sorted(sizes, reverse=True)
    by_value = {m.value: m for m in measured}
    # two kidneys, one tumor, two ureters; the artery and vein trees are each connected
    assert by_value[Label.KIDNEY].component_count == 2
    assert by_value[Label.TUMOR].component_count == 1
    assert by_value[Label.URETER].component_count == 2
    # the tumor is a ball of known radius: its diameter is within a voxel diagonal of 2r
    radius = phantom.anatomy["tumor"]["radius_mm"]
    diagonal = float(np.linalg.norm(mask.spacing))
    assert abs(by_value[Label.TUMOR].largest_diameter_mm - 2 * radius) <= diagonal


def test_organ_mask_uses_its_own_label_table(phantom):
    measured = measure_mask(phantom.organs)
    assert {m.value: m.name for m in measured} == {
        v: n for v, n in phantom.organs.labels.items() if v and np.any(phantom.organs.array == v)
    }
    kidney_left = next(m for m in measured if m.name == "kidney_left")
    assert kidney_left.voxel_count == np.count_nonzero(phantom.organs.array == 3)


def test_sphere_diameter_within_one_voxel_diagonal_on_anisotropic_grid():
    spacing = (0.7, 0.9, 2.5)
    radius_mm = 12.0
    shape = (24, 48, 60)  # z, y, x
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    centre_mm = np.array([20.3, 21.1, 29.7])
    d2 = (x * spacing[0] - centre_mm[0]) ** 2 + (y * spacing[1] - centre_mm[1]) ** 2 + (z * spacing[2] - centre_mm[2]) ** 2
    volume = Volume((d2 <= radius_mm**2).astype(np.uint8), spacing=spacing, labels={0: "background", 1: "ball"})
    (m,) = measure_mask(volume)
    assert abs(m.largest_diameter_mm - 2 * radius_mm) <= float(np.linalg.norm(spacing))
    assert m.largest_diameter_mm == pytest.approx(_brute_diameter(volume, volume.array == 1))
    assert m.volume_ml == pytest.approx(4 / 3 * math.pi * radius_mm**3 / 1000, rel=0.03)


@pytest.mark.parametrize("seed", range(5))
def test_diameter_equals_brute_force_on_random_blobs(seed):
    rng = np.random.default_rng(seed)
    array = (rng.random((9, 11, 13)) < 0.25).astype(np.uint8)
    direction = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    volume = Volume(array, spacing=(0.8, 1.3, 2.1), origin=(-5.0, 7.0, 3.0),
                    direction=tuple(direction.ravel()), labels={1: "speckle"})
    (m,) = measure_mask(volume)
    assert m.largest_diameter_mm == pytest.approx(_brute_diameter(volume, array == 1))
    for c in m.components:
        lo, hi = c.min_index, c.max_index
        box = np.zeros_like(array, dtype=bool)
        box[lo[2] : hi[2] + 1, lo[1] : hi[1] + 1, lo[0] : hi[0] + 1] = True
        assert c.voxel_count <= np.count_nonzero(array.astype(bool) & box)


def test_degenerate_shapes():
    array = np.zeros((5, 6, 40), np.uint8)
    array[2, 3, 7] = 1  # one voxel
    array[1, 1, 10:31] = 2  # a line of 21 voxels along x
    array[4, :, 33:39] = 3  # a flat 6 x 6 plate
    volume = Volume(array, spacing=(0.5, 2.0, 3.0), labels={1: "dot", 2: "line", 3: "plate"})
    by_name = {m.name: m for m in measure_mask(volume)}
    assert by_name["dot"].largest_diameter_mm == 0.0
    assert by_name["dot"].components[0].largest_diameter_mm == 0.0
    assert by_name["line"].largest_diameter_mm == pytest.approx(20 * 0.5)
    assert by_name["plate"].largest_diameter_mm == pytest.approx(math.hypot(5 * 0.5, 5 * 2.0))
    assert by_name["dot"].min_index == by_name["dot"].max_index == (7, 3, 2)


def test_component_counting_with_separated_blobs():
    array = np.zeros((30, 30, 30), np.uint8)
    centres = [(5, 5, 5), (20, 6, 8), (8, 22, 20), (22, 22, 22)]
    for i, c in enumerate(centres):
        array[_ball(array.shape, c, 2 + i)] = 1
    # two voxels touching only at a corner join under 26-connectivity
    array[27, 27, 27] = array[28, 28, 28] = 1
    volume = Volume(array, labels={1: "blob"})
    (m,) = measure_mask(volume)
    assert m.component_count == 5
    sizes = [c.voxel_count for c in m.components]
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[-1] == 2
    expected = sorted((np.count_nonzero(_ball(array.shape, c, 2 + i)) for i, c in enumerate(centres)), reverse=True)
    assert sizes[:4] == expected
    # the largest ball (radius 5 voxels around (22, 22, 22)) comes first, with its exact box
    assert m.components[0].min_index == (17, 17, 17) and m.components[0].max_index == (27, 27, 27)
    assert m.components[0].largest_diameter_mm == pytest.approx(10.0)


def test_small_stones_are_located_by_their_component_boxes():
    spacing = (0.7, 0.7, 1.0)
    array = np.zeros((40, 60, 60), np.uint8)
    array[5:35, 10:50, 10:50] = 1  # a block of "kidney"
    stones = {(20, 30, 12): (2, 2, 2), (45, 25, 30): (3, 1, 2), (30, 52, 22): (1, 1, 1)}  # (x, y, z) -> size
    for (x, y, z), (sx, sy, sz) in stones.items():
        array[z : z + sz, y : y + sy, x : x + sx] = 7
    origin = (-100.0, 50.0, 20.0)
    volume = Volume(array, spacing=spacing, origin=origin, labels={0: "background", 1: "kidney", 7: "stone"})
    stone = next(m for m in measure_mask(volume) if m.name == "stone")
    assert stone.component_count == 3
    found = {c.min_index: c for c in stone.components}
    for (x, y, z), (sx, sy, sz) in stones.items():
        c = found[(x, y, z)]
        assert c.max_index == (x + sx - 1, y + sy - 1, z + sz - 1)
        assert c.voxel_count == sx * sy * sz
        extent = np.subtract(c.max_mm, c.min_mm)
        assert np.all(extent < 3.0)  # the "< 3 mm" findings a report draws boxes around
        assert np.allclose(c.min_mm, np.add(origin, np.multiply((x, y, z), spacing)))
    assert [c.voxel_count for c in stone.components] == [8, 6, 1]


def test_direction_and_origin_are_applied_to_mm_boxes():
    array = np.zeros((10, 12, 14), np.uint8)
    array[2:5, 3:9, 4:6] = 1
    angle = math.radians(30)
    c, s = math.cos(angle), math.sin(angle)
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, -1.0)  # rotated about z, z flipped
    volume = Volume(array, spacing=(0.6, 0.8, 2.0), origin=(10.0, -20.0, 30.0), direction=direction, labels={1: "kidney"})
    (m,) = measure_mask(volume)
    assert m.min_index == (4, 3, 2) and m.max_index == (5, 8, 4)
    lo_mm, hi_mm = _sitk_corner_box(volume, m.min_index, m.max_index)
    assert np.allclose(m.min_mm, lo_mm) and np.allclose(m.max_mm, hi_mm)
    # z is flipped: the box's upper z comes from the lowest z index
    assert m.max_mm[2] == pytest.approx(30.0 - 2 * 2.0)
    assert m.largest_diameter_mm == pytest.approx(_brute_diameter(volume, array == 1))
    (summary,) = summarize_labels(volume)
    assert (summary.min_mm, summary.max_mm) == (m.min_mm, m.max_mm)


def test_summarize_matches_measure(phantom):
    summaries = summarize_labels(phantom.labels)
    measured = measure_mask(phantom.labels)
    assert len(summaries) == len(measured)
    for s, m in zip(summaries, measured):
        assert (s.value, s.name, s.voxel_count, s.min_index, s.max_index, s.min_mm, s.max_mm) == (
            m.value, m.name, m.voxel_count, m.min_index, m.max_index, m.min_mm, m.max_mm)
        assert s.volume_ml == pytest.approx(m.volume_ml)


def test_names_come_from_argument_then_table_then_convention():
    array = np.zeros((4, 4, 4), np.uint8)
    array[1, 1, 1] = 2
    array[2, 2, 2] = 9
    with pytest.raises(ValueError, match=r"\[9\].*2=tumor"):
        measure_mask(Volume(array))  # no table: the convention, which has no 9
    with pytest.raises(ValueError, match="9"):
        summarize_labels(Volume(array))
    table = {2: "cyst", 9: "stone"}
    assert [m.name for m in measure_mask(Volume(array, labels=table))] == ["cyst", "stone"]
    assert [m.name for m in measure_mask(Volume(array, labels=table), labels={2: "a", 9: "b"})] == ["a", "b"]
    assert [s.name for s in summarize_labels(Volume(array), require_names=False)] == ["tumor", ""]


def test_empty_mask_and_input_checks():
    assert measure_mask(Volume(np.zeros((3, 4, 5), np.uint8))) == []
    assert summarize_labels(Volume(np.zeros((3, 4, 5), np.uint16))) == []
    floats = np.zeros((3, 3, 3), np.float32)
    floats[1, 1, 1] = 1.0
    assert measure_mask(Volume(floats))[0].voxel_count == 1
    floats[0, 0, 0] = 0.5
    with pytest.raises(ValueError, match="whole numbers"):
        measure_mask(Volume(floats))
    with pytest.raises(ValueError, match=">= 0"):
        measure_mask(Volume(np.full((2, 2, 2), -1, np.int16)))


def test_progress_and_cancel(phantom):
    seen = []
    measure_mask(phantom.labels, progress=lambda stage, fraction, message: seen.append(fraction))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    with pytest.raises(OperationCancelled):
        measure_mask(phantom.labels, cancelled=lambda: True)


def test_counts_when_label_boxes_overlap_everywhere():
    # ten labels scattered over the whole volume: every box is the whole volume, so the
    # counting takes the chunked-histogram path instead of per-box counting
    rng = np.random.default_rng(0)
    array = rng.integers(0, 11, size=(20, 30, 40), dtype=np.uint16)
    volume = Volume(array, labels={v: f"l{v}" for v in range(11)})
    summaries = summarize_labels(volume)
    assert [s.value for s in summaries] == list(range(1, 11))
    for s in summaries:
        assert s.voxel_count == np.count_nonzero(array == s.value)
        assert s.min_index == (0, 0, 0) and s.max_index == (39, 29, 19)


def test_diameter_of_a_large_tilted_ellipsoid_matches_the_full_hull():
    # thousands of hull vertices: exercises the pruning of points that cannot end the diameter
    from scipy.spatial import ConvexHull

    shape = (40, 50, 90)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    u = (x - 45) * 0.9 + (y - 25) * 0.3
    v = -(x - 45) * 0.3 + (y - 25) * 0.9
    array = ((u / 40) ** 2 + (v / 18) ** 2 + ((z - 20) / 15) ** 2 <= 1).astype(np.uint8)
    volume = Volume(array, spacing=(0.8, 0.6, 1.7), origin=(3.0, 4.0, 5.0), labels={1: "kidney"})
    (m,) = measure_mask(volume)
    zz, yy, xx = np.nonzero(array)
    points = (np.stack([xx, yy, zz, np.ones_like(xx)]).T.astype(float) @ volume.index_to_physical_matrix().T)[:, :3]
    hull = points[ConvexHull(points).vertices]
    assert len(hull) > 256
    assert m.largest_diameter_mm == pytest.approx(float(pdist(hull).max()))
