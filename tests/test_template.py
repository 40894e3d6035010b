"""SampleFromTemplate: recovering a known affine, keeping the patient's own labels, bad inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.labels import NAMES, Label
from medseg.metrics import dice
from medseg.volumes import Volume, read_volume
from medseg.progress import OperationCancelled
from postprocess_svc.template import default_template_path, fit_template

# The shipped template is tumor-free (a tumor bump would distort every kidney fit).
TEMPLATE_STRUCTURES = (Label.KIDNEY, Label.ARTERY, Label.VEIN, Label.URETER)


def rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    return np.asarray(sitk.VersorTransform(tuple(axis), math.radians(degrees)).GetMatrix()).reshape(3, 3)


def tube(points, start, end, radius):
    """Voxels within radius of the segment start-end (points: (..., 3) mm)."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    axis = end - start
    t = np.clip(((points - start) @ axis) / (axis @ axis), 0, 1)
    nearest = start + t[..., None] * axis
    return np.linalg.norm(points - nearest, axis=-1) <= radius


def analytic_template(spacing=2.0, size=(120, 90, 120), origin=(-120.0, -80.0, -130.0)) -> Volume:
    """Two tilted kidney ellipsoids, a tumor, aorta/IVC, renal vessels and ureters (LPS mm)."""
    zi, yi, xi = np.meshgrid(*(np.arange(n) for n in reversed(size)), indexing="ij")
    points = np.stack([origin[0] + xi * spacing, origin[1] + yi * spacing, origin[2] + zi * spacing], axis=-1)
    labels = np.zeros(points.shape[:3], np.uint8)

    def ellipsoid(centre, axes, rot):
        local = (points - np.asarray(centre)) @ rot  # rot columns = ellipsoid axes
        return ((local / np.asarray(axes)) ** 2).sum(-1) <= 1

    right_kidney = ellipsoid((-55, 25, 0), (24, 19, 50), rotation((0, 1, 0.3), 15))
    left_kidney = ellipsoid((55, 28, 12), (23, 18, 47), rotation((0.2, 1, 0), -12))
    tumor = np.linalg.norm(points - np.array([72, 30, 40]), axis=-1) <= 13
    structures = [
        (Label.ARTERY, tube(points, (10, -5, 80), (10, -5, -120), 9) | tube(points, (10, -5, 10), (38, 22, 14), 3.5) | tube(points, (10, -5, 4), (-40, 20, 0), 3.5)),
        (Label.VEIN, tube(points, (-18, -5, 80), (-18, -5, -120), 10) | tube(points, (-18, -5, 14), (38, 26, 8), 5) | tube(points, (-18, -5, 0), (-38, 22, -4), 5)),
        (Label.URETER, tube(points, (-40, 30, -25), (-35, 35, -120), 2.5) | tube(points, (40, 32, -15), (35, 37, -120), 2.5)),
    ]
    for value, voxels in structures:
        labels[voxels] = value
    labels[right_kidney | left_kidney] = Label.KIDNEY
    labels[tumor] = Label.TUMOR
    return Volume(labels, spacing=(spacing,) * 3, origin=origin, labels=dict(NAMES))


def known_affine(centre) -> sitk.AffineTransform:
    """Rotation 10 degrees, anisotropic scale about 1.1, shift 10 mm (maps patient -> template points)."""
    affine = sitk.AffineTransform(3)
    matrix = rotation((0.3, 0.2, 1.0), 10) @ np.diag([1.1, 1.05, 0.95])
    affine.SetMatrix(tuple(matrix.ravel()))
    affine.SetCenter(tuple(centre))
    affine.SetTranslation((10.0, -6.0, 4.0))
    return affine


def warp(template: Volume, transform, spacing, size, origin, direction=None) -> Volume:
    reference = sitk.Image(list(size), sitk.sitkUInt8)
    reference.SetSpacing(spacing)
    reference.SetOrigin(origin)
    if direction is not None:
        reference.SetDirection(direction)
    warped = sitk.Resample(sitk.Cast(template.to_image(), sitk.sitkUInt8), reference, transform, sitk.sitkNearestNeighbor, 0)
    return Volume.from_image(warped, labels=dict(NAMES))



def patient_from(truth: Volume) -> Volume:
    """What the patient mask holds: kidney and tumor only."""
    keep = np.isin(truth.array, [Label.KIDNEY, Label.TUMOR])
    return truth.with_array(np.where(keep, truth.array, 0).astype(np.uint8), labels=dict(NAMES))


@pytest.fixture(scope="module")
def template():
    return read_volume(default_template_path(), labels=dict(NAMES))


def warped_by_known_affine(template):
    """The template warped by a known affine onto an anisotropic patient grid with a flipped axis."""
    centre = template.index_to_physical_matrix() @ np.r_[np.asarray(template.size) / 2, 1]
    transform = known_affine(centre[:3])
    spacing = (1.8, 1.8, 2.5)
    extent = np.asarray(template.size) * np.asarray(template.spacing) * 1.25
    size = tuple(int(e / s) for e, s in zip(extent, spacing))
    # x index runs towards -x (an LPS flip), so direction handling is exercised.
    direction = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    origin = (centre[0] + extent[0] / 2, centre[1] - extent[1] / 2, centre[2] - extent[2] / 2)
    truth = warp(template, transform, spacing, size, origin, direction)
    return truth, transform


@pytest.fixture(scope="module")
def warped_case(template):
    return warped_by_known_affine(template)


def test_template_has_every_structure(template):
    present = set(np.unique(template.array).tolist())
    assert {int(v) for v in TEMPLATE_STRUCTURES} <= present


def test_known_affine_is_recovered(template, warped_case):
    truth, _ = warped_case
    patient = patient_from(truth)
    stages = []
    out, report = fit_template(patient, template, progress=lambda s, f, m: stages.append(s))
    assert out.same_grid(patient)
    for value in TEMPLATE_STRUCTURES:
        assert (truth.array == value).sum() > 200, f"{NAMES[value]} missing from the warped truth"
        score = dice(out.array == value, truth.array == value)
        assert score >= 0.90, f"{NAMES[value]} Dice {score:.3f}"
    # The patient's own kidney and tumor are kept exactly.
    for value in (Label.KIDNEY, Label.TUMOR):
        assert np.array_equal(out.array == value, patient.array == value)
    assert set(np.unique(out.array).tolist()) == set(np.unique(truth.array).tolist())
    assert report.kidney_dice_after >= 0.95 and report.kidney_dice_after >= report.kidney_dice_before
    assert report.iterations > 0 and len(report.transform) == 15
    assert stages[0] == "validate" and stages[-1] == "done"


def test_whole_volume_path_agrees(template, warped_case):
    """The uncropped baseline registers on the whole grids: the same method, but the metric
    samples other voxels, so the optimum differs slightly (sub-mm); it must fit as well."""
    truth, _ = warped_case
    patient = patient_from(truth)
    out, report = fit_template(patient, template, whole_volume=True)
    assert report.region_shape == patient.array.shape
    assert report.kidney_dice_after >= 0.95
    for value in TEMPLATE_STRUCTURES:
        assert dice(out.array == value, truth.array == value) >= 0.90, NAMES[value]


def test_patient_labels_win_over_template(template, warped_case):
    truth, _ = warped_case
    patient = patient_from(truth)
    own_artery = np.zeros(patient.array.shape, bool)
    own_artery[: patient.array.shape[0] // 8] = True
    own_artery &= patient.array == 0
    with_artery = patient.array.copy()
    with_artery[own_artery] = Label.ARTERY
    out, _ = fit_template(patient.with_array(with_artery, dict(NAMES)), template)
    assert np.all(out.array[own_artery] == Label.ARTERY)
    assert np.array_equal(out.array[with_artery != 0], with_artery[with_artery != 0])


def test_bad_inputs(template, warped_case):
    truth, _ = warped_case
    patient = patient_from(truth)
    empty = patient.with_array(np.zeros_like(patient.array), dict(NAMES))
    with pytest.raises(ValueError, match=r"mask has no kidney \(label 1\) voxels"):
        fit_template(empty, template)
    no_kidney_template = template.with_array(np.where(template.array == Label.KIDNEY, 0, template.array).astype(np.uint8))
    with pytest.raises(ValueError, match=r"template has no kidney"):
        fit_template(patient, no_kidney_template)
    foreign = patient.array.copy()
    foreign[0, 0, 0] = 17
    with pytest.raises(ValueError, match=r"mask has values \[17\] outside the label convention"):
        fit_template(patient.with_array(foreign), template)
    foreign_template = template.array.copy()
    foreign_template[0, 0, 0] = 200
    with pytest.raises(ValueError, match=r"template has values \[200\]"):
        fit_template(patient, template.with_array(foreign_template))
    with pytest.raises(OperationCancelled):
        fit_template(patient, template, cancelled=lambda: True)


def test_shipped_template_is_used_by_default(warped_case):
    truth, _ = warped_case
    out, report = fit_template(patient_from(truth))
    assert "shipped template" in report.note
    assert report.kidney_dice_after >= 0.95
    for value in TEMPLATE_STRUCTURES:
        assert dice(out.array == value, truth.array == value) >= 0.90


def test_callers_own_template_with_tumor():
    """Another template (analytic anatomy, with a tumor) passed by the caller."""
    template = analytic_template()
    truth, _ = warped_by_known_affine(template)
    patient = patient_from(truth)
    out, report = fit_template(patient, template)
    assert "caller's template" in report.note
    assert report.template_labels == [int(Label.ARTERY), int(Label.VEIN), int(Label.URETER)]
    for value in (Label.ARTERY, Label.VEIN, Label.URETER):
        assert dice(out.array == value, truth.array == value) >= 0.90, NAMES[value]
    for value in (Label.KIDNEY, Label.TUMOR):
        assert np.array_equal(out.array == value, patient.array == value)


def test_single_kidney_patient_is_reported(template, warped_case):
    """A patient with one kidney against a two-kidney template: the report says so, and the
    Dice counts the template kidney that found no partner (it is not hidden outside a box)."""
    from scipy import ndimage

    truth, _ = warped_case
    patient = patient_from(truth)
    pieces, count = ndimage.label(patient.array != 0)
    assert count == 2
    one = patient.with_array(np.where(pieces == 1, patient.array, 0).astype(np.uint8), dict(NAMES))
    out, report = fit_template(one, template)
    assert (report.patient_kidneys, report.template_kidneys) == (1, 2)
    assert "the patient has 1 kidney(s), the template 2" in report.note
    assert report.kidney_dice_after < 0.8
    assert np.array_equal(out.array == Label.KIDNEY, one.array == Label.KIDNEY)
