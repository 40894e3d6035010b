"""Tumor facts surgeons plan with: size, side, pole, depth, distances, R.E.N.A.L. score.

`tumor_facts(mask)` takes a convention label mask (kidney 1, tumor 2, artery 3, vein 4,
ureter 5, fat 6; medseg.labels) with its geometry and returns one `TumorFacts` per tumor:
every 26-connected component of the tumor label is one tumor (a multifocal kidney gives
several entries), largest first. Mask validation (integer voxels, convention values) is the
server's job; this function trusts its input. All positions are physical LPS mm (+x patient
left, +y posterior, +z superior) through the mask's spacing, origin and direction, so a
rotated or anisotropic grid gives the same facts as an axis-aligned one.

Cost follows the structures, not the grid: the kidneys and tumors are labelled inside their
bounding box, each kidney is modelled inside its own box, and each distance is an EDT (in mm,
`sampling` = spacing) inside a box around the tumor grown until it holds the nearest target.

Measured directly from the voxels:
  * volume_ml: tumor voxels x voxel volume.
  * max_diameter_mm: largest distance between tumor voxel centres (exact, convex-hull based:
    postprocess_svc.measure); it can read up to a voxel short (on the phantom's spheres at
    1.5 mm: 0.2 mm at most).
  * distances (artery, vein, sinus): the gap between the two structures' surfaces, from the
    nearest pair of voxel centres (EDT in mm): their distance minus half of one voxel's extent
    along the line joining them (a boundary voxel's centre lies on average about a quarter
    voxel inside the true surface; on the phantom's analytic tubes this is unbiased within
    0.2 mm at 1.5 mm voxels, where the full voxel would read 1 mm short), and 0 when the two
    voxel sets touch. None when the structure is absent.

Approximated (the mask does not show the kidney's outline behind the tumor, the renal sinus
or the polar lines), each as stated:
  * The kidney's outer surface: an ellipsoid, least-squares fitted (algebraic quadric fit) to
    the voxel faces between that kidney and whatever is neither kidney, tumor nor renal sinus.
    Not the convex hull of the parenchyma: where the tumor replaced kidney, the hull cuts
    straight across the bite, so the tumor between that chord and the old, curved outline
    counts as exophytic (on 12 phantom seeds the hull overstates the share by 0.03-0.12 and
    flips E once; the ellipsoid errs by < 0.005). The ellipsoid closes the bite with the
    kidney's own curvature, and away from the hilum a kidney is close to an ellipsoid.
    The ellipsoid gives the kidney's centre, its superior-inferior extent (so a pole the
    tumor replaced still counts) and its antero-posterior midplane. If the fit is no ellipsoid
    (e.g. a small kidney fragment) the facts that need it are None, with a note.
  * exophytic_fraction: share of the tumor's voxels whose centres lie outside that ellipsoid.
  * The renal sinus / collecting system (the convention has no label for it):
      1. as the mask shows it: voxels inside the convex hull of the kidney's parenchyma that
         are neither kidney nor tumor (sinus fat, collecting system and hilar vessels, where a
         segmentation leaves the sinus unlabelled), keeping the pieces that reach at least
         SINUS_DEPTH_MM into the hull (a bumpy outline's shallow dents are no sinus);
         sinus_source "mask";
      2. where there is none (masks that label the collecting system as kidney, as the
         phantom does): the ureter's top end, the ureter voxels touching that kidney, i.e. the
         pelvi-ureteric junction. It is part of the collecting system, so the distance is an
         upper bound on the distance to the collecting system; N is then given only when the
         bound decides it (<= 4 mm: N = 3), else None with a note; sinus_source "ureter".
  * polar_location and the polar lines: the planes at one and two thirds of the ellipsoid's
    superior-inferior extent. The true polar lines are the lips of the renal sinus, which the
    mask does not show reliably; the thirds are the usual stand-in, and using the same planes
    for polar_location and L keeps the two consistent. The axial renal midline is the plane
    through the ellipsoid's centre.

R.E.N.A.L. nephrometry (Kutikov & Uzzo 2009), each part None when its facts are:
  R: max diameter <= 40 mm -> 1, < 70 mm -> 2, else 3.
  E: exophytic fraction >= 0.5 -> 1, > ENDOPHYTIC_MAX -> 2, else (entirely endophytic) 3.
  N: sinus distance >= 7 mm -> 1, > 4 mm -> 2, else 3.
  A: "a" when more than ANTERIOR_SHARE of the tumor's voxels lie anterior (-y) of the
     kidney's coronal midplane (through the ellipsoid centre), "p" when as many lie posterior,
     else "x" (neither: lateral or polar tumors).
  L: 1 entirely above the upper or below the lower polar line; 3 when more than half of the
     tumor lies between the polar lines, it crosses the axial renal midline or lies entirely
     between the polar lines; otherwise (it crosses a polar line) 2.
  total = R + E + N + L when all four are known.

Side: the tumor's kidney is the kidney-and-tumor component holding it, or else the kidney
nearest to it within NEAREST_KIDNEY_MM. That kidney is "left" when its centroid lies at
larger x than the body midline: midway between the two kidneys when the mask has both, else
the field of view's centre (CT is reconstructed centred on the patient). A tumor with no
kidney near it gets its side from its own centroid, and the kidney facts are None.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from medseg.labels import Label
from medseg.volumes import Volume
from postprocess_svc.measure import _diameter_mm, _hull_candidates
from postprocess_svc.regions import Slices, bbox_of_values, label_values_present, margin_voxels

KIDNEY, TUMOR, ARTERY, VEIN, URETER = (int(v) for v in (Label.KIDNEY, Label.TUMOR, Label.ARTERY, Label.VEIN, Label.URETER))

NEAREST_KIDNEY_MM = 10.0  # a tumor not touching a kidney belongs to one at most this far away
SINUS_DEPTH_MM = 3.0  # a sinus piece reaches at least this deep into the kidney's hull
VESSEL_SEARCH_MM = 20.0  # first margin of the vessel search box, doubled until it suffices
ENDOPHYTIC_MAX = 0.01  # exophytic fraction up to this (voxel noise of the fit): entirely endophytic
ANTERIOR_SHARE = 0.6  # share of the tumor on one side of the coronal midplane for "a"/"p"

_C26 = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class RenalScore:
    """R.E.N.A.L. nephrometry components (see the module docstring); None where unknown."""

    radius: int  # R
    exophytic: int | None  # E
    nearness: int | None  # N
    anterior: str | None  # A: "a", "p" or "x"
    location: int | None  # L

    @property
    def total(self) -> int | None:
        parts = (self.radius, self.exophytic, self.nearness, self.location)
        return None if any(p is None for p in parts) else int(sum(parts))


@dataclass(frozen=True)
class TumorFacts:
    """Facts about one tumor (one connected component of the tumor label)."""

    voxel_count: int
    volume_ml: float
    centroid_mm: tuple[float, float, float]  # LPS
    max_diameter_mm: float
    side: str  # "left" or "right" (patient's)
    polar_location: str | None  # "upper", "middle" or "lower" third of its kidney
    exophytic_fraction: float | None
    distance_to_sinus_mm: float | None  # surface gaps (module docstring), None when absent
    sinus_source: str | None  # "mask" or "ureter" (module docstring), None when neither
    distance_to_artery_mm: float | None
    distance_to_vein_mm: float | None
    renal: RenalScore
    notes: tuple[str, ...] = ()  # what was approximated or unknown, in words


@dataclass(frozen=True)
class _Ellipsoid:
    """(p - centre)^T form (p - centre) <= 1, in LPS mm."""

    centre: np.ndarray
    form: np.ndarray

    def inside(self, points: np.ndarray) -> np.ndarray:
        d = points - self.centre
        return np.einsum("ni,ij,nj->n", d, self.form, d) <= 1.0

    def half_extent(self, axis: int) -> float:
        """Half the ellipsoid's extent along a world axis (0 x, 1 y, 2 z)."""
        return float(math.sqrt(np.linalg.inv(self.form)[axis, axis]))


class _Grid:
    """Index <-> LPS conversion for arrays cut from the mask at a (z, y, x) offset."""

    def __init__(self, mask: Volume):
        self.matrix = mask.index_to_physical_matrix()
        self.sampling = tuple(mask.spacing[::-1])  # (z, y, x), as EDT wants it
        self.spacing = mask.spacing

    def physical(self, zyx: np.ndarray) -> np.ndarray:
        """LPS mm of (N, 3) full-array (z, y, x) indices (integer or continuous)."""
        xyz = np.asarray(zyx, dtype=np.float64)[:, ::-1]
        return xyz @ self.matrix[:3, :3].T + self.matrix[:3, 3]

    def grow(self, box: Slices, margin_mm: float, shape: tuple[int, ...]) -> Slices:
        """box grown by margin_mm on every side, clipped to an array of `shape`."""
        pad = margin_voxels(margin_mm, self.spacing)
        return tuple(slice(max(0, s.start - p), min(n, s.stop + p)) for s, p, n in zip(box, pad, shape))  # type: ignore[return-value]


def _local(box: Slices, inner: Slices) -> Slices:
    """inner (same frame as box, inside it) relative to box's start."""
    return tuple(slice(i.start - b.start, i.stop - b.start) for b, i in zip(box, inner))  # type: ignore[return-value]


def _gap_mm(tumor: np.ndarray, target: np.ndarray, grid: _Grid) -> tuple[float, float]:
    """(distance between the nearest voxel centres, surface gap: module docstring) of two
    non-empty boolean arrays on one box."""
    distance = ndimage.distance_transform_edt(~target, sampling=grid.sampling)
    values = distance[tumor]
    nearest = int(np.argmin(values))
    steps = np.argwhere(target) - np.argwhere(tumor)[nearest]
    step = steps[int(np.argmin(((steps * np.asarray(grid.sampling)) ** 2).sum(axis=1)))]
    if np.abs(step).max() <= 1:  # neighbouring voxels: the sets touch
        return float(values[nearest]), 0.0
    v = step * np.asarray(grid.sampling)
    length = float(np.linalg.norm(v))
    width = float(np.abs(v) @ np.asarray(grid.sampling)) / length  # one voxel's extent along v
    return float(values[nearest]), length - width / 2.0


def _fit_ellipsoid(points: np.ndarray) -> _Ellipsoid | None:
    """Least-squares quadric x^T a x + 2 b^T x = 1 through points (N, 3 mm), centred on their
    mean and scaled to unit size for conditioning; None when it is no ellipsoid."""
    if len(points) < 9:
        return None
    mean = points.mean(axis=0)
    scale = float(np.abs(points - mean).max()) or 1.0
    x, y, z = ((points - mean) / scale).T
    design = np.stack([x * x, y * y, z * z, 2 * x * y, 2 * x * z, 2 * y * z, 2 * x, 2 * y, 2 * z], axis=1)
    p, *_ = np.linalg.lstsq(design, np.ones(len(points)), rcond=None)
    a = np.array([[p[0], p[3], p[4]], [p[3], p[1], p[5]], [p[4], p[5], p[2]]])
    if np.any(np.linalg.eigvalsh(a) <= 0):  # the points' mean is inside: an ellipsoid has a > 0
        return None
    centre = -np.linalg.solve(a, p[6:9])
    form = a / (1.0 + float(centre @ a @ centre))
    return _Ellipsoid(centre=mean + centre * scale, form=form / scale**2)


def _outer_faces(kidney: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """(N, 3) continuous (z, y, x) indices of the face centres between kidney and outside
    voxels (each face lies half a voxel from both centres)."""
    faces = []
    for axis in range(3):
        lo = tuple(slice(0, -1) if a == axis else slice(None) for a in range(3))
        hi = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        found = np.argwhere((kidney[lo] & outside[hi]) | (kidney[hi] & outside[lo])).astype(np.float64)
        found[:, axis] += 0.5
        faces.append(found)
    return np.concatenate(faces)


def _hull_inside(kidney: np.ndarray) -> np.ndarray | None:
    """Voxels whose centres lie in the convex hull of the kidney voxels' centres; None when
    they span no volume. Row by row along x: the hull's facets (n . p + d <= 0 inside) bound
    each row to one interval, so no point-in-polytope search is needed."""
    candidates = _hull_candidates(kidney)[:, ::-1].astype(np.float64)  # -> (z, y, x)
    try:
        facets = ConvexHull(candidates).equations
    except (QhullError, ValueError):  # too few or coplanar voxels
        return None
    inside = np.zeros(kidney.shape, dtype=bool)
    n_x = facets[:, 2]
    rows = np.arange(kidney.shape[1], dtype=np.float64)[:, None]
    columns = np.arange(kidney.shape[2], dtype=np.float64)
    eps = 1e-6
    with np.errstate(divide="ignore", invalid="ignore"):
        for z in range(kidney.shape[0]):
            rhs = -(facets[:, 3] + z * facets[:, 0] + rows * facets[:, 1])  # n_x * x <= rhs
            bound = rhs / n_x
            lo = np.where(n_x < -eps, bound, -np.inf).max(axis=1)
            hi = np.where(n_x > eps, bound, np.inf).min(axis=1)
            flat = np.where(np.abs(n_x) <= eps, rhs, np.inf).min(axis=1) >= -eps  # facets parallel to x
            inside[z] = flat[:, None] & (columns >= lo[:, None] - eps) & (columns <= hi[:, None] + eps)
    return inside


def _sinus(kidney: np.ndarray, tumor: np.ndarray, grid: _Grid) -> np.ndarray:
    """Renal sinus as the mask shows it (module docstring), on the kidney's box."""
    in_hull = _hull_inside(kidney)
    if in_hull is None:
        return np.zeros(kidney.shape, dtype=bool)
    in_hull |= kidney  # the hull's own vertices, whatever the rounding
    inside = in_hull & ~kidney & ~tumor
    if not inside.any():
        return inside
    pieces, count = ndimage.label(inside, structure=_C26)
    depth = ndimage.distance_transform_edt(in_hull, sampling=grid.sampling)
    deepest = ndimage.maximum(depth, pieces, index=np.arange(1, count + 1))
    keep = np.flatnonzero(np.asarray(deepest) >= SINUS_DEPTH_MM) + 1
    return np.isin(pieces, keep)


def _vessel_gap(array: np.ndarray, tumor_box: Slices, tumor: np.ndarray, value: int, grid: _Grid) -> float | None:
    """Gap from the tumor (boolean on tumor_box, full-array frame) to label `value`, searched
    in a box grown until the nearest voxel found lies within its margin (nothing outside the
    box can be nearer then) or the box is the whole grid; None when the label is absent."""
    margin = VESSEL_SEARCH_MM
    while True:
        box = grid.grow(tumor_box, margin, array.shape)
        whole = all(s.start == 0 and s.stop == n for s, n in zip(box, array.shape))
        target = array[box] == value
        if target.any():
            inside = np.zeros(target.shape, dtype=bool)
            inside[_local(box, tumor_box)] = tumor
            centres, gap = _gap_mm(inside, target, grid)
            if whole or centres <= margin:
                return gap
        elif whole:
            return None
        margin *= 2.0


def _renal(diameter: float, exophytic: float | None, sinus_mm: float | None, sinus_source: str | None,
           anterior: str | None, location: int | None) -> RenalScore:
    r = 1 if diameter <= 40.0 else 2 if diameter < 70.0 else 3
    e = None if exophytic is None else 1 if exophytic >= 0.5 else 2 if exophytic > ENDOPHYTIC_MAX else 3
    n = None
    if sinus_mm is not None:
        n = 1 if sinus_mm >= 7.0 else 2 if sinus_mm > 4.0 else 3
        if sinus_source == "ureter" and n != 3:
            n = None  # an upper bound decides only "near"
    return RenalScore(radius=r, exophytic=e, nearness=n, anterior=anterior, location=location)


def _location(z: np.ndarray, kidney: _Ellipsoid) -> tuple[str, int]:
    """polar_location of the tumor's centroid and L, from the tumor voxels' z (mm)."""
    half = kidney.half_extent(2)
    mid = float(kidney.centre[2])
    upper, lower = mid + half / 3.0, mid - half / 3.0
    centre = float(z.mean())
    polar = "upper" if centre > upper else "lower" if centre < lower else "middle"
    top, bottom = float(z.max()), float(z.min())
    between = float(np.mean((z >= lower) & (z <= upper)))
    if bottom > upper or top < lower:
        return polar, 1
    if between > 0.5 or bottom <= mid <= top:
        return polar, 3
    return polar, 2


def _anterior(y: np.ndarray, kidney: _Ellipsoid) -> str:
    front = float(np.mean(y < kidney.centre[1]))  # LPS: anterior is -y
    return "a" if front > ANTERIOR_SHARE else "p" if 1.0 - front > ANTERIOR_SHARE else "x"


@dataclass
class _Organs:
    """The kidney-and-tumor components (26-connected) inside the box around both labels."""

    region: Slices  # the box, in the full array
    labels: np.ndarray  # the mask inside it
    parts: np.ndarray  # component number per voxel, 0 elsewhere
    boxes: list[Slices]  # component number - 1 -> its box (region frame)
    kidney_voxels: np.ndarray  # component number -> its kidney voxel count
    centres: dict[int, np.ndarray]  # component with kidney -> its kidney voxels' centroid (LPS)
    midline_x: float  # body midline (module docstring)


def _organs(mask: Volume, grid: _Grid) -> _Organs:
    array = np.asarray(mask.array)
    region = bbox_of_values(array, (KIDNEY, TUMOR), max(mask.spacing), mask.spacing)
    labels = mask.crop(region).array
    kidney = labels == KIDNEY
    parts, _ = ndimage.label(kidney | (labels == TUMOR), structure=_C26)
    boxes = ndimage.find_objects(parts)
    kidney_voxels = np.bincount(parts[kidney], minlength=len(boxes) + 1)
    centres = {}
    for part in map(int, np.flatnonzero(kidney_voxels)):
        box = boxes[part - 1]
        local = np.argwhere((parts[box] == part) & kidney[box]) + [b.start + r.start for b, r in zip(box, region)]
        centres[part] = grid.physical(local).mean(axis=0)
    biggest = sorted(centres, key=lambda part: -kidney_voxels[part])[:2]
    if len(biggest) == 2 and kidney_voxels[biggest[1]] * 4 >= kidney_voxels[biggest[0]]:
        midline = float(centres[biggest[0]][0] + centres[biggest[1]][0]) / 2.0
    else:  # one kidney (or a kidney and a fragment): the field of view's centre
        midline = float(grid.physical(np.array([[(n - 1) / 2.0 for n in array.shape]]))[0, 0])
    return _Organs(region, labels, parts, boxes, kidney_voxels, centres, midline)


def tumor_facts(mask: Volume) -> list[TumorFacts]:
    """Facts for every tumor of a convention label mask (module docstring), largest first;
    [] when the mask has no tumor."""
    array = np.asarray(mask.array)
    if TUMOR not in set(int(v) for v in label_values_present(array)):
        return []
    grid = _Grid(mask)
    organs = _organs(mask, grid)
    tumors, _ = ndimage.label(organs.labels == TUMOR, structure=_C26)
    facts = [_one_tumor(array, organs, tumors[box] == number, box, grid)
             for number, box in enumerate(ndimage.find_objects(tumors), start=1)]
    facts.sort(key=lambda f: -f.voxel_count)
    return facts


def _one_tumor(array: np.ndarray, organs: _Organs, inside: np.ndarray, box: Slices, grid: _Grid) -> TumorFacts:
    """Facts of one tumor: `inside` is its voxels on `box` (region frame)."""
    notes: list[str] = []
    full_box = tuple(slice(b.start + r.start, b.stop + r.start) for b, r in zip(box, organs.region))
    points = grid.physical(np.argwhere(inside) + [b.start for b in full_box])
    centroid = points.mean(axis=0)
    offset = tuple(int(b.start) for b in full_box[::-1])  # (x, y, z)
    diameter = _diameter_mm(inside, offset, grid.matrix) if len(points) > 1 else 0.0

    part = int(organs.parts[box][inside][0])
    if organs.kidney_voxels[part] == 0:
        part = _nearest_kidney(organs, box, inside, grid)
    outline = sinus_mm = sinus_source = None
    if part:
        outline, sinus_mm, sinus_source = _kidney(organs, part, box, inside, grid, notes)
        side_x = organs.centres[part][0]
    else:
        notes.append(f"no kidney touches the tumor or lies within {NEAREST_KIDNEY_MM:g} mm of it: "
                     "the kidney facts are unknown and the side is the tumor's own")
        side_x = centroid[0]
    polar = location = anterior = exophytic = None
    if outline is not None:
        polar, location = _location(points[:, 2], outline)
        anterior = _anterior(points[:, 1], outline)
        exophytic = float(np.mean(~outline.inside(points)))
    return TumorFacts(
        voxel_count=int(len(points)),
        volume_ml=len(points) * float(np.prod(grid.spacing)) / 1000.0,
        centroid_mm=tuple(float(c) for c in centroid),  # type: ignore[arg-type]
        max_diameter_mm=float(diameter),
        side="left" if side_x > organs.midline_x else "right",
        polar_location=polar,
        exophytic_fraction=exophytic,
        distance_to_sinus_mm=sinus_mm,
        sinus_source=sinus_source,
        distance_to_artery_mm=_vessel_gap(array, full_box, inside, ARTERY, grid),
        distance_to_vein_mm=_vessel_gap(array, full_box, inside, VEIN, grid),
        renal=_renal(diameter, exophytic, sinus_mm, sinus_source, anterior, location),
        notes=tuple(notes),
    )


def _nearest_kidney(organs: _Organs, box: Slices, inside: np.ndarray, grid: _Grid) -> int:
    """The component whose kidney voxels lie nearest to a tumor that touches none, if within
    NEAREST_KIDNEY_MM; 0 when there is none."""
    near = grid.grow(box, NEAREST_KIDNEY_MM, organs.labels.shape)
    kidney = organs.labels[near] == KIDNEY
    if not kidney.any():
        return 0
    tumor = np.zeros(kidney.shape, dtype=bool)
    tumor[_local(near, box)] = inside
    distance = ndimage.distance_transform_edt(~tumor, sampling=grid.sampling)
    distance[~kidney] = np.inf
    nearest = np.unravel_index(int(np.argmin(distance)), distance.shape)
    return int(organs.parts[near][nearest]) if distance[nearest] <= NEAREST_KIDNEY_MM else 0


def _kidney(organs: _Organs, part: int, tumor_box: Slices, inside: np.ndarray, grid: _Grid, notes: list[str]):
    """The tumor's kidney (component `part`): its fitted outline (None when no ellipsoid
    fits), the gap from the tumor to its sinus and where that sinus came from."""
    own = organs.boxes[part - 1]
    box = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(own, tumor_box))
    box = grid.grow(box, max(grid.spacing), organs.labels.shape)  # one voxel of surroundings
    labels, parts = organs.labels[box], organs.parts[box]
    kidney = (parts == part) & (labels == KIDNEY)
    tumors = labels == TUMOR
    tumor = np.zeros(kidney.shape, dtype=bool)
    tumor[_local(box, tumor_box)] = inside
    sinus = _sinus(kidney, tumors, grid)
    faces = _outer_faces(kidney, ~(kidney | tumors | sinus)) + [b.start + r.start for b, r in zip(box, organs.region)]
    outline = _fit_ellipsoid(grid.physical(faces))
    if outline is None:
        notes.append("the kidney's outline fits no ellipsoid: pole, exophytic share, A and L are unknown")
    if sinus.any():
        return outline, _gap_mm(tumor, sinus, grid)[1], "mask"
    top = (labels == URETER) & ndimage.binary_dilation(parts == part, structure=_C26)
    if top.any():
        notes.append("renal sinus not visible in the mask: distance_to_sinus_mm is to the ureter's top end, "
                     "an upper bound on the distance to the collecting system")
        return outline, _gap_mm(tumor, top, grid)[1], "ureter"
    notes.append("neither a renal sinus nor a ureter is visible at this kidney: the distance to the sinus is unknown")
    return outline, None, None
