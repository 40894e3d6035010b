"""Measurements of a label mask: voxel counts, volumes, boxes, components, largest diameter.

Everything is computed per label inside that label's bounding box, so memory follows the
structure, not the volume. Physical quantities use the mask's full geometry (spacing, origin
and direction): boxes in mm are the axis-aligned boxes around the transformed voxel-centre
corners of the index box, and diameters are Euclidean distances between voxel centres in mm.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from medseg.summary import Index3, LabelSummary, Point3, box_mm, index_box, integer_array, summarize_labels
from medseg.volumes import Volume
from medseg.progress import Cancelled, Progress, report_stage

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
class LabelMeasurement(LabelSummary):
    """Full measurement of one label: its summary plus components and largest diameter."""

    component_count: int = 0
    largest_diameter_mm: float = 0.0
    components: list[ComponentBox] = field(default_factory=list)  # largest first


# ---------------------------------------------------------------------------- diameters
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


# ---------------------------------------------------------------------------- public API
def measure_mask(
    mask: Volume,
    labels: dict[int, str] | None = None,
    *,
    progress: Progress | None = None,
    cancelled: Cancelled | None = None,
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
    array = integer_array(mask)
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
            c_lo, c_hi = index_box(piece_slices, lo)
            c_lo_mm, c_hi_mm = box_mm(matrix, c_lo, c_hi)
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
        results.append(LabelMeasurement(**vars(summary), component_count=int(count),
                                        largest_diameter_mm=diameter, components=components))
    report_stage(progress, cancelled, "measure", 1.0, f"{len(results)} labels measured")
    return results
