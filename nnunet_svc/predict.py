"""Resident nnU-Net v2 predictors: one TaskPredictor per task, built once, kept on the device.

The caller reads each phase once (a `medseg.volumes.Volume`) and hands the same Volumes to every
task that needs them. A TaskPredictor
- checks the phases (present, 3D, not too large), brings every phase onto the first phase's
  physical grid (linear resampling; no overlap -> ValueError),
- optionally crops to the kidneys (+ margin) found from a kidney mask already at hand
  (`kidney_hint`) or from a cheap low-resolution locator model, so the expensive full-resolution
  network only sees the region that matters; the crop is made of the very tiles nnU-Net would place
  there on the full image, so the cropped result agrees with the full-image one,
- runs every part model through `nnUNetPredictor.predict_single_npy_array` (nnU-Net's own
  preprocessing, sliding window and resampling back), maps each model's labels onto the task's
  output table, merges parts, and pastes the crop back into the full grid.

A TaskPredictor is not thread-safe (nnU-Net loads fold weights into one network per call):
serialise calls per device.
"""
from __future__ import annotations

import contextlib
import copy
import io
import itertools
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from medseg.labels import is_kidney_name
from medseg.params import ParameterError
from medseg.progress import Cancelled, OperationCancelled, Progress
from medseg.summary import SLAB_VOXELS, mask_box  # SLAB_VOXELS: per slab of the lean path (4M: 32 MB as float64)
from medseg.volumes import Volume
from nnunet_svc.registry import ModelSpec, ModeSettings, TaskSpec


# Above this many voxels per phase an image is refused before any work (env overrides).
DEFAULT_MAX_VOXELS = 512 * 512 * 1024  # largest phase accepted; the server may set another


def default_device() -> torch.device:
    """cuda when there is a GPU, CPU otherwise (chosen once at start-up)."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


# ----------------------------------------------------------------------------- geometry helpers

def _corners_index(shape_zyx: tuple[int, int, int], lo=(0, 0, 0), hi=None) -> np.ndarray:
    """The 8 corners (x, y, z) of a voxel box [lo, hi) in continuous index space (voxel edges)."""
    hi = hi if hi is not None else shape_zyx
    zs = (lo[0] - 0.5, hi[0] - 0.5)
    ys = (lo[1] - 0.5, hi[1] - 0.5)
    xs = (lo[2] - 0.5, hi[2] - 0.5)
    return np.array([[x, y, z] for x in xs for y in ys for z in zs], dtype=float)


def _index_to_physical(vol: Volume, idx_xyz: np.ndarray) -> np.ndarray:
    m = vol.index_to_physical_matrix()
    return idx_xyz @ m[:3, :3].T + m[:3, 3]


def _physical_to_index(vol: Volume, pts: np.ndarray) -> np.ndarray:
    m = vol.index_to_physical_matrix()
    return (pts - m[:3, 3]) @ np.linalg.inv(m[:3, :3]).T


def check_3d(volume: Volume, name: str, max_voxels: int = DEFAULT_MAX_VOXELS) -> None:
    """ValueError unless `volume` is a real 3D image (every axis > 1 voxel) within the size limit."""
    arr = volume.array
    if arr.ndim != 3 or min(arr.shape) < 2:
        raise ValueError(f"phase {name!r} is not a 3D image (array shape {arr.shape}); "
                         "a 3D volume with at least 2 voxels along every axis is required")
    n = int(np.prod(arr.shape))
    if n > max_voxels:
        raise ValueError(f"phase {name!r} is too large: {n} voxels (size {volume.size}) exceeds the "
                         f"limit of {max_voxels} voxels")
    if not np.all(np.isfinite(volume.spacing)) or min(volume.spacing) <= 0:
        raise ValueError(f"phase {name!r} has invalid spacing {volume.spacing}")


def align_to_reference(reference: Volume, moving: Volume) -> Volume:
    """Resample `moving` onto `reference`'s physical grid (linear; outside -> moving's minimum).

    Returns `moving` unchanged when the grids already agree. ValueError when the two images do
    not overlap in physical space at all.
    """
    if moving.same_grid(reference):
        return moving
    ref_image = reference.with_array(np.zeros(reference.array.shape, np.uint8)).to_image()
    mov_image = Volume(moving.array.astype(np.float32, copy=False), moving.spacing, moving.origin,
                       moving.direction).to_image()
    coverage = sitk.Resample(
        sitk.Cast(mov_image * 0 + 1, sitk.sitkUInt8), ref_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
        sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(coverage).any():
        raise ValueError(
            f"the phases do not overlap in physical space: reference origin {reference.origin} size "
            f"{reference.size} spacing {reference.spacing}; other origin {moving.origin} size {moving.size} "
            f"spacing {moving.spacing}")
    fill = float(moving.array.min())
    resampled = sitk.Resample(mov_image, ref_image, sitk.Transform(), sitk.sitkLinear, fill, sitk.sitkFloat32)
    return reference.with_array(sitk.GetArrayFromImage(resampled))


def kidney_voxels(mask: Volume, kidney_labels: Iterable[int] | None = None) -> np.ndarray:
    """Boolean kidney mask: the given label values, else every label whose name contains 'kidney'
    (convention 'kidney', TotalSegmentator 'kidney_left'/'kidney_right', which include renal
    tumors) or is the convention's renal 'tumor' (it may bulge out of the kidney)."""
    if kidney_labels is None:
        if not mask.labels:
            raise ValueError("kidney hint has no label table; cannot tell which labels are kidney")
        kidney_labels = [v for v, n in mask.labels.items() if v != 0 and
                         (is_kidney_name(n) or n.lower() == "tumor")]
        if not kidney_labels:
            raise ValueError(f"kidney hint's label table {mask.labels} names no kidney label")
    return np.isin(mask.array, np.asarray(list(kidney_labels)))


def keep_kidney_components(kidneys: np.ndarray, voxel_mm3: float, max_kidneys: int = 2,
                           min_fraction: float = 0.2) -> np.ndarray:
    """The (at most two) large connected kidney blobs of a kidney mask (the locator's or another task's).

    A model leaves specks elsewhere (a cheap low-resolution one more so); one speck would stretch
    the bounding box over the whole image. Blobs smaller than `min_fraction` of the largest are dropped.
    """
    components, n = ndimage.label(kidneys)
    if n <= 1:
        return kidneys
    sizes = np.bincount(components.ravel())[1:]
    order = np.argsort(sizes)[::-1][:max_kidneys]
    keep = [i + 1 for i in order if sizes[i] >= min_fraction * sizes[order[0]]]
    return np.isin(components, keep)


def _region_on(reference: Volume, source: Volume, box: tuple[slice, slice, slice],
               margin_mm: float) -> tuple[slice, slice, slice] | None:
    """Index box on `reference` covering the voxel box of `source` (another grid, perhaps) +
    margin, carried through physical space; None when it misses the reference image."""
    lo = tuple(b.start for b in box)
    hi = tuple(b.stop for b in box)
    phys = _index_to_physical(source, _corners_index(source.array.shape, lo, hi))
    idx = _physical_to_index(reference, phys)  # (x, y, z) continuous indices on the reference
    margin_vox = np.asarray(margin_mm) / np.asarray(reference.spacing)
    start = np.floor(idx.min(axis=0) + 0.5 - margin_vox).astype(int)
    stop = np.ceil(idx.max(axis=0) + 0.5 + margin_vox).astype(int)
    size_xyz = np.asarray(reference.size)
    start = np.clip(start, 0, size_xyz)
    stop = np.clip(stop, 0, size_xyz)
    if np.any(stop - start < 1):
        return None
    return (slice(int(start[2]), int(stop[2])), slice(int(start[1]), int(stop[1])),
            slice(int(start[0]), int(stop[0])))


def kidney_region(reference: Volume, kidney_mask: Volume, kidney_labels: Iterable[int] | None = None,
                  margin_mm: float = 30.0) -> tuple[slice, slice, slice] | None:
    """Index box (z, y, x slices) on `reference` covering the kidneys of `kidney_mask` + margin.

    `kidney_mask` may lie on another grid (e.g. `total` computed on the portal phase, used for the
    arterial-phase vessel task): its kidney bounding box is carried through physical space.
    None when the mask has no kidney voxel inside the reference image.
    """
    box = mask_box(kidney_voxels(kidney_mask, kidney_labels))
    return None if box is None else _region_on(reference, kidney_mask, box, margin_mm)


# ----------------------------------------------------------------------------- nnU-Net glue

def nnunet_properties(volume: Volume) -> dict:
    """Image properties exactly as nnU-Net's SimpleITKIO.read_images builds them."""
    return {
        "sitk_stuff": {"spacing": tuple(volume.spacing), "origin": tuple(volume.origin),
                       "direction": tuple(volume.direction)},
        "spacing": [abs(s) for s in list(volume.spacing)[::-1]],
    }


def find_trainer_class(name: str):
    """nnU-Net's trainer lookup by name, tolerant of trainer modules that fail to import.

    nnU-Net imports every module under nnunetv2.training.nnUNetTrainer until one defines the
    class; one broken optional dependency (e.g. the Primus trainers import timm -> torchvision)
    then breaks loading every trainer found after it, `nnUNetTrainerNoMirroring` (TotalSegmentator's)
    included. This walk skips modules that cannot be imported.
    """
    import importlib
    import pkgutil

    import nnunetv2.training.nnUNetTrainer as base

    for info in pkgutil.walk_packages(base.__path__, base.__name__ + ".", onerror=lambda _: None):
        try:
            module = importlib.import_module(info.name)
        except Exception:  # an optional trainer family whose dependencies are missing or broken
            continue
        cls = getattr(module, name, None)
        if isinstance(cls, type):
            return cls
    raise ValueError(f"trainer class {name!r} is not defined in nnunetv2.training.nnUNetTrainer "
                     "(custom trainers must be importable from there)")


def _tile_batch_predictor_class():
    """nnU-Net's predictor with a batched sliding window (built on first use: nnunetv2 is heavy)."""
    global _TileBatchPredictor
    if _TileBatchPredictor is not None:
        return _TileBatchPredictor
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian
    from nnunetv2.utilities.helpers import empty_cache

    class TileBatchPredictor(nnUNetPredictor):
        """nnU-Net's sliding window, `tile_batch_size` tiles per forward pass.

        Why: on CPU a batch-1 3D convolution takes a much slower path than a batch of 2 or more
        (about 5x per tile on the demo networks; see bench/bench_nnunet.py). The tiles, the gaussian
        weighting and the fp16 accumulation order are nnU-Net's own, so with tile_batch_size 1
        this is nnU-Net's loop. `on_tiles(done, total)` is called after every batch: progress, and
        a place to stop a cancelled call.
        """
        tile_batch_size: int = 1
        on_tiles: Callable[[int, int], None] | None = None
        tile_starts: list[list[int]] | None = None  # per network axis; None: nnU-Net's own tiling

        def _internal_get_sliding_window_slicers(self, image_size):
            if self.tile_starts is None:
                return super()._internal_get_sliding_window_slicers(image_size)
            patch = [int(p) for p in self.configuration_manager.patch_size]
            per_axis = [sorted({min(s, size - p) for s in starts})
                        for starts, size, p in zip(self.tile_starts, image_size, patch)]
            # nnU-Net's order (x outermost), so the fp16 sums run in the same order as on the full image
            return [(slice(None), *[slice(s, s + p) for s, p in zip(corner, patch)])
                    for corner in itertools.product(*per_axis)]

        @torch.inference_mode()
        def _internal_predict_sliding_window_return_logits(self, data, slicers, do_on_device: bool = True):
            results_device = self.device if do_on_device else torch.device("cpu")
            empty_cache(self.device)
            data = data.to(results_device)
            logits = torch.zeros((self.label_manager.num_segmentation_heads, *data.shape[1:]), dtype=torch.half,
                                 device=results_device)
            n_predictions = torch.zeros(data.shape[1:], dtype=torch.half, device=results_device)
            gaussian = compute_gaussian(tuple(self.configuration_manager.patch_size), sigma_scale=1. / 8,
                                        value_scaling_factor=10, device=results_device) if self.use_gaussian else 1
            for start in range(0, len(slicers), self.tile_batch_size):
                batch = slicers[start:start + self.tile_batch_size]
                tiles = torch.stack([data[s] for s in batch]).to(self.device)
                predictions = self._internal_maybe_mirror_and_predict(tiles).to(results_device)
                for prediction, s in zip(predictions, batch):
                    if self.use_gaussian:
                        prediction *= gaussian
                    logits[s] += prediction
                    n_predictions[s[1:]] += gaussian
                if self.on_tiles is not None:
                    self.on_tiles(start + len(batch), len(slicers))
            torch.div(logits, n_predictions, out=logits)
            if torch.any(torch.isinf(logits)):
                raise RuntimeError("inf in the predicted logits (nnU-Net's fp16 accumulation overflowed)")
            return logits

    _TileBatchPredictor = TileBatchPredictor
    return TileBatchPredictor


_TileBatchPredictor = None


def _make_nnunet_predictor(model: ModelSpec, device: torch.device, tile_step_size: float, use_mirroring: bool,
                           tile_batch_size: int = 1):
    import nnunetv2.inference.predict_from_raw_data as nnunet_predict

    stock_lookup = nnunet_predict.recursive_find_trainer_class_by_name
    nnunet_predict.recursive_find_trainer_class_by_name = find_trainer_class
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a note about CPU devices
            predictor = _tile_batch_predictor_class()(
                tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                perform_everything_on_device=device.type == "cuda", device=device,
                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
            predictor.initialize_from_trained_model_folder(str(model.folder), model.folds, model.checkpoint)
    finally:
        nnunet_predict.recursive_find_trainer_class_by_name = stock_lookup
    predictor.tile_batch_size = tile_batch_size
    return predictor


# ----------------------------------------------------------------------------- bounded-memory nnU-Net inference
#
# What nnU-Net 2.x does with one image (`predict_single_npy_array`), for an image of N voxels, C
# input channels and K output classes, at the image's own (full) resolution:
#  1. `run_case_npy` copies the input to float32 (4CN bytes; on top of the float32 stack it is given),
#     transposes it to the plans' axis order;
#  2. `crop_to_nonzero`: a bool mask of voxels non-zero in any channel, `binary_fill_holes` of it, the
#     data cropped to its bounding box, and an int8 "seg" map (-1 outside the mask) (~3N);
#  3. normalisation in place (CT: clip to the 0.5/99.5 percentiles, minus mean, over std, float32);
#  4. resampling to the model's spacing (`resample_data_or_seg_to_shape`): `data.astype(float)` (8CN),
#     then per channel skimage `resize(order=3, mode='edge', anti_aliasing=False)`, which is
#     `scipy.ndimage.zoom(grid_mode=True, mode='nearest')`: `np.pad(12, 'edge')` (8N) and a float64
#     `spline_filter` of that (8N), then clipped to the channel's range; the seg map is resampled too
#     (order 1, a float64 full-size copy per value), though inference without a cascade never uses it;
#  5. the network at the model's spacing (small: the demo models run at 3-4 mm);
#  6. `convert_predicted_logits_to_segmentation_with_correct_shape`: the float16 logits of all K
#     classes resampled back to the cropped full-size grid (order 1; anisotropic: per slice in plane,
#     then `map_coordinates` order 0 along z over a full-size float64 coordinate grid, 24N) into one
#     float16 array (2KN), through one float64 full-size array per class (8N), then `argmax` (int64,
#     8N), pasted into the uncropped uint8 map (N).
# At 512x512x300 with the 17-class `total` part 2 that is ~4 GB in step 6 alone; vessels (two
# channels) ~4 GB in steps 1-4.
#
# The lean path below computes the same numbers with bounded extra memory:
#  - the phases are never stacked or copied whole: each channel is read slab by slab from the caller's
#    array (int16 stays int16), cast to float32 and normalised per slab (the normalisations allowed
#    here are element-wise, so a slab gives the same float32 values);
#  - the crop box is the bounding box of the non-zero voxels, found slab by slab (filling holes never
#    changes a bounding box); no seg map is built;
#  - order-3 resampling of a channel writes the normalised values straight into one edge-padded
#    float64 buffer and runs scipy's 1-D spline filters in place on it (axis 0, 1, 2, as
#    `spline_filter` does), then scipy's own `zoom_shift` on it: one 8N buffer per channel instead of
#    8CN + 16N; order <= 1 reads the float32 channel directly (scipy casts every sample to double);
#  - logits go back slab by slab along the first (plans-order) axis: `zoom_shift` maps output index k
#    of every axis to (k + shift + 0.5) * zoom - 0.5 independently, so an output slab asked for with
#    shift = its first row gets exactly the coordinates, weights and sums of the full-size call; each
#    class's slab is clipped to that class's range and rounded to float16 (what nnU-Net stores), and a
#    running maximum keeps the first class that reaches it (numpy argmax's tie rule), so no float16
#    K-channel array, no int64 argmax and no full-size float64 array exist. Anisotropic cases (nnU-Net's
#    separate-z resampling) go class by class: the per-slice in-plane resize is nnU-Net's own, and
#    `map_coordinates` is point-wise, so it is asked for one slab of the coordinate grid at a time.
# Anything else (region-based or cascade models, other preprocessors, resampling functions or
# normalisations, NaN logits) takes nnU-Net's own path. `test_lean_*` in tests/test_nnunet_predict.py
# check the masks against nnU-Net's CLI where nnU-Net resamples; `bench/bench_memory.py` measures.

LEAN_DEFAULT = True  # the server's MEDSEG_NNUNET_LEAN=0 (ServerConfig) chooses nnU-Net's own path
_LEAN_NORMALIZATIONS = ("CTNormalization", "NoNormalization")  # element-wise: slab = whole image
_SCIPY_NEAREST = 0  # scipy.ndimage's NI_EXTEND_NEAREST: skimage mode 'edge'
_SCIPY_PREPAD = 12  # scipy.ndimage.zoom's edge padding before the spline filter for mode 'nearest'


class _NotLean(Exception):
    """This case goes through nnU-Net's own code instead (the reason is the message)."""


def _slab_rows(shape, voxels: int = SLAB_VOXELS) -> int:
    return max(1, voxels // max(1, int(np.prod(shape[1:]))))


def _resampling_kwargs(cm, which: str) -> dict:
    """The arguments nnU-Net's `resampling_fn_<which>` is called with, defaults included."""
    import inspect

    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    if cm.configuration.get(f"resampling_fn_{which}") != "resample_data_or_seg_to_shape":
        raise _NotLean(f"resampling_fn_{which} is {cm.configuration.get(f'resampling_fn_{which}')!r}")
    kwargs = {k: p.default for k, p in inspect.signature(resample_data_or_seg_to_shape).parameters.items()
              if p.default is not inspect.Parameter.empty}
    kwargs.update(cm.configuration.get(f"resampling_fn_{which}_kwargs") or {})
    if kwargs.get("is_seg"):
        raise _NotLean(f"resampling_fn_{which} resamples as a segmentation")
    return kwargs


def lean_unsupported(predictor) -> str | None:
    """Why this nnU-Net predictor's model cannot take the lean path (None: it can)."""
    pm, cm = predictor.plans_manager, predictor.configuration_manager
    if predictor.label_manager.has_regions:
        return "region-based model"
    if cm.previous_stage_name is not None:
        return "cascade stage"
    if cm.preprocessor_name != "DefaultPreprocessor":
        return f"preprocessor {cm.preprocessor_name}"
    if len(cm.spacing) != 3:
        return "2d configuration"
    bad = [s for s in cm.normalization_schemes if s not in _LEAN_NORMALIZATIONS]
    if bad:
        return f"normalization {bad}"
    try:
        _resampling_kwargs(cm, "data")
        _resampling_kwargs(cm, "probabilities")
    except _NotLean as err:
        return str(err)
    if sorted(pm.transpose_forward) != [0, 1, 2]:
        return f"transpose {pm.transpose_forward}"
    return None


def _scipy_zoom(in_shape, out_shape) -> np.ndarray:
    """The zoom vector `scipy.ndimage.zoom` hands its C code when skimage's `resize` asks it for
    `out_shape` (skimage passes output/input factors, scipy rounds them back to a shape)."""
    factors = np.divide(in_shape, out_shape)
    zoom_factors = [1 / f for f in factors]
    shape = tuple(int(round(ii * jj)) for ii, jj in zip(in_shape, zoom_factors))
    if shape != tuple(int(s) for s in out_shape):
        raise _NotLean(f"scipy would zoom {tuple(in_shape)} to {shape}, not {tuple(out_shape)}")
    if all(z == 1 for z in zoom_factors):
        raise _NotLean("nothing to resample")
    div, nom = np.array(shape), np.array(in_shape)
    return np.ascontiguousarray(np.divide(nom, div, out=np.ones_like(nom, dtype=np.float64), where=div != 0))


def _zoom_rows(coeffs: np.ndarray, zoom: np.ndarray, order: int, npad: int, lo: int, hi: int,
               out_shape) -> np.ndarray:
    """Rows lo:hi (axis 0) of `scipy.ndimage.zoom(x, ..., order, mode='nearest', grid_mode=True)` where
    `coeffs` is what zoom interpolates (x itself for order <= 1, else its `npad`-padded spline
    coefficients), bit for bit: see the comment above."""
    from scipy.ndimage import _nd_image

    out = np.empty((hi - lo, *out_shape[1:]), np.float64)
    shift = np.zeros(len(out_shape), np.float64)
    shift[0] = lo
    _nd_image.zoom_shift(coeffs, zoom, shift, out, int(order), _SCIPY_NEAREST, 0.0, int(npad), True)
    return out


def _edge_pad_in_place(buf: np.ndarray, pad: int) -> None:
    """Fill the `pad`-wide border of `buf` as np.pad(interior, pad, mode='edge') would."""
    for axis in range(buf.ndim):
        for dst, src in ((slice(0, pad), slice(pad, pad + 1)), (slice(buf.shape[axis] - pad, None),
                                                                 slice(buf.shape[axis] - pad - 1, buf.shape[axis] - pad))):
            d, s = [slice(None)] * buf.ndim, [slice(None)] * buf.ndim
            d[axis], s[axis] = dst, src
            buf[tuple(d)] = buf[tuple(s)]


def _nonzero_bbox(views: list[np.ndarray]) -> list[list[int]]:
    """nnU-Net's crop box (`crop_to_nonzero`): the bounding box of the voxels that are non-zero in any
    channel as float32; the whole image when there is none (as `get_bbox_from_mask` gives)."""
    shape = views[0].shape
    rows = np.zeros(shape[0], bool)
    plane = np.zeros(shape[1:], bool)
    step = _slab_rows(shape)
    for lo in range(0, shape[0], step):
        hi = min(shape[0], lo + step)
        m = views[0][lo:hi].astype(np.float32) != 0
        for v in views[1:]:
            m |= v[lo:hi].astype(np.float32) != 0
        rows[lo:hi] = m.any(axis=(1, 2))
        plane |= m.any(axis=0)

    def span(a: np.ndarray) -> list[int]:
        nz = np.flatnonzero(a)
        return [0, len(a)] if nz.size == 0 else [int(nz[0]), int(nz[-1]) + 1]

    return [span(rows), span(plane.any(axis=1)), span(plane.any(axis=0))]


def _lean_preprocess(predictor, arrays: list[np.ndarray], properties: dict) -> tuple[np.ndarray, dict]:
    """nnU-Net's `DefaultPreprocessor.run_case_npy` for channels given separately (see above): the
    network input at the model's spacing (float32, C x plans-order shape) and the properties dict the
    conversion back needs."""
    from nnunetv2.preprocessing.normalization import default_normalization_schemes as schemes
    from nnunetv2.preprocessing.resampling.default_resampling import (compute_new_shape,
                                                                      determine_do_sep_z_and_axis,
                                                                      resample_data_or_seg)

    pm, cm = predictor.plans_manager, predictor.configuration_manager
    tf = list(pm.transpose_forward)
    views = [np.asarray(a).transpose(tf) for a in arrays]
    if len({v.shape for v in views}) != 1:
        raise _NotLean("channels differ in shape")
    props = copy.deepcopy(properties)
    shape = views[0].shape
    original_spacing = [props["spacing"][i] for i in tf]
    props["shape_before_cropping"] = shape
    bbox = _nonzero_bbox(views)
    props["bbox_used_for_cropping"] = bbox
    crop = tuple(slice(a, b) for a, b in bbox)
    cropped = tuple(b - a for a, b in bbox)
    props["shape_after_cropping_and_before_resampling"] = cropped
    target_spacing = cm.spacing
    new_shape = compute_new_shape(cropped, original_spacing, target_spacing)
    kw = _resampling_kwargs(cm, "data")
    order, order_z = int(kw["order"]), int(kw["order_z"])
    do_separate_z, axis = determine_do_sep_z_and_axis(kw["force_separate_z"], original_spacing, target_spacing,
                                                      kw["separate_z_anisotropy_threshold"])
    resample = bool(np.any(np.array(cropped) != new_shape))
    out = np.zeros((len(views), *(new_shape if resample else cropped)), np.float32)
    step = _slab_rows(cropped)
    for c, view in enumerate(views):
        scheme = cm.normalization_schemes[c]
        normalizer = getattr(schemes, scheme)(use_mask_for_norm=cm.use_mask_for_norm[c],
                                              intensityproperties=pm.foreground_intensity_properties_per_channel[str(c)])
        src = view[crop]

        def normalised(lo: int, hi: int) -> np.ndarray:
            return normalizer.run(src[lo:hi].astype(np.float32), None)

        if not resample:  # nnU-Net hands the normalised float32 crop to the network as it is
            for lo in range(0, cropped[0], step):
                out[c, lo:lo + step] = normalised(lo, min(cropped[0], lo + step))
            continue
        if do_separate_z:  # nnU-Net's own per-channel code (it resamples channel by channel)
            channel = np.empty(cropped, np.float32)
            for lo in range(0, cropped[0], step):
                channel[lo:lo + step] = normalised(lo, min(cropped[0], lo + step))
            out[c] = resample_data_or_seg(channel[None], new_shape, False, axis, order, True, order_z=order_z)[0]
            del channel
            continue
        zoom = _scipy_zoom(cropped, new_shape)
        pad = _SCIPY_PREPAD if order > 1 else 0
        interior = tuple(slice(pad, pad + s) for s in cropped)
        buf = np.empty([s + 2 * pad for s in cropped], np.float64 if order > 1 else np.float32)
        lo_val, hi_val = np.inf, -np.inf
        for lo in range(0, cropped[0], step):
            hi = min(cropped[0], lo + step)
            slab = normalised(lo, hi)
            if np.isnan(slab).any():
                raise _NotLean("NaN in the normalised image")
            lo_val, hi_val = min(lo_val, float(slab.min())), max(hi_val, float(slab.max()))
            buf[(slice(pad + lo, pad + hi), *interior[1:])] = slab
        if pad:
            _edge_pad_in_place(buf, pad)
        if order > 1:  # scipy's spline_filter: 1-D filters along axis 0, 1, 2, float64, here in place
            for ax in range(buf.ndim):
                ndimage.spline_filter1d(buf, order, ax, output=buf, mode="nearest")
        res = _zoom_rows(buf, zoom, order, pad, 0, int(new_shape[0]), new_shape)
        del buf
        np.clip(res, np.float64(lo_val), np.float64(hi_val), out=res)  # skimage's clip to the input range
        out[c] = res
    return out, props


def _lean_segmentation(predictor, logits: torch.Tensor, props: dict) -> np.ndarray:
    """`convert_predicted_logits_to_segmentation_with_correct_shape(logits, ...)` (no probabilities),
    slab by slab (see above). Returns the label map on the input grid (z, y, x)."""
    from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis
    from scipy.ndimage import map_coordinates
    from skimage.transform import resize

    pm, cm, lm = predictor.plans_manager, predictor.configuration_manager, predictor.label_manager
    tf = list(pm.transpose_forward)
    low = logits.detach().cpu().numpy()
    if np.isnan(low).any():
        raise _NotLean("NaN in the logits")
    dtype_out = low.dtype  # nnU-Net's resampled logits keep the logits' dtype (float16)
    shape_after = tuple(int(s) for s in props["shape_after_cropping_and_before_resampling"])
    spacing_t = [props["spacing"][i] for i in tf]
    current_spacing = cm.spacing if len(cm.spacing) == len(shape_after) else [spacing_t[0], *cm.spacing]
    kw = _resampling_kwargs(cm, "probabilities")
    order, order_z = int(kw["order"]), int(kw["order_z"])
    do_separate_z, axis = determine_do_sep_z_and_axis(kw["force_separate_z"], current_spacing, spacing_t,
                                                      kw["separate_z_anisotropy_threshold"])
    seg_dtype = np.uint8 if len(lm.foreground_labels) < 255 else np.uint16
    full = np.zeros(props["shape_before_cropping"], seg_dtype)
    target = full[tuple(slice(a, b) for a, b in props["bbox_used_for_cropping"])]
    n_classes = low.shape[0]
    resample = tuple(low.shape[1:]) != shape_after

    def keep_first_max(best: np.ndarray, labels: np.ndarray, value: np.ndarray, c: int) -> None:
        better = value > best  # strictly greater: the first class reaching the maximum keeps it
        np.copyto(best, value, where=better)
        labels[better] = c

    if not resample or not do_separate_z:
        if resample:
            low64 = low.astype(np.float64)  # nnU-Net's data.astype(float) (at the model's spacing: small)
            del low
            zoom = _scipy_zoom(low64.shape[1:], shape_after)
            coeffs, pad = [], 0
            if order > 1:  # spline coefficients of the (small) low-resolution logits, as zoom makes them
                from scipy.ndimage import spline_filter
                pad = _SCIPY_PREPAD
                coeffs = [spline_filter(np.pad(low64[c], pad, mode="edge"), order, output=np.float64, mode="nearest")
                          for c in range(n_classes)]
            ranges = [(low64[c].min(), low64[c].max()) for c in range(n_classes)]

            def rows(c: int, lo: int, hi: int) -> np.ndarray:
                r = _zoom_rows(coeffs[c] if order > 1 else low64[c], zoom, order, pad, lo, hi, shape_after)
                np.clip(r, ranges[c][0], ranges[c][1], out=r)
                return r.astype(dtype_out)
        else:
            def rows(c: int, lo: int, hi: int) -> np.ndarray:
                return np.array(low[c, lo:hi])

        step = _slab_rows(shape_after)
        for lo in range(0, shape_after[0], step):
            hi = min(shape_after[0], lo + step)
            best = rows(0, lo, hi)
            labels = np.zeros(best.shape, seg_dtype)
            for c in range(1, n_classes):
                keep_first_max(best, labels, rows(c, lo, hi), c)
            target[lo:hi] = labels
        return full.transpose(pm.transpose_backward)

    # separate z (anisotropic): class by class, nnU-Net's per-slice in-plane resize, then map_coordinates
    # (order_z) along `axis` one slab of nnU-Net's coordinate grid at a time
    low64 = low.astype(np.float64)
    del low
    new_shape = np.array(shape_after)
    in_shape = np.array(low64.shape[1:])
    plane_shape = new_shape[[i for i in range(3) if i != axis]]
    step = _slab_rows(shape_after, SLAB_VOXELS // 4)
    best = np.empty(shape_after, dtype_out)
    for c in range(n_classes):
        tmp = new_shape.copy()
        tmp[axis] = in_shape[axis]
        here = np.zeros(tmp)
        for s in range(in_shape[axis]):
            index = [slice(None)] * 3
            index[axis] = s
            here[tuple(index)] = resize(low64[c][tuple(index)], plane_shape, order, mode="edge", anti_aliasing=False)
        scale = [float(o) / n for o, n in zip(here.shape, new_shape)]
        for lo in range(0, shape_after[0], step):
            hi = min(shape_after[0], lo + step)
            if in_shape[axis] != new_shape[axis]:
                grid = np.mgrid[lo:hi, :shape_after[1], :shape_after[2]]
                coords = np.array([scale[i] * (grid[i] + 0.5) - 0.5 for i in range(3)])
                del grid
                value = map_coordinates(here, coords, order=order_z, mode="nearest").astype(dtype_out)
                del coords
            else:
                value = here[lo:hi].astype(dtype_out)
            if c == 0:
                best[lo:hi] = value
            else:
                keep_first_max(best[lo:hi], target[lo:hi], value, c)
        del here
    return full.transpose(pm.transpose_backward)


def lean_predict(predictor, arrays: list[np.ndarray], properties: dict) -> np.ndarray:
    """nnU-Net's `predict_single_npy_array(np.stack(arrays), properties)` label map, with bounded memory
    (see above); nnU-Net's own code for whatever the lean path does not cover."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    def stock() -> np.ndarray:
        data = np.stack(arrays).astype(np.float32, copy=False)
        return np.asarray(predictor.predict_single_npy_array(data, copy.deepcopy(properties), None, None, False))

    # predictor.lean_path says what the last call did (tests and benchmarks read it)
    why = lean_unsupported(predictor)
    if why is not None:
        predictor.lean_path = f"nnU-Net: {why}"
        return stock()
    try:
        data, props = _lean_preprocess(predictor, arrays, properties)
    except _NotLean as err:
        predictor.lean_path = f"nnU-Net: {err}"
        return stock()
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
    resampled = tuple(data.shape[1:]) != tuple(props["shape_after_cropping_and_before_resampling"])
    del data
    try:
        seg = _lean_segmentation(predictor, logits, props)
        predictor.lean_path = "lean" + (" (resampled)" if resampled else "")
        return seg
    except _NotLean as err:
        predictor.lean_path = f"lean preprocessing, nnU-Net's conversion: {err}"
        return np.asarray(convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, predictor.plans_manager, predictor.configuration_manager, predictor.label_manager, props))


@dataclass
class _Part:
    spec: ModelSpec
    predictor: object  # nnUNetPredictor
    lut: np.ndarray | None  # model label -> output label (None for the locator)
    lean: bool = LEAN_DEFAULT  # bounded-memory pre/post-processing (`lean_predict`); False: nnU-Net's own

    @property
    def reader_name(self) -> str:
        return self.predictor.plans_manager.image_reader_writer_class.__name__

    @property
    def spacing_zyx(self) -> list[float]:
        """The spacing the model runs at (its training spacing), in the image array's z, y, x
        order: the configuration's, put back from nnU-Net's transposed order."""
        cm, pm = self.predictor.configuration_manager, self.predictor.plans_manager
        return [float(cm.spacing[i]) for i in pm.transpose_backward]

    def tile_crop(self, reference: Volume, box: tuple[slice, slice, slice]
                  ) -> tuple[tuple[slice, slice, slice], list[list[int]] | None]:
        """The crop (a z, y, x index box on `reference`) made of the whole network tiles nnU-Net
        places over `box` when it segments the full image, and those tiles' starts on the crop's
        network grid (None when the model's reader may reorient, so nnU-Net tiles the crop itself).

        Every tile that covers a voxel of `box` on the full image is one of them, so inside `box`
        the crop gets the full image's logits: exactly when the image is at the model's spacing
        (nothing is resampled) and nnU-Net's crop to non-zero voxels keeps the whole image (CT: air
        is -1000, not 0), to within interpolation otherwise. A crop is never smaller than
        one patch, so the network never sees padding the full image would not have.
        """
        from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
        from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

        pm, cm = self.predictor.plans_manager, self.predictor.configuration_manager
        forward = list(pm.transpose_forward)
        shape = [reference.array.shape[i] for i in forward]
        spacing = [reference.spacing[::-1][i] for i in forward]
        net_shape = compute_new_shape(shape, [abs(x) for x in spacing], cm.spacing)
        patch = [int(p) for p in cm.patch_size]
        steps = compute_steps_for_sliding_window([max(n, p) for n, p in zip(net_shape, patch)], patch,
                                                 self.predictor.tile_step_size)
        crop, starts = [], []
        for axis, i in enumerate(forward):
            scale = net_shape[axis] / shape[axis]  # network voxels per input voxel
            lo, hi = math.floor(box[i].start * scale), math.ceil(box[i].stop * scale)
            chosen = [s for s in steps[axis] if s < hi and s + patch[axis] > lo]
            net_lo, net_hi = chosen[0], chosen[-1] + patch[axis]
            # round, not floor/ceil: the crop's resampled grid then lands within half an input voxel
            # of the full image's and holds as many network voxels as the tiles span
            length = round((net_hi - net_lo) / scale)
            start = min(max(0, round(net_lo / scale)), max(0, shape[axis] - length))
            crop.append(slice(start, min(shape[axis], max(box[i].stop, start + length))))
            starts.append([s - net_lo for s in chosen])
        crop_zyx = tuple(crop[forward.index(i)] for i in range(3))
        return crop_zyx, (starts if self.reader_name == "SimpleITKIO" else None)

    def segment(self, channels: list[Volume], tile_starts: list[list[int]] | None = None,
                on_tiles: Callable[[int, int], None] | None = None) -> np.ndarray:
        """nnU-Net label map on the channels' common grid (z, y, x); `tile_starts` as tile_crop gives,
        `on_tiles(done, total)` after every batch of tiles. Both hold for this call only."""
        self.predictor.tile_starts, self.predictor.on_tiles = tile_starts, on_tiles
        try:
            return self._segment(channels)
        finally:
            self.predictor.tile_starts, self.predictor.on_tiles = None, None

    def _segment(self, channels: list[Volume]) -> np.ndarray:
        if self.reader_name == "SimpleITKIO":
            # Same array and properties SimpleITKIO.read_images would give for these images.
            props = nnunet_properties(channels[0])
            if self.lean:
                return lean_predict(self.predictor, [c.array for c in channels], props)
            data = np.stack([c.array for c in channels]).astype(np.float32, copy=False)
            return np.asarray(self.predictor.predict_single_npy_array(data, copy.deepcopy(props), None, None, False))
        return self._segment_via_reader(channels)

    def _segment_via_reader(self, channels: list[Volume]) -> np.ndarray:
        """Models planned with another reader (e.g. a reorienting or nibabel one, as TotalSegmentator's
        weights may be) go through that reader via temporary NIfTI files, so the axis order the
        network sees is exactly the one it was trained with."""
        reader = self.predictor.plans_manager.image_reader_writer_class()
        with tempfile.TemporaryDirectory(prefix="medseg_nnunet_") as tmp:
            files = []
            for i, c in enumerate(channels):
                f = Path(tmp) / f"case_{i:04d}.nii.gz"
                sitk.WriteImage(c.to_image(), str(f))
                files.append(str(f))
            data, props = reader.read_images(files)
            seg = self.predictor.predict_single_npy_array(data, copy.deepcopy(props), None, None, False)
            out = Path(tmp) / "seg.nii.gz"
            reader.write_seg(np.asarray(seg), str(out), props)
            return sitk.GetArrayFromImage(sitk.ReadImage(str(out)))

    @contextlib.contextmanager
    def mode(self, settings: ModeSettings):
        """Run with `settings`' tile step and at most its folds, for one call (the device queue
        runs one call at a time, so the shared predictor is never seen half-switched)."""
        predictor = self.predictor
        step, folds = predictor.tile_step_size, predictor.list_of_parameters
        predictor.tile_step_size = settings.tile_step_size
        if settings.max_folds:
            predictor.list_of_parameters = folds[:settings.max_folds]
        try:
            yield
        finally:
            predictor.tile_step_size, predictor.list_of_parameters = step, folds

    def warm_up(self) -> None:
        cm = self.predictor.configuration_manager
        pm = self.predictor.plans_manager
        n_channels = len(self.predictor.dataset_json["channel_names"])
        spacing_zyx = self.spacing_zyx
        shape = [int(p) for p in cm.patch_size]
        rng = np.random.default_rng(0)
        data = rng.normal(0, 100, size=(n_channels, *[shape[i] for i in pm.transpose_backward])).astype(np.float32)
        props = {"sitk_stuff": {"spacing": tuple(spacing_zyx[::-1]), "origin": (0.0, 0.0, 0.0),
                                "direction": (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)},
                 "spacing": list(spacing_zyx)}
        self.predictor.predict_single_npy_array(data, props, None, None, False)


def _lut(label_map: dict[int, int], model_labels: dict[int, str], dtype) -> np.ndarray:
    size = max([*model_labels, *label_map, 0]) + 1
    lut = np.zeros(size, dtype=dtype)
    for m, o in label_map.items():
        lut[m] = o
    return lut


class TaskPredictor:
    """One task's models, loaded once and kept resident on `device`."""

    def __init__(self, spec: TaskSpec, device: torch.device | None = None, max_voxels: int = DEFAULT_MAX_VOXELS,
                 lean: bool | None = None):
        """`lean`: nnU-Net's pre- and post-processing with bounded memory and identical masks (default,
        the server's MEDSEG_NNUNET_LEAN=0 turns it off) or nnU-Net's own code (False)."""
        self.spec = spec
        lean = LEAN_DEFAULT if lean is None else bool(lean)
        self.device = device or default_device()
        self.max_voxels = max_voxels
        self.out_dtype = np.uint8 if max(spec.labels) <= 255 else np.uint16
        self.ready = False
        self.parts: list[_Part] = []
        for m in spec.models:
            predictor = _make_nnunet_predictor(m, self.device, spec.tile_step_size, spec.use_mirroring,
                                               spec.tile_batch_size)
            self.parts.append(_Part(m, predictor, _lut(m.label_map, m.model_labels, self.out_dtype), lean))
        self.locator: _Part | None = None
        if spec.kidney_crop and spec.locator is not None:
            loc = _make_nnunet_predictor(spec.locator, self.device, spec.tile_step_size, False, spec.tile_batch_size)
            self.locator = _Part(spec.locator, loc, None, lean)

    def warm_up(self) -> None:
        """One prediction per network: moves weights to the device, builds caches (gaussian, cudnn)."""
        for part in self.parts + ([self.locator] if self.locator else []):
            with contextlib.redirect_stdout(io.StringIO()):
                part.warm_up()
        self.ready = True

    # -------------------------------------------------------------------------------------------
    def _check_phases(self, phases: dict[str, Volume]) -> list[Volume]:
        missing = [p for p in self.spec.phases if p not in phases or phases[p] is None]
        if missing:
            raise ValueError(f"task {self.spec.name!r} needs phase(s) {missing} "
                             f"(expects {self.spec.phases} in this order); got {sorted(phases)}")
        for p in self.spec.phases:
            check_3d(phases[p], p, self.max_voxels)
        reference = phases[self.spec.phases[0]]
        aligned = [reference]
        for p in self.spec.phases[1:]:
            try:
                aligned.append(align_to_reference(reference, phases[p]))
            except ValueError as err:
                raise ValueError(f"phase {p!r} cannot be brought onto phase {self.spec.phases[0]!r}: {err}") from err
        return aligned

    def locate_kidneys(self, reference: Volume, kidney_hint: Volume | None = None) -> tuple[slice, slice, slice] | None:
        """Kidney box on the reference grid: from the hint when given, else from the locator model."""
        if kidney_hint is not None:
            source, kidneys = kidney_hint, kidney_voxels(kidney_hint)
        elif self.locator is not None:
            source, kidneys = reference, np.isin(self.locator.segment([reference]), self.spec.locator_kidney_labels)
        else:
            return None
        box = mask_box(kidneys)
        if box is None:
            return None
        # labelled within the kidney voxels' own box: a full-size int32 label map of a
        # 512 x 512 x 800 scan is 0.8 GB
        kept = mask_box(keep_kidney_components(kidneys[box], source.voxel_volume_mm3))
        box = tuple(slice(b.start + k.start, b.start + k.stop) for b, k in zip(box, kept))
        return _region_on(reference, source, box, self.spec.crop_margin_mm)

    def predict(self, phases: dict[str, Volume], *, kidney_crop: bool = True, kidney_hint: Volume | None = None,
                progress: Progress | None = None, cancelled: Cancelled | None = None,
                mode: str = "accurate") -> Volume:
        """The task's mask on the first phase's grid, labels = spec.labels (see module doc);
        `mode`: an inference mode of the registry (registry.MODES)."""
        settings = self.spec.mode(mode)
        with contextlib.ExitStack() as modes:
            for part in self.parts + ([self.locator] if self.locator else []):
                modes.enter_context(part.mode(settings))
            return self._predict(phases, kidney_crop, kidney_hint, progress, cancelled)

    def _predict(self, phases, kidney_crop, kidney_hint, progress, cancelled) -> Volume:
        def report(stage: str, fraction: float, message: str) -> None:
            if cancelled is not None and cancelled():
                raise OperationCancelled(f"task {self.spec.name!r} cancelled during {stage}")
            if progress is not None:
                progress(stage, fraction, message)

        report("check", 0.0, f"checking phases {self.spec.phases}")
        channels = self._check_phases(phases)
        reference = channels[0]
        box = None
        if kidney_crop and self.spec.kidney_crop:
            report("locate", 0.1, "finding the kidneys" + (" from the given mask" if kidney_hint is not None
                                                          else " with the low-resolution locator"))
            box = self.locate_kidneys(reference, kidney_hint)
        out = np.zeros(reference.array.shape, dtype=self.out_dtype)
        regions = []
        n = len(self.parts)
        for i, part in enumerate(self.parts):
            if box is None:
                crop, tile_starts, work = (slice(None),) * 3, None, channels
                region = f"full image {reference.size}"
            else:
                crop, tile_starts = part.tile_crop(reference, box)
                work = [c.crop(crop) for c in channels]
                region = f"kidney crop {work[0].size} of {reference.size}"
            regions.append(region)
            what = f"model {i + 1}/{n} ({part.spec.folder.parent.name}) on {region}"
            report("predict", 0.2 + 0.75 * i / n, what)

            def on_tiles(done: int, total: int, i=i, what=what) -> None:
                report("predict", 0.2 + 0.75 * (i + done / total) / n, f"{what}: tile {done}/{total}")

            seg = part.segment(work, tile_starts, on_tiles)
            del work
            target = out[crop]
            step = _slab_rows(seg.shape)
            for lo in range(0, seg.shape[0], step):  # slab by slab: no full-size temporaries
                mapped = part.lut[np.clip(seg[lo:lo + step], 0, len(part.lut) - 1)]
                np.copyto(target[lo:lo + step], mapped, where=mapped > 0)  # later parts win overlaps; crops paste back
            del seg
        mask = reference.with_array(out, labels=dict(self.spec.labels))
        if progress is not None:
            progress("done", 1.0, "; ".join(sorted(set(regions))))
        return mask


# Tasks whose masks contain kidneys run first so later kidney-crop tasks can reuse them.
CASE_ORDER = ("total", "tumor", "ureter", "vessels")


def segment_case(predictors: dict[str, TaskPredictor], phases: dict[str, Volume], tasks: Iterable[str], *,
                 kidney_crop: bool = True, progress: Progress | None = None,
                 cancelled: Cancelled | None = None, mode: str = "accurate") -> dict[str, Volume]:
    """Several tasks on one case: each phase Volume (read once by the caller) is shared by every
    task that needs it, and the first kidney mask produced (e.g. `total`'s) is the kidney hint for
    the kidney-crop tasks after it. Unknown task -> ParameterError('tasks')."""
    tasks = list(dict.fromkeys(tasks))
    unknown = [t for t in tasks if t not in predictors]
    if unknown:
        raise ParameterError("tasks", f"unknown task(s) {unknown}; known tasks: {sorted(predictors)}")
    ordered = sorted(tasks, key=lambda t: CASE_ORDER.index(t) if t in CASE_ORDER else len(CASE_ORDER))
    results: dict[str, Volume] = {}
    hint: Volume | None = None
    for i, name in enumerate(ordered):
        p = predictors[name]

        def sub_progress(stage: str, fraction: float, message: str, i=i, name=name) -> None:
            if progress is not None:
                progress(f"{name}:{stage}", (i + fraction) / len(ordered), message)

        results[name] = p.predict({ph: phases[ph] for ph in p.spec.phases if ph in phases}, kidney_crop=kidney_crop,
                                  kidney_hint=hint, progress=sub_progress, cancelled=cancelled, mode=mode)
        if hint is None and any(is_kidney_name(n) for v, n in results[name].labels.items() if v):
            hint = results[name]
    return {t: results[t] for t in tasks}


def build_predictors(registry: dict[str, TaskSpec], device: torch.device | None = None, warm_up: bool = True,
                     progress: Progress | None = None,
                     max_voxels: int = DEFAULT_MAX_VOXELS, lean: bool | None = None) -> dict[str, TaskPredictor]:
    """All tasks' predictors, built (and warmed up) once at start-up (`lean`: see TaskPredictor)."""
    device = device or default_device()
    out = {}
    for i, (name, spec) in enumerate(registry.items()):
        if progress:
            progress("load", i / max(1, len(registry)), f"loading {name}")
        p = TaskPredictor(spec, device, max_voxels, lean)
        if warm_up:
            p.warm_up()
        out[name] = p
    return out
