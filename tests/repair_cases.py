"""Test data for vessel/ureter repair: analytic tubes and cut phantom cases, with ground truth.

Shared by tests/test_repair.py, tests/test_graph.py and bench/bench_postprocess_repair.py.
Centre-lines are dense point lists in (x, y, z) mm; a voxel belongs to a tube when its centre
lies within the radius of the centre-line. A cut removes a slab of the tube perpendicular to
the centre-line, so the gap length along the tube is known exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from medseg.metrics import dice  # noqa: F401  (test_repair imports it from here)
from medseg.volumes import Volume

STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


def segment(p0, p1, step: float = 0.05) -> np.ndarray:
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    n = int(np.linalg.norm(p1 - p0) / step) + 2
    return p0 + np.linspace(0.0, 1.0, n)[:, None] * (p1 - p0)


def polyline(points, step: float = 0.05) -> np.ndarray:
    parts = [segment(a, b, step)[:-1] for a, b in zip(points[:-1], points[1:])]
    return np.concatenate(parts + [np.asarray(points[-1:], float)])


def arc(centre, radius: float, angle0: float, angle1: float, step: float = 0.05) -> np.ndarray:
    """Circular arc in the plane z = centre[2]."""
    n = int(radius * abs(angle1 - angle0) / step) + 2
    a = np.linspace(angle0, angle1, n)
    return np.column_stack([centre[0] + radius * np.cos(a), centre[1] + radius * np.sin(a), np.full(n, centre[2])])


def arc_length(line: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(line, axis=0), axis=1))])


def voxel_centres(volume: Volume, box=None) -> np.ndarray:
    """Physical (x, y, z) of voxel centres, (n, 3), in array order, optionally inside a box."""
    shape = volume.array.shape
    box = box or tuple(slice(0, n) for n in shape)
    zz, yy, xx = np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij")
    index = np.stack([xx.ravel(), yy.ravel(), zz.ravel(), np.ones(xx.size)])
    return (volume.index_to_physical_matrix() @ index)[:3].T


def paint_tube(volume: Volume, line: np.ndarray, radius: float, label: int) -> np.ndarray:
    """Boolean array: voxels within radius of the centre-line (painted into volume.array too)."""
    centres = voxel_centres(volume)
    distance, _ = cKDTree(line).query(centres, distance_upper_bound=radius + 1.0)
    inside = (distance <= radius).reshape(volume.array.shape)
    volume.array[inside] = label
    return inside


def cut_slab(volume: Volume, label: int, line: np.ndarray, at_mm: float, gap_mm: float, radius: float) -> int:
    """Set to background the voxels of `label` in a slab of thickness gap_mm perpendicular to
    the centre-line at arc length at_mm, within radius + 3 mm of it. Returns voxels removed."""
    s = arc_length(line)
    i = min(int(np.searchsorted(s, at_mm)), len(line) - 1)
    centre = line[i]
    a, b = line[max(i - 20, 0)], line[min(i + 20, len(line) - 1)]
    tangent = (b - a) / np.linalg.norm(b - a)
    reach = max(gap_mm, radius) + 4.0
    inverse = np.linalg.inv(volume.index_to_physical_matrix())
    corners = np.array([[centre[0] + dx, centre[1] + dy, centre[2] + dz, 1.0] for dx in (-reach, reach) for dy in (-reach, reach) for dz in (-reach, reach)])
    index = (inverse @ corners.T)[:3].T
    lo = np.maximum(np.floor(index.min(axis=0)).astype(int), 0)[::-1]
    hi = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 1, volume.size)[::-1]
    box = tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))
    points = voxel_centres(volume, box) - centre
    along = points @ tangent
    across = np.linalg.norm(points - along[:, None] * tangent, axis=1)
    in_slab = (np.abs(along) <= gap_mm / 2) & (across <= radius + 3.0)
    region = volume.array[box]
    remove = in_slab.reshape(region.shape) & (region == label)
    region[remove] = 0
    return int(remove.sum())


def tube_case(spacing, extent_mm, line, radius, cuts, label, direction=None) -> tuple[Volume, Volume]:
    """(cut mask, uncut truth) for one tube of `label`; cuts: [(arc length mm, gap mm)]."""
    size = [int(round(e / s)) for e, s in zip(extent_mm, spacing)]
    kw = {} if direction is None else {"direction": direction}
    truth = Volume(np.zeros(size[::-1], np.uint8), spacing=spacing, **kw)
    paint_tube(truth, line, radius, label)
    cut = Volume(truth.array.copy(), spacing=spacing, **kw)
    for at_mm, gap_mm in cuts:
        cut_slab(cut, label, line, at_mm, gap_mm, radius)
    return cut, truth


def pieces(array: np.ndarray, label: int) -> int:
    return int(ndimage.label(array == label, structure=STRUCTURE_26)[1])



# ----------------------------------------------------------------------------------------
# phantom cases


@dataclass
class CutPhantom:
    cut: Volume  # the phantom's label mask with gaps cut into artery and ureters
    truth: Volume  # the uncut label mask
    gaps: list[tuple[str, float, float, int]]  # (tube name, arc length mm, gap mm, label)
    removed: np.ndarray  # bool: voxels the cuts removed


# Where to cut each phantom tube: (fraction of its length, gap mm). Gaps 2-8 mm, away from
# bends and ends so every gap has tube on both sides. (The left renal artery is left whole:
# between the aorta wall and the kidney it is too short to leave a tube on both sides.)
PHANTOM_CUTS = {
    "aorta": [(0.6, 2.0)],  # the polyline starts far above the field of view: 0.6 is inside it
    "renal_artery_right": [(0.35, 3.0), (0.75, 7.0)],
    "iliac_artery_left": [(0.45, 4.0)],
    "iliac_artery_right": [(0.6, 6.0)],
    "ureter_left": [(0.3, 2.0), (0.7, 8.0)],
    "ureter_right": [(0.25, 6.0), (0.6, 3.0)],
}


def cut_phantom(size=(192, 192, 160), seed: int = 0, cuts=None) -> CutPhantom:
    from medseg.phantom import make_phantom

    case = make_phantom(size=size, seed=seed)
    truth = case.labels
    cut = Volume(truth.array.copy(), truth.spacing, truth.origin, truth.direction, truth.labels)
    gaps = []
    for name, plan in (cuts or PHANTOM_CUTS).items():
        tube = case.anatomy["tubes"][name]
        line = polyline(tube["points_mm"], step=0.1)
        total = arc_length(line)[-1]
        label = int(tube["label"]) if not isinstance(tube["label"], str) else _label_value(tube["label"])
        chosen: list[float] = []
        for fraction, gap in plan:
            at = _away_from_bends(tube["points_mm"], fraction * total, total, chosen)
            chosen.append(at)
            cut_slab(cut, label, line, at, gap, tube["radius_mm"])
            gaps.append((name, round(float(at), 1), gap, label))
    return CutPhantom(cut=cut, truth=truth, gaps=gaps, removed=(truth.array != cut.array))


def _away_from_bends(points, at_mm: float, total: float, other_cuts=(), clearance: float = 10.0) -> float:
    """The arc length nearest at_mm that lies clearance mm from every bend and end of the
    polyline (a cut right on a bend leaves two ends that face different ways) and 2 x
    clearance from the other cuts (so every piece between cuts is a tube, not a disc)."""
    corners = arc_length(np.asarray(points, float))
    options = np.arange(clearance, total - clearance, 0.5)
    far = np.all(np.abs(options[:, None] - corners[None, :]) >= clearance, axis=1)
    for other in other_cuts:
        far &= np.abs(options - other) >= 2 * clearance
    if not far.any():
        return at_mm
    options = options[far]
    return float(options[np.argmin(np.abs(options - at_mm))])


def _label_value(name: str) -> int:
    from medseg.labels import NAMES

    return {n: v for v, n in NAMES.items()}[name]
