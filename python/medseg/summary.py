"""Per-label summary of a mask: voxel count, volume and bounding box (index and mm).

Carried by every result of every service, and the first step of Measure. One pass over the
volume for the boxes (ndimage.find_objects), then counting inside each box, with no
full-volume temporaries.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg.labels import NAMES
from medseg.volumes import Volume

Index3 = tuple[int, int, int]
Point3 = tuple[float, float, float]


@dataclass
class LabelSummary:
    """Cheap per-label numbers carried by every result: count, volume, bounding box."""

    value: int
    name: str
    voxel_count: int
    volume_ml: float
    min_index: Index3
    max_index: Index3
    min_mm: Point3
    max_mm: Point3



# ---------------------------------------------------------------------------- helpers
def integer_array(mask: Volume | np.ndarray) -> np.ndarray:
    """The one mask-to-integer coercer: a mask's voxels (a Volume or its array) as a
    non-negative integer array, with no copy when already one. Bool becomes uint8; floats
    are accepted only when every value is whole."""
    array = np.asarray(mask.array if isinstance(mask, Volume) else mask)
    if array.ndim != 3:
        raise ValueError(f"mask must be 3D, got {array.ndim}D array of shape {array.shape}")
    if array.dtype == bool:
        return array.view(np.uint8)
    if array.dtype.kind == "f":
        # Some tools store masks as floats; accept them only when every value is whole.
        if not np.all(np.isfinite(array)) or np.any(array != np.rint(array)):
            raise ValueError(f"mask values must be whole numbers, got dtype {array.dtype} with fractions")
        hi = float(array.max()) if array.size else 0.0
        array = array.astype(np.uint8 if hi < 256 else np.uint16 if hi < 65536 else np.int64)
    elif array.dtype.kind not in "ui":
        raise ValueError(f"mask must have an integer voxel type, got {array.dtype}")
    if array.size and array.dtype.kind == "i" and int(array.min()) < 0:
        negative = np.unique(array[array < 0])[:20].tolist()
        raise ValueError(f"mask values must be >= 0 (label numbers), got negative values {negative}")
    return array


def _label_names(mask: Volume, labels: dict[int, str] | None) -> dict[int, str]:
    if labels is not None:
        return {int(v): str(n) for v, n in labels.items()}
    if mask.labels:
        return {int(v): str(n) for v, n in mask.labels.items()}
    return dict(NAMES)


def _require_names(values, names: dict[int, str]) -> None:
    unknown = [int(v) for v in values if int(v) not in names]
    if unknown:
        expected = ", ".join(f"{v}={n}" for v, n in sorted(names.items()) if v != 0)
        raise ValueError(f"mask has label values {unknown} with no name in its label table (expected {expected})")


def _counts_and_boxes(array: np.ndarray):
    """Values present, their voxel counts and (z, y, x) slices, without full-volume temporaries.

    find_objects gives every value's box in one pass. Counting inside each box is cheapest
    while the boxes together stay near the volume's size (the usual case: organs are local);
    otherwise one chunked bincount pass (np.bincount casts to int64, so never all at once).
    """
    top = int(array.max()) if array.size else 0
    if top >= 1 << 24:
        raise ValueError(f"mask label values must be below {1 << 24}, got {top}")
    if top == 0:
        return [], {}, {}
    found = ndimage.find_objects(array, max_label=top)
    boxes = {value: box for value, box in enumerate(found, start=1) if box is not None}
    box_voxels = sum(int(np.prod([s.stop - s.start for s in box])) for box in boxes.values())
    counts: dict[int, int] = {}
    if box_voxels <= 3 * array.size:
        for value, box in boxes.items():
            counts[value] = sum(int(np.count_nonzero(array[chunk] == value)) for chunk in _z_chunks(box))
    else:
        totals = np.zeros(top + 1, dtype=np.int64)
        for chunk in _z_chunks(tuple(slice(0, n) for n in array.shape)):
            totals += np.bincount(array[chunk].reshape(-1), minlength=top + 1)
        counts = {value: int(totals[value]) for value in boxes}
    return sorted(boxes), counts, boxes


# Voxels per slab when a big mask is scanned piece by piece, so temporaries (bool masks,
# bincount's int64 copy) stay a few MB instead of the mask's size.
SLAB_VOXELS = 1 << 22


def z_slabs(start: int, stop: int, plane_voxels: int, voxels: int = SLAB_VOXELS):
    """z ranges [start, stop) in slabs of about `voxels` voxels of `plane_voxels` each."""
    step = max(1, voxels // max(1, plane_voxels))
    for z in range(start, stop, step):
        yield slice(z, min(z + step, stop))


def _z_chunks(box):
    """Split a (z, y, x) box along z into slabs."""
    z, y, x = box
    for zs in z_slabs(z.start, z.stop, (y.stop - y.start) * (x.stop - x.start)):
        yield (zs, y, x)


def mask_box(mask: np.ndarray, grow: int = 0) -> tuple[slice, slice, slice] | None:
    """(z, y, x) bounding box of a boolean mask's voxels grown by `grow` voxels (clipped to the
    array), None when it has none: one find_objects pass, no full-size temporary."""
    found = ndimage.find_objects(mask.view(np.uint8))
    if not found or found[0] is None:
        return None
    return tuple(slice(max(0, b.start - grow), min(n, b.stop + grow))  # type: ignore[return-value]
                 for b, n in zip(found[0], mask.shape))


def box_mm(matrix: np.ndarray, lo: Index3, hi: Index3) -> tuple[Point3, Point3]:
    """Axis-aligned physical box around the 8 voxel-centre corners of an index box."""
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    points = corners @ matrix.T
    low, high = points[:, :3].min(axis=0), points[:, :3].max(axis=0)
    return tuple(float(v) for v in low), tuple(float(v) for v in high)  # type: ignore[return-value]


def index_box(slices, offset: Index3 = (0, 0, 0)) -> tuple[Index3, Index3]:
    """(x, y, z) inclusive min/max indices of (z, y, x) slices shifted by an (x, y, z) offset."""
    z, y, x = slices
    lo = (x.start + offset[0], y.start + offset[1], z.start + offset[2])
    hi = (x.stop - 1 + offset[0], y.stop - 1 + offset[1], z.stop - 1 + offset[2])
    return lo, hi


def _summary_of(value: int, name: str, count: int, slices, voxel_ml: float, matrix) -> LabelSummary:
    lo, hi = index_box(slices)
    lo_mm, hi_mm = box_mm(matrix, lo, hi)
    return LabelSummary(value, name, int(count), count * voxel_ml, lo, hi, lo_mm, hi_mm)



def summarize_labels(mask: Volume, labels: dict[int, str] | None = None, *, require_names: bool = True) -> list[LabelSummary]:
    """Per-label voxel count, volume (ml) and bounding box, background excluded, by value.

    One pass over the volume for the boxes (ndimage.find_objects), then counting inside each
    box, with no full-volume temporaries. Names come from `labels`, else mask.labels, else the convention; a
    value with no name raises ValueError unless require_names is False (then its name is "").
    """
    array = integer_array(mask)
    if array.size == 0:
        return []
    values, counts, boxes = _counts_and_boxes(array)
    names = _label_names(mask, labels)
    if require_names:
        _require_names(values, names)
    voxel_ml = mask.voxel_volume_mm3 / 1000.0
    matrix = mask.index_to_physical_matrix()
    return [_summary_of(v, names.get(v, ""), counts[v], boxes[v], voxel_ml, matrix) for v in values]
