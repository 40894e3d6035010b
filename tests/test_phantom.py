"""The synthetic CT phantom: determinism, geometry, ground truth against analytic shapes."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from medseg.labels import NAMES, STRUCTURES, Label
from medseg.labels import PHASES
from medseg.phantom import TOTAL_CLASSES, make_phantom
from medseg.volumes import read_volume

SMALL = (96, 96, 64)


@pytest.fixture(scope="module")
def case():
    return make_phantom(SMALL, seed=1)


def _ml(volume, mask) -> float:
    return float(np.count_nonzero(mask)) * volume.voxel_volume_mm3 / 1000.0


def _physical_points(volume, mask) -> np.ndarray:
    """Physical (x, y, z) mm of the voxel centres in mask."""
    z, y, x = np.nonzero(mask)
    index = np.stack([x, y, z, np.ones_like(x)]).astype(float)
    return (volume.index_to_physical_matrix() @ index)[:3].T


def _voxel_of(volume, point_mm) -> tuple[int, int, int]:
    """(z, y, x) array index of the voxel nearest to a physical point."""
    index = np.linalg.inv(volume.index_to_physical_matrix()) @ np.r_[point_mm, 1.0]
    x, y, z = np.rint(index[:3]).astype(int)
    return z, y, x


def _polyline_samples(points, step=0.5) -> np.ndarray:
    points = np.asarray(points, float)
    out = [points[:1]]
    for a, b in zip(points[:-1], points[1:]):
        n = max(2, int(np.linalg.norm(b - a) / step) + 1)
        out.append(a + (b - a) * np.linspace(0, 1, n)[1:, None])
    return np.concatenate(out)


def test_same_seed_gives_identical_bytes_and_other_seed_differs():
    a = make_phantom(SMALL, seed=7)
    b = make_phantom(SMALL, seed=7)
    c = make_phantom(SMALL, seed=8)
    assert a.labels.array.tobytes() == b.labels.array.tobytes()
    assert a.organs.array.tobytes() == b.organs.array.tobytes()
    for phase in PHASES:
        assert a.phases[phase].array.tobytes() == b.phases[phase].array.tobytes()
    assert a.labels.array.tobytes() != c.labels.array.tobytes()
    assert a.phases["portal"].array.tobytes() != c.phases["portal"].array.tobytes()


def test_shapes_dtypes_and_geometry_match(case):
    assert case.labels.array.shape == (SMALL[2], SMALL[1], SMALL[0])
    assert case.labels.size == SMALL
    assert case.labels.array.dtype == np.uint8
    assert case.organs.array.dtype == np.uint8
    assert set(case.phases) == set(PHASES)
    for volume in [case.organs, *case.phases.values()]:
        assert volume.same_grid(case.labels)
    for volume in case.phases.values():
        assert volume.array.dtype == np.int16
    # default spacing covers the default field of view, centred on the origin
    assert np.allclose(np.asarray(case.labels.spacing) * SMALL, (380.0, 380.0, 300.0))
    far_corner = case.labels.index_to_physical_matrix() @ np.r_[np.asarray(SMALL) - 1, 1.0]
    assert np.allclose(np.asarray(case.labels.origin), -far_corner[:3])
    assert case.labels.labels == NAMES
    assert case.organs.labels == {0: "background", **TOTAL_CLASSES}


def test_total_classes_are_totalsegmentator_v2_numbers():
    # spot checks against TotalSegmentator v2 class_map["total"]
    assert TOTAL_CLASSES[1] == "spleen"
    assert TOTAL_CLASSES[2] == "kidney_right"
    assert TOTAL_CLASSES[3] == "kidney_left"
    assert TOTAL_CLASSES[5] == "liver"
    assert TOTAL_CLASSES[21] == "urinary_bladder"
    assert TOTAL_CLASSES[27] == "vertebrae_L5" and TOTAL_CLASSES[31] == "vertebrae_L1"
    assert TOTAL_CLASSES[52] == "aorta"
    assert TOTAL_CLASSES[63] == "inferior_vena_cava"


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_every_convention_label_and_organ_is_present(seed):
    case = make_phantom(SMALL, seed=seed)
    present = set(np.unique(case.labels.array).tolist())
    assert present == set(NAMES), f"missing {set(NAMES) - present}"
    organs = set(np.unique(case.organs.array).tolist())
    assert organs <= {0, *TOTAL_CLASSES}
    for name in ("spleen", "kidney_right", "kidney_left", "liver", "urinary_bladder", "aorta", "inferior_vena_cava"):
        value = next(v for v, n in TOTAL_CLASSES.items() if n == name)
        assert value in organs, name


def test_kidney_volume_matches_analytic_ellipsoid():
    case = make_phantom(SMALL, seed=4, tumor=False)
    for side, value in (("right", 2), ("left", 3)):
        truth = case.anatomy["kidneys"][side]["volume_ml"]
        a, b, c = case.anatomy["kidneys"][side]["semi_axes_mm"]
        assert truth == pytest.approx(4 / 3 * math.pi * a * b * c / 1000)
        measured = _ml(case.organs, case.organs.array == value)
        assert measured == pytest.approx(truth, rel=0.03), side
    # without a tumor the convention kidney label is both kidneys exactly
    both = sum(k["volume_ml"] for k in case.anatomy["kidneys"].values())
    assert _ml(case.labels, case.labels.array == Label.KIDNEY) == pytest.approx(both, rel=0.03)
    assert not np.any(case.labels.array == Label.TUMOR)


def test_tumor_is_a_sphere_of_known_volume_partly_exophytic():
    case = make_phantom((160, 160, 120), seed=5)
    tumor = case.anatomy["tumor"]
    r = tumor["radius_mm"]
    assert 10 <= r <= 25
    measured = _ml(case.labels, case.labels.array == Label.TUMOR)
    # the discretisation error is bounded by surface area x half voxel diagonal
    half_diagonal = 0.5 * float(np.linalg.norm(case.labels.spacing))
    bound = 4 * math.pi * r * r * half_diagonal / 1000
    assert abs(measured - tumor["volume_ml"]) < 0.5 * bound
    # tumor voxels lie in the sphere
    points = _physical_points(case.labels, case.labels.array == Label.TUMOR)
    assert np.all(np.linalg.norm(points - tumor["centre_mm"], axis=1) <= r + 1e-3)
    # partly exophytic: some tumor voxels inside the kidney ellipsoid, some outside
    kidney = case.anatomy["kidneys"][tumor["side"]]
    q = (points - kidney["centre_mm"]) @ kidney["axes"]
    inside = ((q / kidney["semi_axes_mm"]) ** 2).sum(axis=1) <= 1
    assert 0.05 < inside.mean() < 0.95
    # in the organ mask the tumor counts as its kidney
    side_value = 3 if tumor["side"] == "left" else 2
    assert np.all(case.organs.array[case.labels.array == Label.TUMOR] == side_value)


def test_phase_enhancement_pattern(case):
    labels = case.labels.array

    def mean(phase, label):
        return float(case.phases[phase].array[labels == label].mean())

    assert mean("arterial", Label.ARTERY) > mean("arterial", Label.VEIN) + 100
    assert mean("portal", Label.VEIN) > mean("portal", Label.ARTERY)
    assert mean("arterial", Label.KIDNEY) > mean("arterial", Label.TUMOR)
    assert mean("arterial", Label.FAT) == pytest.approx(-100, abs=5)
    delayed = {value: mean("delayed", value) for value in STRUCTURES}
    assert max(delayed, key=delayed.get) == Label.URETER
    assert delayed[Label.URETER] > 600
    assert mean("delayed", Label.KIDNEY) < mean("arterial", Label.KIDNEY)
    # bladder fills with excreted contrast in the delayed phase only
    bladder = case.organs.array == 21
    assert case.phases["delayed"].array[bladder].mean() > 600
    assert case.phases["arterial"].array[bladder].mean() < 100
    # noise is present but modest
    kidney_sd = float(case.phases["portal"].array[labels == Label.KIDNEY].std())
    assert 5 < kidney_sd < 25
    air = case.phases["portal"].array[0, :4, :4]
    assert np.all(air < -900)


def test_renal_pelvis_fills_with_contrast_in_the_delayed_phase():
    case = make_phantom((128, 128, 100), seed=2)
    for side in ("left", "right"):
        kidney = case.anatomy["kidneys"][side]
        pelvis = kidney["pelvis"]
        z, y, x = _voxel_of(case.labels, pelvis["centre_mm"])
        assert case.labels.array[z, y, x] == Label.KIDNEY  # part of the kidney label
        assert case.phases["delayed"].array[z, y, x] > 550
        assert case.phases["arterial"].array[z, y, x] < 80


@pytest.mark.parametrize("seed", [0, 5, 9])
def test_everything_lies_inside_the_body(seed):
    case = make_phantom((64, 64, 50), seed=seed)
    body = case.anatomy["body"]
    ax, ay = body["semi_axes_mm"]
    fat = body["subcutaneous_fat_mm"]
    for volume in (case.labels, case.organs):
        points = _physical_points(volume, volume.array > 0)
        # inside the muscle wall (subcutaneous fat ring excluded), with half a voxel of slack
        slack = 0.5 * float(np.linalg.norm(volume.spacing))
        r = (points[:, 0] / (ax - fat + slack)) ** 2 + (points[:, 1] / (ay - fat + slack)) ** 2
        assert np.all(r <= 1.0)
    assert np.all(case.phases["portal"].array[case.labels.array > 0] > -300)


def test_anisotropic_spacing_gives_the_same_physical_volumes():
    iso = make_phantom((96, 96, 75), seed=6)  # ~3.96 x 3.96 x 4 mm
    aniso = make_phantom((380, 380, 60), spacing=(1.0, 1.0, 5.0), seed=6)
    assert aniso.labels.spacing == (1.0, 1.0, 5.0)
    assert iso.anatomy["kidneys"]["left"]["centre_mm"].tolist() == aniso.anatomy["kidneys"]["left"]["centre_mm"].tolist()
    for value in (Label.KIDNEY, Label.TUMOR, Label.FAT, Label.ARTERY):
        a = _ml(iso.labels, iso.labels.array == value)
        b = _ml(aniso.labels, aniso.labels.array == value)
        assert a == pytest.approx(b, rel=0.08), NAMES[value]
    for value in (2, 3, 5):
        a = _ml(iso.organs, iso.organs.array == value)
        b = _ml(aniso.organs, aniso.organs.array == value)
        assert a == pytest.approx(b, rel=0.04), TOTAL_CLASSES[value]


def test_rotated_direction_keeps_the_body_in_place():
    angle = math.radians(90)
    c, s = math.cos(angle), math.sin(angle)
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    plain = make_phantom((80, 80, 60), seed=2)
    turned = make_phantom((80, 80, 60), seed=2, direction=direction)
    assert turned.labels.direction == direction
    for value in (Label.KIDNEY, Label.TUMOR, Label.FAT):
        assert _ml(turned.labels, turned.labels.array == value) == pytest.approx(
            _ml(plain.labels, plain.labels.array == value), rel=0.02
        )
    # the left kidney's centroid sits at the same physical place on both grids
    for volume in (plain.organs, turned.organs):
        centroid = _physical_points(volume, volume.array == 3).mean(axis=0)
        assert np.allclose(centroid, plain.anatomy["kidneys"]["left"]["centre_mm"], atol=6.0)


def test_fat_only_where_no_other_structure_is(case):
    labels, organs = case.labels.array, case.organs.array
    fat = labels == Label.FAT
    assert fat.any()
    assert not np.any(organs[fat]), "fat overlaps an organ of the whole-body mask"
    # every fat voxel lies within the known shell thickness around a kidney (or the tumor)
    points = _physical_points(case.labels, fat)
    within = np.zeros(len(points), bool)
    for side, kidney in case.anatomy["kidneys"].items():
        t = kidney["fat_thickness_mm"]
        assert 8 <= t <= 15
        q = (points - kidney["centre_mm"]) @ kidney["axes"]
        within |= ((q / (kidney["semi_axes_mm"] + t)) ** 2).sum(axis=1) <= 1 + 1e-6
        tumor = case.anatomy["tumor"]
        if tumor and tumor["side"] == side:
            within |= np.linalg.norm(points - tumor["centre_mm"], axis=1) <= tumor["radius_mm"] + t + 1e-3
    assert within.all()


def test_tube_centrelines_keep_their_labels(case):
    """Vessels and ureters are never overwritten by fat: their centre-line voxels carry their
    own label, or the kidney/tumor/bladder they end in."""
    labels, organs = case.labels.array, case.organs.array
    shape = labels.shape
    for name, tube in case.anatomy["tubes"].items():
        expected = next(v for v, n in NAMES.items() if n == tube["label"])
        seen = []
        for point in _polyline_samples(tube["points_mm"], step=2.0):
            z, y, x = _voxel_of(case.labels, point)
            if not (0 <= z < shape[0] and 0 <= y < shape[1] and 0 <= x < shape[2]):
                continue
            seen.append(labels[z, y, x])
            assert labels[z, y, x] in (expected, Label.ARTERY, Label.VEIN, Label.KIDNEY, Label.TUMOR) or organs[z, y, x] == 21, name
            assert labels[z, y, x] != Label.FAT, name
        assert seen.count(expected) >= 0.6 * len(seen), name


@pytest.mark.parametrize("seed", range(24))
def test_tubes_do_not_collide(seed):
    """Arteries, veins and ureters keep clear of one another (their centre-lines are farther
    apart than the sum of radii), except where a branch leaves its parent."""
    anatomy = make_phantom((8, 8, 8), seed=seed).anatomy  # anatomy does not depend on the grid
    tubes = anatomy["tubes"]
    samples = {name: _polyline_samples(t["points_mm"]) for name, t in tubes.items()}
    names = sorted(tubes)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ta, tb = tubes[a], tubes[b]
            if ta["label"] == tb["label"] and ta["label"] != "ureter":
                continue  # same tree (branches join their parent)
            gap = np.min(np.linalg.norm(samples[a][:, None, :] - samples[b][None, :, :], axis=2))
            assert gap > ta["radius_mm"] + tb["radius_mm"] + 0.5, (a, b, gap)


def test_structures_are_connected_at_fine_resolution():
    case = make_phantom((190, 190, 150), seed=0)  # 2 mm voxels
    labels = case.labels.array
    structure = np.ones((3, 3, 3), bool)
    for value, expected in ((Label.ARTERY, 1), (Label.VEIN, 1), (Label.URETER, 2), (Label.KIDNEY, 2)):
        _, count = ndimage.label(labels == value, structure=structure)
        assert count == expected, NAMES[value]
    # each renal artery and vein reaches its kidney: the kidney touches the dilated vessel
    kidneys = labels == Label.KIDNEY
    for value in (Label.ARTERY, Label.VEIN, Label.URETER):
        grown = ndimage.binary_dilation(labels == value, structure=structure)
        _, touched = ndimage.label(kidneys & grown, structure=structure)
        assert touched >= 2, NAMES[value]


def test_anatomy_is_plausible():
    anatomy = make_phantom((8, 8, 8), seed=11).anatomy
    kidneys = anatomy["kidneys"]
    assert kidneys["left"]["centre_mm"][0] > 0 > kidneys["right"]["centre_mm"][0]  # LPS: +x = left
    aorta, ivc = anatomy["tubes"]["aorta"], anatomy["tubes"]["inferior_vena_cava"]
    assert aorta["points_mm"][0][0] > 0 > ivc["points_mm"][0][0]
    assert anatomy["liver"]["centre_mm"][0] < 0 < anatomy["spleen"]["centre_mm"][0]
    for side, kidney in kidneys.items():
        long_axis = kidney["axes"][:, 2]
        assert long_axis[2] > 0.8  # roughly cranio-caudal
        # the upper pole leans towards the midline
        assert np.sign(long_axis[0]) == -np.sign(kidney["centre_mm"][0])
        # the hilum faces medially
        assert abs(kidney["hilum_mm"][0]) < abs(kidney["centre_mm"][0])
    vertebra = {v["name"]: v for v in anatomy["vertebrae"]}
    l1, l3 = vertebra["vertebrae_L1"]["z_range_mm"], vertebra["vertebrae_L3"]["z_range_mm"]
    for kidney in kidneys.values():
        assert l3[0] - 20 < kidney["centre_mm"][2] < l1[1] + 20


def test_write_round_trip(tmp_path, case):
    paths = case.write(tmp_path / "case")
    assert set(paths) == {"labels", "organs", *PHASES}
    labels = read_volume(paths["labels"])
    assert labels.same_grid(case.labels)
    assert np.array_equal(labels.array, case.labels.array)
    assert np.array_equal(read_volume(paths["organs"]).array, case.organs.array)
    for phase in PHASES:
        assert np.array_equal(read_volume(paths[phase]).array, case.phases[phase].array)
    assert (tmp_path / "case" / "anatomy.json").is_file()


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="size"):
        make_phantom((0, 10, 10))
    with pytest.raises(ValueError, match="spacing"):
        make_phantom((10, 10, 10), spacing=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="direction"):
        make_phantom((10, 10, 10), direction=(1, 1, 0, 0, 1, 0, 0, 0, 1))


@pytest.mark.slow
def test_full_size_case():
    case = make_phantom((512, 512, 300), spacing=(0.8, 0.8, 1.0), seed=9)
    assert case.labels.array.shape == (300, 512, 512)
    assert set(np.unique(case.labels.array).tolist()) == set(NAMES)
    for side, value in (("right", 2), ("left", 3)):
        kidney = case.anatomy["kidneys"][side]
        if case.anatomy["tumor"]["side"] != side:
            assert _ml(case.organs, case.organs.array == value) == pytest.approx(kidney["volume_ml"], rel=0.01)


def test_acquisition_variety_scales_body_and_contrast(case):
    """Training variety: body_scale grows every structure about the origin, contrast scales the
    enhancement over each tissue's least-enhanced phase, noise_hu the noise; labels follow."""
    varied = make_phantom(SMALL, seed=1, body_scale=1.1, contrast=0.5, noise_hu=0.0)
    kidney = int(Label.KIDNEY)
    grown = _ml(varied.labels, varied.labels.array == kidney) / _ml(case.labels, case.labels.array == kidney)
    assert grown == pytest.approx(1.1 ** 3, rel=0.04)
    artery = varied.labels.array == int(Label.ARTERY)
    # aorta 300 HU arterial, 100 HU at its least (delayed): half the enhancement is 200 HU
    assert np.median(varied.phases["arterial"].array[artery]) == pytest.approx(200, abs=2)
    fat = varied.labels.array == int(Label.FAT)
    assert np.all(varied.phases["arterial"].array[fat] == -100)  # no enhancement, no noise
    assert varied.anatomy["acquisition"] == {"noise_hu": 0.0, "contrast": 0.5, "body_scale": 1.1}
    for bad in ({"contrast": 0.0}, {"body_scale": 3.0}):
        with pytest.raises(ValueError):
            make_phantom(SMALL, seed=1, **bad)
