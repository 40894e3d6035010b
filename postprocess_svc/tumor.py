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
    postprocess_svc.measure); it reads up to about one voxel short of the true diameter.
  * distances (artery, vein, sinus): shortest gap between the two voxel sets' surfaces, i.e.
    the distance between the nearest pair of voxel centres minus the one voxel that the two
    half voxels around those centres span along the line joining them (0 when they touch).
    None when the structure is absent.

Approximated (the mask does not show the kidney's outline behind the tumor, the renal sinus
or the polar lines), each as stated:
  * The kidney's outer surface: an ellipsoid, least-squares fitted (algebraic quadric fit) to
    the voxel faces between that kidney and whatever is neither kidney, tumor nor renal sinus.
    Not the convex hull of the parenchyma: where the tumor replaced kidney, the hull cuts
    straight across the bite, so the tumor between that chord and the old, curved outline
    would count as exophytic (several % of a 4 cm tumor); the ellipsoid closes the bite with
    the kidney's own curvature, and away from the hilum a kidney is close to an ellipsoid.
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
from scipy.spatial import ConvexHull, Delaunay, QhullError

from medseg.labels import Label
from medseg.volumes import Volume
from postprocess_svc.measure import _diameter_mm, _hull_candidates
from postprocess_svc.regions import Slices, bbox_of_values, crop, label_values_present, margin_voxels

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
    distance_to_sinus_mm: float | None
    sinus_source: str | None  # "mask" or "ureter" (module docstring), None when neither
    distance_to_artery_mm: float | None
    distance_to_vein_mm: float | None
    renal: RenalScore
    notes: tuple[str, ...] = ()


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
        self.shape = mask.array.shape

    def physical(self, zyx: np.ndarray) -> np.ndarray:
        """LPS mm of (N, 3) full-array (z, y, x) indices (integer or continuous)."""
        xyz = np.asarray(zyx, dtype=np.float64)[:, ::-1]
        return xyz @ self.matrix[:3, :3].T + self.matrix[:3, 3]

    def grow(self, box: Slices, margin_mm: float) -> Slices:
        pad = margin_voxels(margin_mm, self.spacing)
        return tuple(slice(max(0, s.start - p), min(n, s.stop + p)) for s, p, n in zip(box, pad, self.shape))  # type: ignore[return-value]


def _shift(box: Slices, by: Slices | tuple[int, int, int]) -> Slices:
    starts = [b.start if isinstance(b, slice) else b for b in by]
    return tuple(slice(s.start + o, s.stop + o) for s, o in zip(box, starts))  # type: ignore[return-value]


def _local(box: Slices, inner: Slices) -> Slices:
    """inner (same frame as box, inside it) relative to box's start."""
    return tuple(slice(i.start - b.start, i.stop - b.start) for b, i in zip(box, inner))  # type: ignore[return-value]


def _gap_mm(tumor: np.ndarray, target: np.ndarray, grid: _Grid) -> float | None:
    """Surface gap (module docstring) between two boolean arrays on one box; None when the
    target is empty."""
    if not target.any():
        return None
    distance = ndimage.distance_transform_edt(~target, sampling=grid.sampling)
    near = np.argwhere(tumor)
    values = distance[tumor]
    a = near[int(np.argmin(values))]
    others = np.argwhere(target)
    steps = (others - a) * np.asarray(grid.sampling)
    b = int(np.argmin((steps * steps).sum(axis=1)))
    v = steps[b]
    length = float(np.linalg.norm(v))
    if length == 0.0:
        return 0.0
    span = float(np.abs(v) @ np.asarray(grid.sampling)) / length  # one voxel's width along v
    return max(0.0, length - span)


def _fit_ellipsoid(points: np.ndarray) -> _Ellipsoid | None:
    """Least-squares quadric through points (N, 3 mm); None when it is no ellipsoid."""
    if len(points) < 9:
        return None
    mean = points.mean(axis=0)
    scale = float(np.abs(points - mean).max()) or 1.0
    x, y, z = ((points - mean) / scale).T
    design = np.stack([x * x, y * y, z * z, 2 * x * y, 2 * x * z, 2 * y * z, 2 * x, 2 * y, 2 * z], axis=1)
    p, *_ = np.linalg.lstsq(design, np.ones(len(points)), rcond=None)
    a = np.array([[p[0], p[3], p[4]], [p[3], p[1], p[5]], [p[4], p[5], p[2]]])
    if np.any(np.linalg.eigvalsh(a) <= 0):
        return None
    centre = -np.linalg.solve(a, p[6:9])
    form = a / (1.0 + float(centre @ a @ centre))
    if np.any(np.linalg.eigvalsh(form) <= 0):
        return None
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


def _sinus(kidney: np.ndarray, tumor: np.ndarray, grid: _Grid) -> np.ndarray:
    """Renal sinus as the mask shows it (module docstring), on the kidney's box."""
    sinus = np.zeros(kidney.shape, dtype=bool)
    candidates = _hull_candidates(kidney)[:, ::-1]  # -> (z, y, x)
    try:
        hull = Delaunay(candidates[ConvexHull(candidates).vertices])
    except (QhullError, ValueError):  # too few or coplanar voxels: no hull, no sinus
        return sinus
    in_hull = kidney.copy()
    for z in range(kidney.shape[0]):
        rest = np.argwhere(~kidney[z])
        if len(rest):
            hits = hull.find_simplex(np.column_stack([np.full(len(rest), z), rest])) >= 0
            in_hull[z][tuple(rest[hits].T)] = True
    inside = in_hull & ~kidney & ~tumor
    if not inside.any():
        return sinus
    pieces, count = ndimage.label(inside, structure=_C26)
    depth = ndimage.distance_transform_edt(in_hull, sampling=grid.sampling)
    deepest = ndimage.maximum(depth, pieces, index=np.arange(1, count + 1))
    keep = np.flatnonzero(np.asarray(deepest) >= SINUS_DEPTH_MM) + 1
    return np.isin(pieces, keep)


def _vessel_gap(array: np.ndarray, tumor_box: Slices, tumor: np.ndarray, value: int, grid: _Grid) -> float | None:
    """Gap from the tumor (boolean on tumor_box, full-array frame) to label `value`: EDT in a
    box grown until the nearest voxel found is no farther than the margin (so nothing outside
    can be nearer), or the box is the whole grid."""
    margin = VESSEL_SEARCH_MM
    while True:
        box = grid.grow(tumor_box, margin)
        whole = all(s.start == 0 and s.stop == n for s, n in zip(box, array.shape))
        target = array[box] == value
        if target.any():
            inside = np.zeros(target.shape, dtype=bool)
            inside[_local(box, tumor_box)] = tumor
            distance = ndimage.distance_transform_edt(~target, sampling=grid.sampling)
            if whole or float(distance[inside].min()) <= margin:
                return _gap_mm(inside, target, grid)
        elif whole:
            return None
        margin *= 2.0


def _renal(diameter, exophytic, sinus_mm, sinus_source, anterior, location) -> RenalScore:
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
    front = float(np.mean(y < kidney.centre[1]))
    return "a" if front > ANTERIOR_SHARE else "p" if 1.0 - front > ANTERIOR_SHARE else "x"


def tumor_facts(mask: Volume) -> list[TumorFacts]:
    """Facts for every tumor of a convention label mask (module docstring), largest first;
    [] when the mask has no tumor."""
    array = np.asarray(mask.array)
    present = set(int(v) for v in label_values_present(array))
    if TUMOR not in present:
        return []
    grid = _Grid(mask)
    region = bbox_of_values(array, (KIDNEY, TUMOR), max(mask.spacing), mask.spacing)
    sub = crop(mask, region).array
    organs, _ = ndimage.label((sub == KIDNEY) | (sub == TUMOR), structure=_C26)
    organ_boxes = ndimage.find_objects(organs)
    kidney_voxels = np.bincount(organs[sub == KIDNEY], minlength=len(organ_boxes) + 1)
    with_kidney = np.flatnonzero(kidney_voxels)
    centres = {}
    for organ in with_kidney:
        box = organ_boxes[organ - 1]
        local = np.argwhere((organs[box] == organ) & (sub[box] == KIDNEY)) + [b.start for b in box]
        centres[int(organ)] = grid.physical(local + [r.start for r in region]).mean(axis=0)
    biggest = sorted(with_kidney, key=lambda o: -kidney_voxels[o])[:2]
    if len(biggest) == 2 and kidney_voxels[biggest[1]] * 4 >= kidney_voxels[biggest[0]]:
        midline = float((centres[int(biggest[0])][0] + centres[int(biggest[1])][0]) / 2.0)
    else:
        midline = float(grid.physical(np.array([[(n - 1) / 2.0 for n in array.shape]]))[0, 0])

    tumors, count = ndimage.label(sub == TUMOR, structure=_C26)
    facts = []
    for number, box in enumerate(ndimage.find_objects(tumors), start=1):
        facts.append(_one_tumor(array, sub, region, organs, organ_boxes, kidney_voxels, centres, midline,
                                tumors[box] == number, box, grid))
    facts.sort(key=lambda f: -f.voxel_count)
    return facts


def _one_tumor(array, sub, region, organs, organ_boxes, kidney_voxels, centres, midline, inside, box, grid) -> TumorFacts:
    notes: list[str] = []
    full_box = _shift(box, region)
    points = grid.physical(np.argwhere(inside) + [b.start for b in full_box])
    centroid = points.mean(axis=0)
    offset = tuple(int(s.start) for s in full_box[::-1])
    diameter = _diameter_mm(inside, offset, grid.matrix) if inside.sum() > 1 else 0.0
    artery = _vessel_gap(array, full_box, inside, ARTERY, grid)
    vein = _vessel_gap(array, full_box, inside, VEIN, grid)

    organ = int(organs[box][inside][0])
    if kidney_voxels[organ] == 0:
        organ = _nearest_kidney(sub, organs, box, inside, grid)
    kidney_model = None
    sinus_mm = sinus_source = None
    if organ:
        kidney_model, sinus_mm, sinus_source = _kidney(sub, region, organs, organ_boxes[organ - 1], organ, box, inside, grid, notes)
        side = "left" if centres[organ][0] > midline else "right"
    else:
        notes.append(f"no kidney touches the tumor or lies within {NEAREST_KIDNEY_MM:g} mm of it: the kidney facts are unknown")
        side = "left" if centroid[0] > midline else "right"

    polar = location = anterior = exophytic = None
    if kidney_model is not None:
        polar, location = _location(points[:, 2], kidney_model)
        anterior = _anterior(points[:, 1], kidney_model)
        exophytic = float(np.mean(~kidney_model.inside(points)))
    return TumorFacts(
        voxel_count=int(len(points)),
        volume_ml=len(points) * float(np.prod(grid.spacing)) / 1000.0,
        centroid_mm=tuple(float(c) for c in centroid),
        max_diameter_mm=float(diameter),
        side=side,
        polar_location=polar,
        exophytic_fraction=exophytic,
        distance_to_sinus_mm=sinus_mm,
        sinus_source=sinus_source,
        distance_to_artery_mm=artery,
        distance_to_vein_mm=vein,
        renal=_renal(diameter, exophytic, sinus_mm, sinus_source, anterior, location),
        notes=tuple(notes),
    )


def _nearest_kidney(sub, organs, box, inside, grid) -> int:
    """The organ (kidney component) nearest to a tumor that touches none, within
    NEAREST_KIDNEY_MM; 0 when there is none."""
    near = grid.grow(box, NEAREST_KIDNEY_MM)
    near = tuple(slice(s.start, min(s.stop, n)) for s, n in zip(near, sub.shape))
    kidney = sub[near] == KIDNEY
    if not kidney.any():
        return 0
    tumor = np.zeros(kidney.shape, dtype=bool)
    tumor[_local(near, box)] = inside
    distance = ndimage.distance_transform_edt(~tumor, sampling=grid.sampling)
    distance[~kidney] = np.inf
    nearest = np.unravel_index(int(np.argmin(distance)), distance.shape)
    if distance[nearest] > NEAREST_KIDNEY_MM:
        return 0
    return int(organs[near][nearest])


def _kidney(sub, region, organs, organ_box, organ, tumor_box, inside, grid, notes):
    """The tumor's kidney: fitted outline (None if no ellipsoid fits), the gap to the sinus
    and where the sinus came from (module docstring)."""
    kbox = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(organ_box, tumor_box))
    kbox = tuple(slice(s.start, min(s.stop, n)) for s, n in zip(grid.grow(kbox, max(grid.spacing)), sub.shape))
    labels, parts = sub[kbox], organs[kbox]
    kidney = (parts == organ) & (labels == KIDNEY)
    tumors = labels == TUMOR
    tumor = np.zeros(kidney.shape, dtype=bool)
    tumor[_local(kbox, tumor_box)] = inside
    sinus = _sinus(kidney, tumors, grid)
    faces = _outer_faces(kidney, ~(kidney | tumors | sinus)) + [k.start + r.start for k, r in zip(kbox, region)]
    outline = _fit_ellipsoid(grid.physical(faces))
    if outline is None:
        notes.append("the kidney's outline fits no ellipsoid: pole, exophytic share, A and L are unknown")
    if sinus.any():
        return outline, _gap_mm(tumor, sinus, grid), "mask"
    top = (labels == URETER) & ndimage.binary_dilation(parts == organ, structure=_C26)
    if top.any():
        notes.append("renal sinus not visible in the mask: distance_to_sinus_mm is to the ureter's top end, "
                     "an upper bound on the distance to the collecting system")
        return outline, _gap_mm(tumor, top, grid), "ureter"
    notes.append("neither renal sinus nor ureter visible at this kidney: distance to the sinus unknown")
    return outline, None, None
