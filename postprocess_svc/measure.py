"""Measurements of a label mask: voxel counts, volumes, boxes, components, largest diameter.

Everything is computed per label inside that label's bounding box, so memory follows the
structure, not the volume. Physical quantities use the mask's full geometry (spacing, origin
and direction): boxes in mm are the axis-aligned boxes around the transformed voxel-centre
corners of the index box, and diameters are Euclidean distances between voxel centres in mm.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from medseg.labels import NAMES
from medseg.volumes import Volume
from postprocess_svc.regions import report_stage

Index3 = tuple[int, int, int]
Point3 = tuple[float, float, float]

_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


@dataclass
class ComponentBox:
    """One connected component (26-connectivity) of a label, e.g. a small stone."""

    voxel_count: int
    volume_ml: float
    min_index: Index3  # (x, y, z), inclusive
    max_index: Index3
    min_mm: Point3  # LPS mm, box around the voxel-centre corners
    max_mm: Point3
    largest_diameter_mm: float


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


@dataclass
class LabelMeasurement:
    """Full measurement of one label."""

    value: int
    name: str
    voxel_count: int
    volume_ml: float
    min_index: Index3
    max_index: Index3
    min_mm: Point3
    max_mm: Point3
    component_count: int
    largest_diameter_mm: float
    components: list[ComponentBox] = field(default_factory=list)  # largest first


# ---------------------------------------------------------------------------- helpers
def _integer_array(mask: Volume) -> np.ndarray:
    """The mask's voxels as a non-negative integer array (no copy when already one)."""
    array = np.asarray(mask.array)
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
        raise ValueError(f"mask values must be >= 0, got minimum {int(array.min())}")
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


def _z_chunks(box, voxels: int = 1 << 22):
    """Split a (z, y, x) box along z into pieces of about `voxels` voxels."""
    z, y, x = box
    step = max(1, voxels // max(1, (y.stop - y.start) * (x.stop - x.start)))
    for start in range(z.start, z.stop, step):
        yield (slice(start, min(start + step, z.stop)), y, x)


def _box_mm(matrix: np.ndarray, lo: Index3, hi: Index3) -> tuple[Point3, Point3]:
    """Axis-aligned physical box around the 8 voxel-centre corners of an index box."""
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    points = corners @ matrix.T
    low, high = points[:, :3].min(axis=0), points[:, :3].max(axis=0)
    return tuple(float(v) for v in low), tuple(float(v) for v in high)  # type: ignore[return-value]


def _index_box(slices, offset: Index3 = (0, 0, 0)) -> tuple[Index3, Index3]:
    """(x, y, z) inclusive min/max indices of (z, y, x) slices shifted by an (x, y, z) offset."""
    z, y, x = slices
    lo = (x.start + offset[0], y.start + offset[1], z.start + offset[2])
    hi = (x.stop - 1 + offset[0], y.stop - 1 + offset[1], z.stop - 1 + offset[2])
    return lo, hi


def _hull_candidates(inside: np.ndarray) -> np.ndarray:
    """(x, y, z) indices of the first and last voxel of every row along the box's longest
    axis. Any voxel between two others on a line is no convex-hull vertex, so these rows'
    ends hold every hull vertex of the voxel centres, at a fraction of the voxel count."""
    axis = int(np.argmax(inside.shape))
    present = inside.any(axis=axis)
    n = inside.shape[axis]
    first = np.argmax(inside, axis=axis)
    last = n - 1 - np.argmax(np.flip(inside, axis=axis), axis=axis)
    rows = np.nonzero(present)
    ends = []
    for along in (first[rows], last[rows]):
        coords = list(rows)
        coords.insert(axis, along)  # (z, y, x) order restored
        ends.append(np.stack(coords[::-1], axis=1))  # -> (x, y, z)
    return np.unique(np.concatenate(ends), axis=0)


def _max_pairwise_distance(points: np.ndarray) -> float:
    """Largest distance between any two points (|a|^2 + |b|^2 - 2ab, in blocks via BLAS)."""
    points = points - points.mean(axis=0)  # centred: keeps the expansion accurate
    squared = (points * points).sum(axis=1)
    best = 0.0
    block = 1024
    for start in range(0, len(points), block):
        chunk = points[start : start + block]
        d2 = squared[start : start + block, None] + squared[None, :] - 2.0 * (chunk @ points.T)
        best = max(best, float(d2.max()))
    return float(np.sqrt(max(best, 0.0)))


def _diameter_of_points(points_mm: np.ndarray) -> float:
    """Largest distance between points via their convex hull; handles flat/linear/1-point sets."""
    if len(points_mm) < 2:
        return 0.0
    if len(points_mm) <= 64:
        return _max_pairwise_distance(points_mm)
    centred = points_mm - points_mm.mean(axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    rank = int(np.sum(singular > 1e-6 * max(singular[0], 1e-12)))
    if rank <= 1:  # all on a line: the ends of the projection onto it
        t = centred @ axes[0]
        return float(t.max() - t.min())
    # hull in the points' own span: 2D for a flat set, 3D otherwise
    reduced = centred @ axes[:rank].T
    try:
        vertices = ConvexHull(reduced).vertices
    except QhullError:
        vertices = np.arange(len(points_mm))
    return _max_pairwise_distance(_diameter_candidates(points_mm[vertices]))


def _diameter_candidates(points: np.ndarray) -> np.ndarray:
    """Drop points that cannot end a pair longer than a known one: a point at distance r from
    a centre c is at most r + R from any other (R = the largest such r). Elongated shapes
    (kidneys, vessels) keep only their two ends, so the exact O(n^2) step stays small."""
    if len(points) <= 256:
        return points
    centre = (points.min(axis=0) + points.max(axis=0)) / 2.0
    radius = np.linalg.norm(points - centre, axis=1)
    # a long pair from two farthest-point sweeps: a lower bound on the diameter
    a = points[int(np.argmax(radius))]
    b = points[int(np.argmax(np.linalg.norm(points - a, axis=1)))]
    a = points[int(np.argmax(np.linalg.norm(points - b, axis=1)))]
    known = float(np.linalg.norm(a - b))
    keep = radius + radius.max() >= known
    return np.concatenate([points[keep], a[None], b[None]])


def _diameter_mm(inside: np.ndarray, offset: Index3, matrix: np.ndarray) -> float:
    """Largest distance in mm between voxel centres of a boolean box whose (x, y, z) index
    origin is offset."""
    candidates = _hull_candidates(inside) + np.asarray(offset)
    points = candidates @ matrix[:3, :3].T  # translation does not change distances
    return _diameter_of_points(points)


def _summary_of(value: int, name: str, count: int, slices, voxel_ml: float, matrix) -> LabelSummary:
    lo, hi = _index_box(slices)
    lo_mm, hi_mm = _box_mm(matrix, lo, hi)
    return LabelSummary(value, name, int(count), count * voxel_ml, lo, hi, lo_mm, hi_mm)


# ---------------------------------------------------------------------------- public API
def summarize_labels(mask: Volume, labels: dict[int, str] | None = None, *, require_names: bool = True) -> list[LabelSummary]:
    """Per-label voxel count, volume (ml) and bounding box, background excluded, by value.

    One pass over the volume for the boxes (ndimage.find_objects), then counting inside each
    box, with no full-volume temporaries. Names come from `labels`, else mask.labels, else the convention; a
    value with no name raises ValueError unless require_names is False (then its name is "").
    """
    array = _integer_array(mask)
    if array.size == 0:
        return []
    values, counts, boxes = _counts_and_boxes(array)
    names = _label_names(mask, labels)
    if require_names:
        _require_names(values, names)
    voxel_ml = mask.voxel_volume_mm3 / 1000.0
    matrix = mask.index_to_physical_matrix()
    return [_summary_of(v, names.get(v, ""), counts[v], boxes[v], voxel_ml, matrix) for v in values]


def measure_mask(
    mask: Volume,
    labels: dict[int, str] | None = None,
    *,
    progress: Callable[[str, float, str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> list[LabelMeasurement]:
    """Measure every label present (background excluded), ordered by value.

    Per label: voxel count, volume, bounding box (index and mm), connected components
    (26-connectivity) each with its own box, volume and largest diameter (largest first),
    and the label's largest diameter (max distance between its voxel centres, in mm).
    ValueError for a value with no name (from `labels`, mask.labels or the convention).
    """
    summaries = summarize_labels(mask, labels)
    if not summaries:
        return []
    array = _integer_array(mask)
    matrix = mask.index_to_physical_matrix()
    voxel_ml = mask.voxel_volume_mm3 / 1000.0
    results = []
    for n, summary in enumerate(summaries):
        report_stage(progress, cancelled, "measure", n / len(summaries), f"label {summary.value} {summary.name}")
        lo, hi = summary.min_index, summary.max_index
        box = (slice(lo[2], hi[2] + 1), slice(lo[1], hi[1] + 1), slice(lo[0], hi[0] + 1))
        inside = array[box] == summary.value
        pieces, count = ndimage.label(inside, structure=_CONNECTIVITY_26)
        sizes = np.bincount(pieces.reshape(-1), minlength=count + 1)
        components = []
        for piece, piece_slices in enumerate(ndimage.find_objects(pieces), start=1):
            c_lo, c_hi = _index_box(piece_slices, lo)
            c_lo_mm, c_hi_mm = _box_mm(matrix, c_lo, c_hi)
            c_offset = c_lo
            c_inside = pieces[piece_slices] == piece
            components.append(
                ComponentBox(
                    voxel_count=int(sizes[piece]),
                    volume_ml=float(sizes[piece]) * voxel_ml,
                    min_index=c_lo,
                    max_index=c_hi,
                    min_mm=c_lo_mm,
                    max_mm=c_hi_mm,
                    largest_diameter_mm=_diameter_mm(c_inside, c_offset, matrix) if sizes[piece] > 1 else 0.0,
                )
            )
        components.sort(key=lambda c: (-c.voxel_count, c.min_index[2], c.min_index[1], c.min_index[0]))
        diameter = components[0].largest_diameter_mm if count == 1 else _diameter_mm(inside, lo, matrix)
        results.append(
            LabelMeasurement(
                value=summary.value,
                name=summary.name,
                voxel_count=summary.voxel_count,
                volume_ml=summary.volume_ml,
                min_index=summary.min_index,
                max_index=summary.max_index,
                min_mm=summary.min_mm,
                max_mm=summary.max_mm,
                component_count=int(count),
                largest_diameter_mm=diameter,
                components=components,
            )
        )
    report_stage(progress, cancelled, "measure", 1.0, f"{len(results)} labels measured")
    return results
