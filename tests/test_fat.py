"""AddFat against analytic shapes (known volumes) and, when available, the phantom's fat shell."""
from __future__ import annotations

import math

import numpy as np
import pytest

from medseg.labels import NAMES, Label
from medseg.params import ParameterError
from medseg.volumes import Volume
from postprocess_svc.fat import add_fat
from medseg.progress import OperationCancelled

SPACING = (2.0, 2.0, 3.0)  # x, y, z mm: anisotropic on purpose
SIZE = (100, 80, 60)  # x, y, z voxels
ORIGIN = (-100.0, -80.0, 50.0)
ORGANS_TABLE = {2: "kidney_right", 3: "kidney_left", 5: "liver", 52: "aorta"}
LIVER = 5
HU_SOFT, HU_KIDNEY, HU_FAT = 40, 150, -100


def physical_grid():
    """Physical (x, y, z) mm of every voxel, each (z, y, x)-shaped, centred on the volume."""
    zi, yi, xi = np.meshgrid(*(np.arange(n) for n in reversed(SIZE)), indexing="ij")
    x = ORIGIN[0] + xi * SPACING[0]
    y = ORIGIN[1] + yi * SPACING[1]
    z = ORIGIN[2] + zi * SPACING[2]
    centre = [ORIGIN[i] + (SIZE[i] - 1) * SPACING[i] / 2 for i in range(3)]
    return x - centre[0], y - centre[1], z - centre[2]


def volume(array, labels=None):
    return Volume(array, spacing=SPACING, origin=ORIGIN, labels=labels)


def ellipsoid_slab_volume(a, b, c, half_height):
    """Volume of the ellipsoid x²/a²+y²/b²+z²/c² <= 1 between z = -h and z = h (h <= c)."""
    h = min(half_height, c)
    return math.pi * a * b * (2 * h - 2 * h**3 / (3 * c**2))


def ellipsoid_case(with_intruders: bool):
    """Kidney ellipsoid inside a -100 HU shell 10 mm thick on each semi-axis.

    with_intruders: an artery tube and a liver block cross the shell where the CT still
    reads fat (the masks must win), and a fat blob floats detached from the shell.
    """
    a, b, c, t = 30.0, 22.0, 45.0, 10.0
    x, y, z = physical_grid()
    kidney = (x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2 <= 1
    outer = (x / (a + t)) ** 2 + (y / (b + t)) ** 2 + (z / (c + t)) ** 2 <= 1
    shell = outer & ~kidney
    labels = np.zeros(kidney.shape, np.uint8)
    labels[kidney] = Label.KIDNEY
    organs = np.zeros(kidney.shape, np.uint8)
    organs[kidney] = 3
    ct = np.full(kidney.shape, HU_SOFT, np.int16)
    ct[kidney] = HU_KIDNEY
    ct[shell] = HU_FAT
    artery = liver = blob = np.zeros(kidney.shape, bool)
    if with_intruders:
        artery = ((x - (a + 5)) ** 2 + z**2 <= 4.0**2) & ~kidney
        labels[artery] = Label.ARTERY
        liver = (y > b - 2) & (np.abs(x) < 15) & ~kidney
        organs[liver] = LIVER
        # Detached fat 12..14 mm from the kidney along -x: separated by soft tissue.
        blob = (np.abs(x + a + 13) <= 1.5) & (np.abs(y) <= 4) & (np.abs(z) <= 4)
        ct[blob] = HU_FAT
    kidney_slices = np.flatnonzero(kidney.any(axis=(1, 2)))
    in_kidney_extent = np.zeros(kidney.shape, bool)
    in_kidney_extent[kidney_slices[0] : kidney_slices[-1] + 1] = True
    truth = shell & ~artery & ~liver & in_kidney_extent
    analytic_ml = (ellipsoid_slab_volume(a + t, b + t, c + t, c) - 4 / 3 * math.pi * a * b * c) / 1000
    return (
        volume(labels, dict(NAMES)),
        volume(organs, ORGANS_TABLE),
        volume(ct),
        truth,
        analytic_ml,
    )


def test_ct_fat_shell_volume_matches_analytic():
    mask, organs, ct, truth, analytic_ml = ellipsoid_case(with_intruders=False)
    out, report = add_fat(mask, organs, ct, margin_mm=15.0)
    fat = out.array == Label.FAT
    voxel_ml = np.prod(SPACING) / 1000
    assert report.used_ct and report.hu_window == (-190.0, -30.0)
    assert report.fat_voxels == fat.sum()
    assert report.fat_volume_ml == pytest.approx(fat.sum() * voxel_ml)
    # The CT bounds the shell: the voxelised truth is found exactly.
    assert np.array_equal(fat, truth)
    assert report.fat_volume_ml == pytest.approx(analytic_ml, rel=0.10)


def test_fat_never_inside_other_structures_or_outside_window():
    mask, organs, ct, truth, _ = ellipsoid_case(with_intruders=True)
    out, report = add_fat(mask, organs, ct, margin_mm=15.0)
    fat = out.array == Label.FAT
    assert not np.any(fat & (mask.array != 0))
    assert not np.any(fat & (organs.array == LIVER))
    assert np.all((ct.array[fat] >= -190) & (ct.array[fat] <= -30))
    # The detached blob is within the margin and fat-like, but does not touch the kidney.
    assert np.array_equal(fat, truth)
    assert report.fat_volume_ml == pytest.approx(truth.sum() * np.prod(SPACING) / 1000, rel=0.10)
    # Everything but fat is untouched.
    assert np.array_equal(out.array[~fat], mask.array[~fat])


def test_geometric_region_without_ct_is_a_mm_shell():
    """Sphere kidney, no CT: fat = ball(R + margin) within the kidney's z extent minus the kidney."""
    radius, margin = 30.0, 10.0
    x, y, z = physical_grid()
    r = np.sqrt(x**2 + y**2 + z**2)
    kidney = r <= radius
    labels = np.where(kidney, Label.KIDNEY, 0).astype(np.uint8)
    organs = np.where(kidney, 2, 0).astype(np.uint8)
    out, report = add_fat(volume(labels, dict(NAMES)), volume(organs, ORGANS_TABLE), None, margin_mm=margin)
    assert not report.used_ct and report.hu_window is None
    assert "no CT" in report.note
    analytic_ml = (ellipsoid_slab_volume(*(radius + margin,) * 3, radius) - 4 / 3 * math.pi * radius**3) / 1000
    assert report.fat_volume_ml == pytest.approx(analytic_ml, rel=0.10)
    fat = out.array == Label.FAT
    # Spacing honoured: the farthest fat voxel along every axis is within margin of the kidney.
    assert r[fat].max() <= radius + margin + max(SPACING)
    for axis_coord in (x, y):
        assert np.abs(axis_coord[fat]).max() == pytest.approx(radius + margin, abs=max(SPACING))


def test_cropped_and_whole_volume_paths_are_identical():
    mask, organs, ct, _, _ = ellipsoid_case(with_intruders=True)
    cropped, report_cropped = add_fat(mask, organs, ct, margin_mm=12.0)
    whole, report_whole = add_fat(mask, organs, ct, margin_mm=12.0, whole_volume=True)
    assert np.array_equal(cropped.array, whole.array)
    assert np.prod(report_cropped.region_shape) < np.prod(report_whole.region_shape)
    assert report_whole.region_shape == mask.array.shape
    geometric_cropped, _ = add_fat(mask, organs, None, margin_mm=12.0)
    geometric_whole, _ = add_fat(mask, organs, None, margin_mm=12.0, whole_volume=True)
    assert np.array_equal(geometric_cropped.array, geometric_whole.array)


def test_existing_fat_is_replaced_and_progress_reported():
    mask, organs, ct, truth, _ = ellipsoid_case(with_intruders=False)
    stale = mask.array.copy()
    stale[:3] = Label.FAT  # stale fat far from the kidney
    stages = []
    out, report = add_fat(volume(stale, dict(NAMES)), organs, ct, margin_mm=15.0, progress=lambda s, f, m: stages.append((s, f)))
    assert report.replaced_existing_fat
    assert np.array_equal(out.array == Label.FAT, truth)
    assert stages[0][0] == "validate" and stages[-1] == ("done", 1.0)
    assert [f for _, f in stages] == sorted(f for _, f in stages)
    with pytest.raises(OperationCancelled):
        add_fat(mask, organs, ct, cancelled=lambda: True)


def test_bad_inputs_get_clear_errors():
    mask, organs, ct, _, _ = ellipsoid_case(with_intruders=False)
    no_kidney = volume(np.zeros_like(mask.array), dict(NAMES))
    with pytest.raises(ValueError, match=r"mask has no kidney \(label 1\) voxels"):
        add_fat(no_kidney, organs, ct)
    foreign = mask.array.copy()
    foreign[0, 0, :2] = (9, 42)
    with pytest.raises(ValueError, match=r"mask has values \[9, 42\] outside the label convention"):
        add_fat(volume(foreign), organs, ct)
    other_spacing = Volume(ct.array, spacing=(2.0, 2.0, 2.5), origin=ORIGIN)
    with pytest.raises(ValueError, match=r"ct is not on the mask's grid.*spacing \(2, 2, 2.5\) vs \(2, 2, 3\)"):
        add_fat(mask, organs, other_spacing)
    smaller = Volume(organs.array[:-1], spacing=SPACING, origin=ORIGIN)
    with pytest.raises(ValueError, match=r"organs is not on the mask's grid.*size"):
        add_fat(mask, smaller, ct)
    shifted = Volume(ct.array, spacing=SPACING, origin=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="origin"):
        add_fat(mask, organs, shifted)
    with pytest.raises(ParameterError, match="margin_mm") as info:
        add_fat(mask, organs, ct, margin_mm=0)
    assert info.value.name == "margin_mm"
    with pytest.raises(ParameterError, match="hu_min: must be below hu_max") as info:
        add_fat(mask, organs, ct, hu_min=-30, hu_max=-190)
    assert info.value.name == "hu_min"


# ---------------------------------------------------------------- phantom with a known fat shell
@pytest.fixture(scope="module")
def phantom_case():
    from medseg import phantom
    return phantom.make_phantom(size=(128, 128, 96), seed=0)  # about 3 mm voxels


def _without_fat(labels: Volume) -> Volume:
    return labels.with_array(np.where(labels.array == Label.FAT, 0, labels.array).astype(np.uint8), labels.labels)


def _phantom_margin(case) -> float:
    # The shell is the kidney ellipsoid grown by t on each semi-axis: every shell point lies
    # within t of the kidney; one voxel more absorbs the sampling.
    thickness = max(side["thickness_mm"] for side in case.anatomy["perirenal_fat"].values())
    return thickness + max(case.labels.spacing)


@pytest.mark.parametrize("phase", ["portal", "arterial"])
def test_phantom_fat_shell_volume_and_purity(phantom_case, phase):
    case = phantom_case
    truth = case.labels.array == Label.FAT
    mask = _without_fat(case.labels)
    ct = case.phases[phase]
    margin = _phantom_margin(case)
    out, report = add_fat(mask, case.organs, ct, margin_mm=margin, craniocaudal_margin_mm=margin)
    fat = out.array == Label.FAT
    truth_ml = truth.sum() * case.labels.voxel_volume_mm3 / 1000
    assert report.fat_volume_ml == pytest.approx(truth_ml, rel=0.10)
    assert 2 * (fat & truth).sum() / (fat.sum() + truth.sum()) >= 0.95
    # Never inside another structure or organ, never outside the HU window.
    assert not np.any(fat & (mask.array != 0))
    other_organ = (case.organs.array != 0) & ~np.isin(case.organs.array, [2, 3])
    assert not np.any(fat & other_organ)
    hu = ct.array[fat]
    assert hu.min() >= -190 and hu.max() <= -30
    assert np.array_equal(out.array[~fat], mask.array[~fat])


def test_phantom_default_limits_fat_to_kidney_extent(phantom_case):
    """Default: only the slices the kidneys (and tumor) span; the phantom's polar caps are cut."""
    case = phantom_case
    mask = _without_fat(case.labels)
    margin = _phantom_margin(case)
    out, report = add_fat(mask, case.organs, case.phases["portal"], margin_mm=margin)
    kidney_slices = np.flatnonzero(np.isin(mask.array, [Label.KIDNEY, Label.TUMOR]).any(axis=(1, 2)))
    in_extent = np.zeros(mask.array.shape, bool)
    in_extent[kidney_slices[0] : kidney_slices[-1] + 1] = True
    truth = (case.labels.array == Label.FAT) & in_extent
    fat = out.array == Label.FAT
    assert not np.any(fat & ~in_extent)
    assert report.fat_volume_ml == pytest.approx(truth.sum() * case.labels.voxel_volume_mm3 / 1000, rel=0.10)


def test_phantom_cropped_equals_whole_volume_and_geometric_region(phantom_case):
    case = phantom_case
    mask = _without_fat(case.labels)
    margin = _phantom_margin(case)
    cropped, report = add_fat(mask, case.organs, case.phases["portal"], margin_mm=margin)
    whole, _ = add_fat(mask, case.organs, case.phases["portal"], margin_mm=margin, whole_volume=True)
    assert np.array_equal(cropped.array, whole.array)
    assert np.prod(report.region_shape) < 0.2 * mask.array.size
    # Without the CT the region is purely geometric: a superset of the CT result.
    geometric, geometric_report = add_fat(mask, case.organs, None, margin_mm=margin)
    assert not geometric_report.used_ct
    assert np.all(geometric.array[cropped.array == Label.FAT] == Label.FAT)
    assert geometric_report.fat_volume_ml >= report.fat_volume_ml


def test_phantom_anisotropic_and_rotated_grid():
    """Thick slices and a non-identity direction (axes permuted and flipped): same physics."""
    from medseg import phantom
    # index x -> physical -y, index y -> physical x, index z -> physical z.
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    case = phantom.make_phantom(size=(120, 120, 60), spacing=(3.0, 3.0, 5.0), seed=2, direction=direction)
    truth = case.labels.array == Label.FAT
    mask = _without_fat(case.labels)
    margin = _phantom_margin(case)
    out, report = add_fat(mask, case.organs, case.phases["delayed"], margin_mm=margin, craniocaudal_margin_mm=margin)
    fat = out.array == Label.FAT
    assert report.fat_volume_ml == pytest.approx(truth.sum() * case.labels.voxel_volume_mm3 / 1000, rel=0.10)
    assert 2 * (fat & truth).sum() / (fat.sum() + truth.sum()) >= 0.9
    assert not np.any(fat & (mask.array != 0))


def test_craniocaudal_limit_follows_physical_axis_not_array_axis():
    """Index y runs along physical z (a coronal-style grid): the S-I limit must use it."""
    from medseg import phantom
    direction = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0)  # index y -> physical z, index z -> physical y
    case = phantom.make_phantom(size=(120, 100, 120), spacing=(3.0, 3.0, 3.0), seed=1, direction=direction)
    mask = _without_fat(case.labels)
    margin = _phantom_margin(case)
    out, _ = add_fat(mask, case.organs, case.phases["portal"], margin_mm=margin)
    fat = out.array == Label.FAT
    kidney_rows = np.flatnonzero(np.isin(mask.array, [Label.KIDNEY, Label.TUMOR]).any(axis=(0, 2)))
    fat_rows = np.flatnonzero(fat.any(axis=(0, 2)))
    assert fat_rows.min() >= kidney_rows.min() and fat_rows.max() <= kidney_rows.max()
    # Along the array's z (physical y) the shell is not cut: fat reaches beyond the kidney.
    kidney_z = np.flatnonzero(np.isin(mask.array, [Label.KIDNEY, Label.TUMOR]).any(axis=(1, 2)))
    fat_z = np.flatnonzero(fat.any(axis=(1, 2)))
    assert fat_z.min() < kidney_z.min() or fat_z.max() > kidney_z.max()


@pytest.mark.parametrize("seed", [10000, 10001, 10002, 10003])
def test_default_margin_finds_the_fat_out_to_the_fascia_whatever_its_thickness(seed):
    """With a CT the defaults follow the fat out to where soft tissue bounds it (the phantom's
    renal fascia lies 8-15 mm out), instead of cutting it at a fixed distance."""
    from medseg import phantom

    case = phantom.make_phantom(size=(127, 127, 100), seed=seed)
    truth = case.labels.array == Label.FAT
    out, report = add_fat(_without_fat(case.labels), case.organs, case.phases["portal"])
    fat = out.array == Label.FAT
    assert report.margin_mm == 20.0
    assert 2 * (fat & truth).sum() / (fat.sum() + truth.sum()) >= 0.95
    assert abs(int(fat.sum()) - int(truth.sum())) <= 0.08 * truth.sum()
    # Without a CT the region is geometric: 10 mm unless told otherwise.
    assert add_fat(_without_fat(case.labels), case.organs, None)[1].margin_mm == 10.0
