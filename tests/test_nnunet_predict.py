"""Resident nnU-Net predictors: geometry, bad inputs, equality with nnU-Net's own CLI, kidney crop,
and the demo models' accuracy on held-out phantom cases (ground truth known voxel for voxel)."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medseg.labels import Label
from medseg.metrics import dice
from medseg.phantom import make_phantom
from medseg.progress import OperationCancelled
from medseg.volumes import Volume, read_volume, write_volume
from nnunet_svc.predict import (TaskPredictor, align_to_reference, find_trainer_class, kidney_region,
                                segment_case)
from nnunet_svc.registry import load_registry

CPU = torch.device("cpu")
SPACING = 3.0  # quick test cases: coarse grids
# The tumor model's training spacing: an image on it is not resampled (the crop's identity tests).
MODEL_SPACING = json.loads((load_registry()["tumor"].models[0].folder / "plans.json").read_text()
                           )["configurations"]["3d_fullres"]["spacing"][0]  # isotropic


def small_case(seed: int = 1000, **kw):
    """A small field of view (240 x 162 x 162 mm) around the kidneys: quick to predict."""
    return make_phantom(size=(80, 54, 54), spacing=(SPACING,) * 3, seed=seed, origin=(-118.5, -40.0, -80.0), **kw)


def full_case(seed: int = 1000, spacing: float = SPACING):
    """The whole-body field of view the demo models were trained on."""
    size = tuple(int(round(f / spacing)) for f in (380.0, 380.0, 300.0))
    return make_phantom(size=size, spacing=(spacing,) * 3, seed=seed)



@pytest.fixture(scope="module")
def registry():
    return load_registry()


_PREDICTORS: dict[str, TaskPredictor] = {}


@pytest.fixture(scope="module")
def predictor(registry):
    def get(task: str) -> TaskPredictor:
        if task not in _PREDICTORS:
            _PREDICTORS[task] = TaskPredictor(registry[task], CPU)
        return _PREDICTORS[task]
    return get


# ----------------------------------------------------------------------------- geometry helpers

def ramp(points: np.ndarray) -> np.ndarray:
    return 2.0 * points[..., 0] + 3.0 * points[..., 1] - points[..., 2] + 100.0


def sample_ramp(size, spacing, origin, direction) -> Volume:
    vol = Volume(np.zeros(size[::-1], np.float32), spacing, origin, direction)
    z, y, x = np.indices(vol.array.shape)
    idx = np.stack([x, y, z, np.ones_like(x)], -1).astype(float)
    phys = idx @ vol.index_to_physical_matrix().T
    return vol.with_array(ramp(phys[..., :3]).astype(np.float32))


def test_align_to_reference_resamples_in_physical_space():
    reference = sample_ramp((40, 30, 20), (2.0, 2.0, 3.0), (-40.0, -30.0, -30.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    # another grid: other spacing, origin, and axes flipped/permuted (x reversed, y<->z swapped)
    direction = (-1, 0, 0, 0, 0, 1, 0, 1, 0)
    moving = sample_ramp((60, 50, 60), (1.5, 1.7, 1.3), (45.0, -40.0, -35.0), direction)  # covers reference
    out = align_to_reference(reference, moving)
    assert out.same_grid(reference)
    # a linear function is reproduced exactly by linear interpolation inside the overlap
    np.testing.assert_allclose(out.array[2:-2, 2:-2, 2:-2], reference.array[2:-2, 2:-2, 2:-2], atol=1e-3)
    assert align_to_reference(reference, reference) is reference


def test_align_to_reference_rejects_images_that_do_not_overlap():
    reference = sample_ramp((10, 10, 10), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    far = sample_ramp((10, 10, 10), (1, 1, 1), (500, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(ValueError, match="do not overlap"):
        align_to_reference(reference, far)


def test_kidney_region_carries_a_box_across_grids():
    # kidney box on a coarse 4 mm grid: x 20..60 mm, y -8..24 mm, z 0..40 mm (voxel edges)
    hint = Volume(np.zeros((30, 30, 30), np.uint8), (4.0, 4.0, 4.0), (-58.0, -58.0, -58.0), labels={0: "background", 3: "kidney_left"})
    hint.array[15:25, 13:21, 20:30] = 3
    reference = Volume(np.zeros((80, 90, 100), np.int16), (2.0, 2.0, 2.0), (-99.0, -89.0, -79.0))
    box = kidney_region(reference, hint, margin_mm=10.0)
    # reference voxel i covers [origin + 2i - 1, origin + 2i + 1]: expected edges = box +- margin
    lo_mm = np.array([20.0 - 10, -8.0 - 10, 0.0 - 10])
    hi_mm = np.array([60.0 + 10, 24.0 + 10, 40.0 + 10])
    start = [(lo_mm[i] - reference.origin[i] + 1) / 2 for i in range(3)]
    stop = [(hi_mm[i] - reference.origin[i] + 1) / 2 for i in range(3)]
    got = [(box[2].start, box[2].stop), (box[1].start, box[1].stop), (box[0].start, box[0].stop)]
    for axis in range(3):
        assert got[axis][0] == pytest.approx(start[axis], abs=1)
        assert got[axis][1] == pytest.approx(stop[axis], abs=1)
    empty = hint.with_array(np.zeros_like(hint.array), hint.labels)
    assert kidney_region(reference, empty) is None


def test_a_kidney_hint_speck_far_from_the_kidneys_does_not_stretch_the_crop(predictor):
    reference = Volume(np.zeros((60, 70, 80), np.int16), (3.0, 3.0, 3.0), (0.0, 0.0, 0.0))
    hint = Volume(np.zeros((60, 70, 80), np.uint8), (3.0, 3.0, 3.0), (0.0, 0.0, 0.0),
                  labels={0: "background", 2: "kidney_right", 3: "kidney_left"})
    hint.array[20:35, 30:40, 10:22] = 2
    hint.array[20:35, 30:40, 55:67] = 3
    clean = predictor("tumor").locate_kidneys(reference, hint)
    hint.array[55:57, 2:4, 40:42] = 3  # a false-positive speck, as a model leaves
    assert predictor("tumor").locate_kidneys(reference, hint) == clean
    assert clean[0].stop - clean[0].start < 60


def test_crop_volume_keeps_every_voxel_in_place():
    vol = sample_ramp((20, 16, 12), (1.5, 2.0, 2.5), (10.0, -5.0, 3.0), (0, 1, 0, -1, 0, 0, 0, 0, 1))
    box = (slice(2, 9), slice(3, 12), slice(5, 17))
    crop = vol.crop(box)
    z, y, x = np.indices(crop.array.shape)
    idx = np.stack([x, y, z, np.ones_like(x)], -1).astype(float)
    phys = (idx @ crop.index_to_physical_matrix().T)[..., :3]
    np.testing.assert_allclose(crop.array, ramp(phys), atol=1e-3)


@pytest.mark.parametrize("spacing", [MODEL_SPACING, 2.5])  # the model's own spacing, and one nnU-Net resamples
def test_kidney_crop_is_made_of_the_tiles_nnunet_places_over_the_box(predictor, spacing):
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    part = predictor("tumor").parts[0]
    patch = [int(p) for p in part.predictor.configuration_manager.patch_size]  # in voxels of MODEL_SPACING
    size_zyx = [int(round(f / spacing)) for f in (300.0, 380.0, 380.0)]
    reference = Volume(np.zeros(size_zyx, np.int16), (spacing,) * 3, (0.0, 0.0, 0.0))
    box = (slice(40, 70), slice(50, 62), slice(30, 95))
    crop, starts = part.tile_crop(reference, box)
    for axis in range(3):
        assert 0 <= crop[axis].start <= box[axis].start and box[axis].stop <= crop[axis].stop <= size_zyx[axis]
        # never less than a patch: the network sees no padding the full image would not have
        assert (crop[axis].stop - crop[axis].start) * spacing >= patch[axis] * MODEL_SPACING - spacing
    if spacing == MODEL_SPACING:  # nothing resampled: the crop's tiles are exactly the full image's over the box
        full_steps = compute_steps_for_sliding_window(size_zyx, patch, part.predictor.tile_step_size)
        for axis in range(3):
            covering = [s for s in full_steps[axis] if s < box[axis].stop and s + patch[axis] > box[axis].start]
            assert [crop[axis].start + s for s in starts[axis]] == covering
        assert np.prod([len(s) for s in starts]) < np.prod([len(s) for s in full_steps])


def test_trainer_lookup_finds_stock_trainers_by_name():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    no_mirroring = find_trainer_class("nnUNetTrainerNoMirroring")  # TotalSegmentator's trainer
    assert no_mirroring.__name__ == "nnUNetTrainerNoMirroring" and issubclass(no_mirroring, nnUNetTrainer)
    with pytest.raises(ValueError, match="trainer class 'MyTrainer' is not defined"):
        find_trainer_class("MyTrainer")


# ----------------------------------------------------------------------------- bad inputs

def test_missing_phase_is_named(predictor):
    case = small_case()
    with pytest.raises(ValueError, match=r"needs phase\(s\) \['portal'\]"):
        predictor("vessels").predict({"arterial": case.phases["arterial"]})


def test_2d_image_is_rejected(predictor):
    flat = Volume(np.zeros((1, 64, 64), np.int16), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="not a 3D image"):
        predictor("tumor").predict({"portal": flat})


def test_too_large_image_is_rejected_before_work(predictor):
    p = predictor("tumor")
    case = small_case()
    limit, p.max_voxels = p.max_voxels, 100_000
    try:
        with pytest.raises(ValueError, match="too large.*exceeds the limit of 100000 voxels"):
            p.predict({"portal": case.phases["portal"]})
    finally:
        p.max_voxels = limit


def test_phases_that_do_not_overlap_are_rejected(predictor):
    case = small_case()
    p = case.phases["portal"]
    moved = Volume(p.array, p.spacing, (p.origin[0] + 2000.0, p.origin[1], p.origin[2]), p.direction)
    with pytest.raises(ValueError, match="phase 'portal' cannot be brought onto phase 'arterial'.*do not overlap"):
        predictor("vessels").predict({"arterial": case.phases["arterial"], "portal": moved})


# ----------------------------------------------------------------------------- geometry and equality

def test_output_carries_the_input_geometry_exactly(predictor, registry):
    case = make_phantom(size=(80, 56, 60), spacing=(2.9, 2.7, 3.1), seed=1001, origin=(-113.3, -37.1, -91.7),
                        direction=(0, 1, 0, -1, 0, 0, 0, 0, 1))
    image = case.phases["portal"]
    mask = predictor("tumor").predict({"portal": image}, kidney_crop=False)
    assert mask.array.shape == image.array.shape
    assert mask.spacing == image.spacing and mask.origin == image.origin and mask.direction == image.direction
    assert mask.array.dtype == np.uint8
    assert mask.labels == registry["tumor"].labels
    assert set(np.unique(mask.array)) <= set(registry["tumor"].labels)


def _nnunet_cli(model_folder: Path, images: list[Volume], tmp: Path) -> np.ndarray:
    """nnU-Net's own nnUNetv2_predict_from_modelfolder on the same image files, same settings."""
    inp, out = tmp / "in", tmp / "out"
    inp.mkdir()
    for c, image in enumerate(images):
        write_volume(image, inp / f"case_{c:04d}.nii.gz")
    cli = Path(sys.executable).parent / "nnUNetv2_predict_from_modelfolder"
    subprocess.run([str(cli), "-i", str(inp), "-o", str(out), "-m", str(model_folder), "-f", "0",
                    "-chk", "checkpoint_final.pth", "-step_size", "0.5", "--disable_tta", "-device", "cpu",
                    "-npp", "1", "-nps", "1", "--disable_progress_bar"],
                   check=True, capture_output=True, env={**os.environ, "nnUNet_compile": "0"})
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case.nii.gz")))


@pytest.mark.parametrize("task", ["tumor", pytest.param("vessels", marks=pytest.mark.slow)])
def test_mask_equals_nnunet_cli_voxel_for_voxel(task, predictor, registry, tmp_path):
    spec = registry[task]
    assert not spec.use_mirroring and spec.tile_step_size == 0.5  # the settings the CLI is given below
    case = small_case(1002)
    # read back from the files the CLI reads, so both see the same voxels
    images = [read_volume(write_volume(case.phases[p], tmp_path / f"{p}.nii.gz")) for p in spec.phases]
    ours = predictor(task).predict(dict(zip(spec.phases, images)), kidney_crop=False)
    model = spec.models[0]
    theirs = _nnunet_cli(model.folder, images, tmp_path)
    lut = np.zeros(max(model.model_labels) + 1, np.uint8)
    for m, o in model.label_map.items():
        lut[m] = o
    assert theirs.any()
    np.testing.assert_array_equal(ours.array, lut[theirs])


def test_batched_tiles_give_the_mask_of_one_tile_at_a_time_and_report_each_batch(registry):
    spec = registry["tumor"]
    assert spec.tile_batch_size > 1  # the committed setting; the CLI test above runs with it too
    image = {"portal": small_case(1001).phases["portal"]}
    one_at_a_time = TaskPredictor(dataclasses.replace(spec, tile_batch_size=1), CPU).predict(image, kidney_crop=False)
    messages = []
    batched = TaskPredictor(spec, CPU).predict(image, kidney_crop=False, progress=lambda *m: messages.append(m))
    np.testing.assert_array_equal(batched.array, one_at_a_time.array)
    tiles = [m for _, _, m in messages if ": tile " in m]
    total = int(tiles[-1].rsplit("/", 1)[1])
    assert total > spec.tile_batch_size and tiles[-1].endswith(f"tile {total}/{total}")
    assert len(tiles) == -(-total // spec.tile_batch_size)  # one message per batch
    fractions = [f for _, f, _ in messages]
    assert fractions == sorted(fractions)


def test_fast_mode_places_fewer_tiles_keeps_the_mask_close_and_restores_the_settings(predictor, registry):
    spec = registry["tumor"]
    image = {"portal": small_case(1001).phases["portal"]}
    tumor = predictor("tumor")

    def tiles(mode: str) -> tuple[int, np.ndarray]:
        messages = []
        mask = tumor.predict(image, kidney_crop=False, mode=mode, progress=lambda *m: messages.append(m))
        last = [m for _, _, m in messages if ": tile " in m][-1]
        return int(last.rsplit("/", 1)[1]), mask.array

    accurate_tiles, accurate = tiles("accurate")
    fast_tiles, fast = tiles("fast")
    assert spec.fast.tile_step_size > spec.tile_step_size
    assert fast_tiles < accurate_tiles
    for value in (1, 2):  # kidney, tumor
        assert dice(fast == value, accurate == value) > 0.9
    part = tumor.parts[0].predictor
    assert part.tile_step_size == spec.tile_step_size  # the fast settings were for that call only
    assert tiles("accurate")[0] == accurate_tiles
    with pytest.raises(ValueError, match="unknown inference mode"):
        tumor.predict(image, mode="turbo")


def test_a_cancelled_prediction_stops_between_tile_batches(predictor):
    image = {"portal": small_case(1001).phases["portal"]}
    seen = []

    def progress(stage, fraction, message):
        seen.append(message)

    def cancelled():  # the client goes away once the first batch of tiles is done
        return any(": tile " in m for m in seen)

    with pytest.raises(OperationCancelled, match="cancelled during predict"):
        predictor("tumor").predict(image, kidney_crop=False, progress=progress, cancelled=cancelled)
    batch = predictor("tumor").spec.tile_batch_size
    assert [m for m in seen if ": tile " in m][-1].split("tile ")[1].startswith(f"{batch}/")  # stopped after one
    assert predictor("tumor").predict(image, kidney_crop=False).array.any()  # still serves afterwards


def test_segment_case_shares_phases_and_the_kidney_mask(predictor, registry):
    case = small_case(1005)
    phases = dict(case.phases)
    predictors = {t: predictor(t) for t in ("total", "tumor")}
    messages = []
    out = segment_case(predictors, phases, ["tumor", "total"], progress=lambda s, f, m: messages.append((s, f, m)))
    assert list(out) == ["tumor", "total"]
    assert out["tumor"].labels == registry["tumor"].labels and out["total"].labels == registry["total"].labels
    for mask in out.values():
        assert mask.same_grid(case.phases["portal"])
    # total ran first and its kidneys placed the tumor task's crop (no locator pass)
    assert [m for s, _, m in messages if s == "tumor:locate"] == ["finding the kidneys from the given mask"]
    fractions = [f for _, f, _ in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    with pytest.raises(ValueError, match="unknown task"):
        segment_case(predictors, phases, ["liver"])


# ----------------------------------------------------------------------------- kidney crop, accuracy

_CROP_RUNS: dict = {}


def crop_runs(predictor) -> dict:
    """tumor on one whole-body case at the model's spacing: full image, crop from the locator,
    crop from a kidney hint."""
    if not _CROP_RUNS:
        case = full_case(1003, spacing=MODEL_SPACING)
        image = {"portal": case.phases["portal"]}
        p = predictor("tumor")
        # a kidney mask computed elsewhere (here: the ground-truth organ mask on a 4 mm grid)
        coarse = full_case(1003, spacing=4.0).organs
        _CROP_RUNS.update(
            case=case, box=p.locate_kidneys(case.phases["portal"]),
            full=p.predict(image, kidney_crop=False),
            located=p.predict(image, kidney_crop=True),  # the low-resolution locator finds the kidneys
            hinted=p.predict(image, kidney_crop=True, kidney_hint=coarse))
    return _CROP_RUNS


@pytest.mark.slow
def test_kidney_crop_is_smaller_and_no_less_accurate(predictor):
    runs = crop_runs(predictor)
    box = runs["box"]
    assert box is not None
    reference = runs["case"].phases["portal"]
    crop, _ = predictor("tumor").parts[0].tile_crop(reference, box)
    assert np.prod([s.stop - s.start for s in crop]) < reference.array.size  # the network sees less
    truth = runs["case"].labels.array
    for value in (Label.KIDNEY, Label.TUMOR):
        full = dice(runs["full"].array == value, truth == value)
        for way in ("located", "hinted"):
            assert dice(runs[way].array == value, truth == value) >= full - 0.01, (way, value)


@pytest.mark.slow
def test_kidney_crop_agrees_with_the_full_image(predictor):
    runs = crop_runs(predictor)
    for value in (Label.KIDNEY, Label.TUMOR):
        for way in ("located", "hinted"):
            assert dice(runs[way].array == value, runs["full"].array == value) >= 0.99, (way, value)
    # at the model's own spacing the crop's tiles are the full image's: identical inside the box
    box = runs["box"]
    assert np.array_equal(runs["located"].array[box], runs["full"].array[box])


@pytest.mark.slow
def test_kidney_crop_agrees_with_the_full_image_when_nnunet_resamples(predictor):
    case = full_case(1003, spacing=2.5)  # not the model's spacing: nnU-Net resamples the crop and the image
    image = {"portal": case.phases["portal"]}
    p = predictor("tumor")
    full, cropped = p.predict(image, kidney_crop=False), p.predict(image, kidney_crop=True)
    for value in (Label.KIDNEY, Label.TUMOR):
        assert dice(cropped.array == value, full.array == value) >= 0.99, value


# Targets from the issue; the slim demo models are trained by scripts/train_demo_models.py.
TARGETS = {"tumor": {"kidney": 0.90, "tumor": 0.75}, "vessels": {"kidney": 0.90, "artery": 0.80, "vein": 0.80},
           "ureter": {"kidney": 0.90, "ureter": 0.75}}


@pytest.mark.slow
def test_demo_models_reach_the_dice_targets_on_a_held_out_case(predictor, registry):
    case = full_case(1004)
    conv = case.labels.array
    for task, targets in TARGETS.items():
        spec = registry[task]
        mask = predictor(task).predict({p: case.phases[p] for p in spec.phases}, kidney_crop=False)
        for name, target in targets.items():
            value = {n: v for v, n in spec.labels.items()}[name]
            truth = conv == value
            if name == "kidney" and "tumor" not in spec.labels.values():
                truth |= conv == Label.TUMOR  # tasks without a tumor label count it as kidney
            assert dice(mask.array == value, truth) >= target, (task, name)
    # `total` merges two part models: classes from both parts are found
    total = predictor("total").predict({"portal": case.phases["portal"]})
    by_name = {n: v for v, n in case.organs.labels.items()}
    for name in ("kidney_left", "kidney_right", "liver", "aorta", "inferior_vena_cava"):
        assert dice(total.array == by_name[name], case.organs.array == by_name[name]) >= 0.8, name


@pytest.mark.slow
def test_vessels_with_the_portal_phase_on_another_grid(predictor):
    # the phantom's anatomy is defined in mm, so one seed on two grids is the same body
    arterial = full_case(1006)
    portal = make_phantom(size=(150, 150, 112), spacing=(2.5, 2.5, 2.7), seed=1006, origin=(-190.0, -185.0, -148.0))
    assert not portal.phases["portal"].same_grid(arterial.phases["arterial"])
    mask = predictor("vessels").predict({"arterial": arterial.phases["arterial"], "portal": portal.phases["portal"]})
    assert mask.same_grid(arterial.phases["arterial"])
    conv = arterial.labels.array
    for value, target in ((Label.ARTERY, 0.80), (Label.VEIN, 0.80), (Label.KIDNEY, 0.90)):
        truth = conv == value
        if value == Label.KIDNEY:
            truth |= conv == Label.TUMOR
        assert dice(mask.array == value, truth) >= target, value


# ----------------------------------------------------------------------------- bounded memory (issue 12)
# The lean path (nnunet_svc.predict.lean_predict) resamples slab by slab and argmaxes class by class;
# its numbers must be nnU-Net's own, bit for bit.

def _nnunet_parts(predictor, task="tumor"):
    return predictor(task).parts[0].predictor


@pytest.mark.parametrize("order", [1, 3])
def test_slab_wise_zoom_is_bitwise_skimage_resize(order):
    from scipy import ndimage
    from skimage.transform import resize

    from nnunet_svc.predict import _edge_pad_in_place, _scipy_zoom, _zoom_rows

    rng = np.random.default_rng(order)
    for _ in range(6):
        in_shape = tuple(int(v) for v in rng.integers(6, 30, 3))
        out_shape = tuple(int(v) for v in rng.integers(6, 70, 3))
        x = rng.normal(size=in_shape).astype(np.float32)
        ref = resize(x.astype(float), out_shape, order, mode="edge", anti_aliasing=False)  # nnU-Net's call
        pad = 12 if order > 1 else 0
        coeffs = np.empty([s + 2 * pad for s in in_shape], np.float64 if order > 1 else np.float32)
        coeffs[tuple(slice(pad, pad + s) for s in in_shape)] = x
        if pad:
            _edge_pad_in_place(coeffs, pad)
            np.testing.assert_array_equal(coeffs, np.pad(x.astype(float), pad, mode="edge"))
            for axis in range(3):
                ndimage.spline_filter1d(coeffs, order, axis, output=coeffs, mode="nearest")
        zoom = _scipy_zoom(in_shape, out_shape)
        lo, slabs = 0, []
        while lo < out_shape[0]:
            hi = min(out_shape[0], lo + int(rng.integers(1, 7)))
            slabs.append(_zoom_rows(coeffs, zoom, order, pad, lo, hi, out_shape))
            lo = hi
        ours = np.clip(np.concatenate(slabs), x.min(), x.max())
        assert ours.tobytes() == ref.tobytes()


@pytest.mark.parametrize("spacing", [(2.5, 2.5, 2.5), (1.0, 1.0, 3.2), (MODEL_SPACING,) * 3],
                         ids=["resampled", "separate-z", "model-spacing"])
def test_lean_preprocessing_and_conversion_are_nnunets_bit_for_bit(predictor, spacing):
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    from nnunet_svc.predict import _lean_preprocess, _lean_segmentation, nnunet_properties

    p = _nnunet_parts(predictor)
    size = tuple(int(round(f / s)) for f, s in zip((120.0, 96.0, 90.0), spacing))
    image = make_phantom(size=size, spacing=spacing, seed=1004, origin=(-100.0, -30.0, -60.0)).phases["portal"]
    arr = image.array.copy()
    arr[:3] = 0  # a zero border: nnU-Net crops to the non-zero box
    props = nnunet_properties(image)
    ours, our_props = _lean_preprocess(p, [arr], props)
    preprocessor = p.configuration_manager.preprocessor_class(verbose=False)
    theirs, _, their_props = preprocessor.run_case_npy(arr[None].astype(np.float32), None, dict(props),
                                                       p.plans_manager, p.configuration_manager, p.dataset_json)
    assert ours.dtype == theirs.dtype and ours.tobytes() == np.ascontiguousarray(theirs).tobytes()
    for key in ("shape_before_cropping", "bbox_used_for_cropping", "shape_after_cropping_and_before_resampling"):
        assert list(map(list, np.atleast_2d(our_props[key]))) == list(map(list, np.atleast_2d(their_props[key]))), key
    # logits with many exact float16 ties and tiny differences: argmax's first-maximum rule matters
    rng = np.random.default_rng(7)
    n_classes = p.label_manager.num_segmentation_heads
    logits = torch.from_numpy((rng.integers(-3, 4, size=(n_classes, *ours.shape[1:])) * 0.5).astype(np.float16))
    seg = _lean_segmentation(p, logits, our_props)
    ref = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits.clone(), p.plans_manager, p.configuration_manager, p.label_manager, copy.deepcopy(their_props))
    assert seg.shape == arr.shape
    np.testing.assert_array_equal(seg, ref)


@pytest.mark.parametrize("spacing", [(2.5, 2.5, 2.5), pytest.param((1.0, 1.0, 3.2), marks=pytest.mark.slow)],
                         ids=["2.5mm", "1x1x3.2mm-separate-z"])
def test_mask_equals_nnunet_cli_when_nnunet_resamples(spacing, predictor, registry, tmp_path):
    """Not the model's spacing: nnU-Net resamples this image and the logits back; the service's
    bounded-memory path must give the CLI's mask voxel for voxel."""
    spec = registry["tumor"]
    size = tuple(int(round(f / s)) for f, s in zip((240.0, 162.0, 162.0), spacing))
    case = make_phantom(size=size, spacing=spacing, seed=1002, origin=(-118.5, -40.0, -80.0))
    image = read_volume(write_volume(case.phases["portal"], tmp_path / "portal.nii.gz"))
    ours = predictor("tumor").predict({"portal": image}, kidney_crop=False)
    assert _nnunet_parts(predictor).lean_path == "lean (resampled)"
    model = spec.models[0]
    theirs = _nnunet_cli(model.folder, [image], tmp_path)
    lut = np.zeros(max(model.model_labels) + 1, np.uint8)
    for m, o in model.label_map.items():
        lut[m] = o
    assert theirs.any()
    np.testing.assert_array_equal(ours.array, lut[theirs])
