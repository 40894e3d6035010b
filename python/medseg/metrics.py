"""Segmentation metrics against a ground truth: Dice, HD95, volume error, pieces.

Plain functions on boolean z, y, x arrays with the grid's spacing (x, y, z mm, as Volume
keeps it). Used by the evaluation harness (scripts/eval.py); SciPy is imported when called.
"""
from __future__ import annotations

import math

import numpy as np

# Pieces are counted with 26-connectivity, as the repair and speck cleanup see them.
CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, truth).sum()) / total


def _box(*masks: np.ndarray) -> tuple[slice, ...]:
    any_ = np.logical_or.reduce(masks)
    index = np.nonzero(any_)
    return tuple(slice(max(0, int(i.min()) - 2), int(i.max()) + 3) for i in index)


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95_mm(pred: np.ndarray, truth: np.ndarray, spacing_xyz) -> float:
    """Symmetric 95th-percentile surface distance in mm (0 when both are empty, inf when one is)."""
    from scipy import ndimage

    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return math.inf
    box = _box(pred, truth)
    a, b = _surface(pred[box]), _surface(truth[box])
    sampling = tuple(float(s) for s in spacing_xyz)[::-1]
    to_b = ndimage.distance_transform_edt(~b, sampling=sampling)[a]
    to_a = ndimage.distance_transform_edt(~a, sampling=sampling)[b]
    return float(max(np.percentile(to_b, 95), np.percentile(to_a, 95)))


def volume_error(pred: np.ndarray, truth: np.ndarray) -> float:
    """(predicted - true) / true voxel count; 0 when both are empty, inf when only truth is."""
    t = int(truth.sum())
    if t == 0:
        return 0.0 if not pred.any() else math.inf
    return (int(pred.sum()) - t) / t


def pieces(mask: np.ndarray) -> int:
    from scipy import ndimage

    return int(ndimage.label(mask, structure=CONNECTIVITY)[1])


def compare(pred: np.ndarray, truth: np.ndarray, spacing_xyz) -> dict:
    """Every metric of one structure."""
    return {"dice": dice(pred, truth), "hd95_mm": hd95_mm(pred, truth, spacing_xyz),
            "volume_error": volume_error(pred, truth), "pieces": pieces(pred), "true_pieces": pieces(truth)}
