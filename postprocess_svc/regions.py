"""Region-of-interest helpers shared by the post-processing operations.

Every operation works on the smallest box that holds what it needs: find the box of a
mask plus a margin in mm (so anisotropic spacing is handled), cut the volume to it with
its geometry kept exact, work there, and paste the result back into the full grid.

Stable API (other modules import it):
    bbox_of(mask_bool, margin_mm, spacing) -> tuple[slice, slice, slice]
    bbox_of_values(label_array, values, margin_mm, spacing) -> same, without a full-size copy
    paste(full_array, slices, cropped_array) -> full_array
    grid_mismatch(reference, other) -> str | None
    require_same_grid(reference, other, what, reference_name="mask")
    require_convention(array, what, allowed) -> values present
Slices are in array order (z, y, x); spacing is in Volume order (x, y, z).
"""
from __future__ import annotations

import math

import numpy as np

from medseg.summary import integer_array, z_slabs
from medseg.volumes import Volume

Slices = tuple[slice, slice, slice]


def margin_voxels(margin_mm: float, spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    """Margin in voxels along (z, y, x) covering at least margin_mm on each axis."""
    if margin_mm < 0:
        raise ValueError(f"margin_mm must be >= 0, got {margin_mm}")
    sx, sy, sz = spacing
    return tuple(int(math.ceil(margin_mm / s - 1e-9)) for s in (sz, sy, sx))  # type: ignore[return-value]


def bbox_of(mask_bool: np.ndarray, margin_mm: float, spacing: tuple[float, float, float]) -> Slices:
    """Bounding box (z, y, x slices) of the True voxels grown by margin_mm, clipped to the array.

    Raises ValueError for an empty mask: there is no region to work on.
    """
    mask_bool = np.asarray(mask_bool)
    if mask_bool.ndim != 3:
        raise ValueError(f"expected a 3D mask, got {mask_bool.ndim}D")
    pad = margin_voxels(margin_mm, spacing)
    slices = []
    for axis in range(3):
        # Project onto one axis at a time: cheaper than np.nonzero on a large volume.
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask_bool.any(axis=other))
        if present.size == 0:
            raise ValueError("cannot take the bounding box of an empty mask")
        lo = max(0, int(present[0]) - pad[axis])
        hi = min(mask_bool.shape[axis], int(present[-1]) + 1 + pad[axis])
        slices.append(slice(lo, hi))
    return tuple(slices)  # type: ignore[return-value]


def bbox_of_values(array: np.ndarray, values, margin_mm: float, spacing: tuple[float, float, float]) -> Slices:
    """bbox_of(np.isin(array, values), ...) computed slab by slab, so no full-size boolean
    copy of a large label map is made."""
    values = list(values)
    present_z = np.zeros(array.shape[0], dtype=bool)
    present_y = np.zeros(array.shape[1], dtype=bool)
    present_x = np.zeros(array.shape[2], dtype=bool)
    for zs in z_slabs(0, array.shape[0], array.shape[1] * array.shape[2]):
        slab = np.isin(array[zs], values)
        present_z[zs] = slab.any(axis=(1, 2))
        present_y |= slab.any(axis=(0, 2))
        present_x |= slab.any(axis=(0, 1))
    if not present_z.any():
        raise ValueError(f"cannot take the bounding box of an empty mask (no voxels with values {values})")
    pad = margin_voxels(margin_mm, spacing)
    slices = []
    for axis, present in enumerate((present_z, present_y, present_x)):
        found = np.flatnonzero(present)
        slices.append(slice(max(0, int(found[0]) - pad[axis]), min(array.shape[axis], int(found[-1]) + 1 + pad[axis])))
    return tuple(slices)  # type: ignore[return-value]


def full_slices(shape: tuple[int, ...]) -> Slices:
    """Slices covering a whole (z, y, x) array."""
    return tuple(slice(0, n) for n in shape)  # type: ignore[return-value]


def paste(full_array: np.ndarray, slices: Slices, cropped_array: np.ndarray) -> np.ndarray:
    """Write cropped_array into full_array at slices (in place) and return full_array."""
    target = full_array[slices]
    if target.shape != cropped_array.shape:
        raise ValueError(f"cropped array shape {cropped_array.shape} does not fit region {target.shape}")
    full_array[slices] = cropped_array
    return full_array


def grid_mismatch(reference: Volume, other: Volume, tol: float = 1e-4) -> str | None:
    """None when both volumes share a grid, else which properties differ and how."""
    problems = []
    if reference.size != other.size:
        problems.append(f"size {other.size} vs {reference.size}")
    if not np.allclose(reference.spacing, other.spacing, atol=tol):
        problems.append(f"spacing {_fmt(other.spacing)} vs {_fmt(reference.spacing)}")
    if not np.allclose(reference.origin, other.origin, atol=tol):
        problems.append(f"origin {_fmt(other.origin)} vs {_fmt(reference.origin)}")
    if not np.allclose(reference.direction, other.direction, atol=tol):
        problems.append(f"direction {_fmt(other.direction)} vs {_fmt(reference.direction)}")
    return "; ".join(problems) or None


def require_same_grid(reference: Volume, other: Volume, what: str, reference_name: str = "mask") -> None:
    """Raise ValueError naming the volume and the differing properties when grids differ."""
    problem = grid_mismatch(reference, other)
    if problem:
        raise ValueError(f"{what} is not on the {reference_name}'s grid ({what} vs {reference_name}): {problem}")


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def label_values_present(array: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer label array (bincount: fast on big uint8/16 masks)."""
    array = np.asarray(array)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        array = integer_array(array)
    lo, hi = int(array.min()), int(array.max())
    if lo >= 0 and hi < 65536:
        # bincount converts to int64: count slab by slab so the copy stays small.
        counts = np.zeros(hi + 1, dtype=np.int64)
        flat = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(1, -1)
        for rows in z_slabs(0, flat.shape[0], flat.shape[1]):
            counts += np.bincount(flat[rows].ravel(), minlength=hi + 1)
        return np.flatnonzero(counts)
    return np.unique(array).astype(np.int64)


def require_convention(array: np.ndarray, what: str, allowed: dict[int, str]) -> np.ndarray:
    """Values present in a convention mask; ValueError naming the values outside `allowed`."""
    present = label_values_present(array)
    unknown = [int(v) for v in present if int(v) not in allowed]
    if unknown:
        expected = ", ".join(f"{v}={n}" for v, n in sorted(allowed.items()))
        raise ValueError(f"{what} has values {unknown} outside the label convention (expected {expected})")
    return present
