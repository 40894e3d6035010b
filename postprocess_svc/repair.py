"""Reconnect broken pieces of a tubular structure (renal artery, ureter) in a label mask.

Method (deterministic baseline from research note B):
1. Crop to the label's bounding box plus a small margin (the bridges lie between pieces of the
   label, so they never leave that box by more than a tube radius).
2. Resample the crop to isotropic voxels (the 3D skeletoniser ignores spacing) and skeletonise.
3. Build the skeleton graph (26-neighbour voxel adjacency); its connected components are the
   pieces (computed by the selected GraphBackend: SciPy, or cugraph on a GPU). Prune short
   spurs, then take the degree-1 nodes as endpoints, with a tangent from the last few mm of
   skeleton (PCA) and a radius from the distance map.
4. Candidate joins: an endpoint to an endpoint of another piece (both tangents pointing into
   the gap), or an endpoint to the side of another piece its tangent ray hits. A join must
   bridge at most max_gap_mm of background, point the right way (angle and aim), join similar
   radii, and not pass through any other label (so an artery is never joined across a vein).
5. Accept Kruskal-style: cheapest first, only between pieces not yet connected, each endpoint
   used once.
6. Rebuild each bridge as a tube whose radius runs linearly from one end's radius to the
   other's, painted on the ORIGINAL grid into background voxels only, then pasted back.

Everything is plain numpy/SciPy/scikit-image on Volumes; no gRPC here.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.spatial import cKDTree
from skimage.morphology import skeletonize

from medseg.labels import NAMES, STRUCTURES, Label
from medseg.params import ParameterError
from medseg.volumes import Volume
from postprocess_svc.graph import GraphBackend, select_backend
from medseg.progress import Cancelled, Progress, report_stage
from postprocess_svc.regions import bbox_of, full_slices, paste, require_convention


_MAX_REJECTED_LISTED = 50
_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


@dataclass
class RepairLimits:
    """Limits for accepting a bridge. Lengths in mm."""

    max_gap_mm: float = 10.0  # longest run of background a bridge may cross
    max_angle_deg: float = 45.0  # between an end's tangent and the direction to the other end
    min_radius_ratio: float = 0.5  # smaller / larger end radius must be at least this
    min_piece_mm3: float = 10.0  # smaller pieces are specks: left as they are, never bridged
    aim_slack_mm: float = 1.5  # the two ends' prolonged axes must pass within the larger radius + this
    tangent_length_mm: float = 5.0  # skeleton length used for an end's direction and radius
    skeleton_spacing_mm: float | None = None  # None: finest input spacing, kept within [0.5, 1.0]

    def validate(self) -> None:
        """The one range check for these limits; connect_label calls it, so callers need not.

        Raises ParameterError named as the request names the field (`limits.max_gap_mm`, ...)
        for a value the algorithm cannot use. Every limit must be a finite real number (the
        lengths size searches and rays, so an infinite one would never end), and:
        - max_gap_mm > 0: 0 would bridge nothing.
        - max_angle_deg in (0, 180]: the angle measured lies in [0, 180], so 180 turns the
          check off; 0 would leave no end-end join.
        - min_radius_ratio in [0, 1]: thinner / thicker end radius lies in (0, 1], so 0 is a
          usable value (it turns the radius check off, end-end and end-side alike) while a
          ratio above 1 would refuse every end-end join.
        - min_piece_mm3 >= 0: 0 treats no piece as a speck.
        - aim_slack_mm >= 0: 0 asks the ends' axes to pass within the larger radius.
        - tangent_length_mm > 0: an end needs some skeleton to take its direction from.
        - skeleton_spacing_mm: None (the default grid) or in [0.1, 5] mm.
        """
        _check_range("max_gap_mm", self.max_gap_mm, 0, low_open=True)
        _check_range("max_angle_deg", self.max_angle_deg, 0, 180, low_open=True)
        _check_range("min_radius_ratio", self.min_radius_ratio, 0, 1)
        _check_range("min_piece_mm3", self.min_piece_mm3, 0)
        _check_range("aim_slack_mm", self.aim_slack_mm, 0)
        _check_range("tangent_length_mm", self.tangent_length_mm, 0, low_open=True)
        if self.skeleton_spacing_mm is not None:
            _check_range("skeleton_spacing_mm", self.skeleton_spacing_mm, 0.1, 5)


def _check_range(field_name: str, value, low: float, high: float = math.inf, *, low_open: bool = False) -> None:
    """ParameterError for `limits.<field_name>` unless value is a finite real number from
    low (excluded when low_open) to high."""
    if high == math.inf:
        wanted = f"{'>' if low_open else '>='} {low:g}"
    else:
        wanted = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (number and math.isfinite(value)) or value < low or (low_open and value == low) or value > high:
        shown = value if number else repr(value)
        raise ParameterError(f"limits.{field_name}", f"must be a finite number {wanted}, got {shown}")


@dataclass
class Bridge:
    """One accepted join. Points are LPS physical mm; length is the background run bridged."""

    label: int
    length_mm: float
    radius_start_mm: float
    radius_end_mm: float
    start_mm: tuple[float, float, float]
    end_mm: tuple[float, float, float]
    voxels_added: int
    kind: str = "end-end"  # or "end-side": an end joined onto the side of another piece
    angle_deg: float = 0.0  # largest tangent-to-bridge angle at its ends


@dataclass
class Piece:
    """A connected piece of the label left after repair (26-connectivity, original grid)."""

    volume_mm3: float
    centroid_mm: tuple[float, float, float]


@dataclass
class RepairReport:
    label: int
    pieces_before: int
    pieces_after: int
    bridges: list[Bridge]
    rejected: list[str]
    backend: str
    note: str
    pieces: list[Piece] = field(default_factory=list)  # after repair, largest first
    region_voxels: int = 0  # voxels of the region worked on (the whole grid when whole_volume)
    skeleton_spacing_mm: float = 0.0


# ----------------------------------------------------------------------------------------
# public entry points


def connect_vessels(mask: Volume, limits: RepairLimits | None = None, **kw) -> tuple[Volume, RepairReport]:
    """Reconnect broken pieces of the renal artery (label ARTERY)."""
    return connect_label(mask, Label.ARTERY, limits, **kw)


def connect_ureters(mask: Volume, limits: RepairLimits | None = None, **kw) -> tuple[Volume, RepairReport]:
    """Reconnect broken pieces of the ureters (label URETER). Left and right stay separate
    trees: pieces are joined only where a short, well-aimed gap lies between them."""
    return connect_label(mask, Label.URETER, limits, **kw)


def connect_label(
    mask: Volume,
    label: int,
    limits: RepairLimits | None = None,
    *,
    backend: str | GraphBackend = "auto",
    whole_volume: bool = False,
    progress: Progress | None = None,
    cancelled: Cancelled | None = None,
) -> tuple[Volume, RepairReport]:
    """Bridge gaps between pieces of `label`; returns the repaired mask and what was done.

    whole_volume=True skips the crop (same algorithm on the full grid; the benchmark's baseline).
    """
    limits = limits or RepairLimits()
    limits.validate()
    label = _check_inputs(mask, label)
    graph = _graph_backend(backend)
    spacing_zyx = np.array(mask.spacing[::-1], dtype=float)

    report_stage(progress, cancelled, "crop", 0.0, f"finding the {NAMES[label]} region")
    target_full = mask.array == label
    margin_mm = max(3.0, 2.0 * float(spacing_zyx.max()))  # room for a tube's wall past the pieces' box
    slices = full_slices(mask.array.shape) if whole_volume else bbox_of(target_full, margin_mm, mask.spacing)
    del target_full
    region = _Region(
        values=np.array(mask.array[slices]),  # own copy: painted, then pasted into the output
        start=np.array([sl.start for sl in slices], dtype=np.int64),
        spacing_zyx=spacing_zyx,
        label=label,
        index_to_physical=mask.index_to_physical_matrix(),
    )
    target = region.values == label

    region_pieces, pieces_before = ndimage.label(target, structure=_STRUCTURE_26)
    iso = limits.skeleton_spacing_mm or float(np.clip(spacing_zyx.min(), 0.5, 1.0))

    report_stage(progress, cancelled, "resample", 0.1, f"isotropic {iso:g} mm grid")
    iso_mask, iso_first = _resample_isotropic(target, spacing_zyx, iso, region.start)

    report_stage(progress, cancelled, "skeleton", 0.2, f"skeletonising {int(iso_mask.sum())} voxels")
    skeleton = skeletonize(iso_mask)
    radius_map = ndimage.distance_transform_edt(iso_mask, sampling=iso).astype(np.float32)
    iso_pieces, _ = ndimage.label(iso_mask, structure=_STRUCTURE_26)
    piece_volume = np.bincount(iso_pieces.ravel()) * iso**3
    _restore_vanished_skeletons(skeleton, iso_pieces, piece_volume >= limits.min_piece_mm3)
    del iso_mask

    report_stage(progress, cancelled, "graph", 0.5, f"skeleton graph on {graph.name}")
    skel = SkeletonGraph.build(skeleton, iso, radius_map, graph, iso_first)
    del skeleton, radius_map
    skel.prune_spurs()
    ends = skel.endpoints(limits.tangent_length_mm, iso_pieces)
    # Specks are not worth bridging and their ends have no meaningful direction.
    node_volume = piece_volume[iso_pieces[tuple(skel.coords.T)]] if skel.n_nodes else np.zeros(0)
    bridgeable = node_volume >= limits.min_piece_mm3
    del iso_pieces
    ends = [e for e in ends if bridgeable[e.node]]

    report_stage(progress, cancelled, "candidates", 0.7, f"{len(ends)} endpoints")
    # Which original-grid piece each skeleton node lies in (resampling can split a piece).
    node_piece = region_pieces[tuple(region.clipped_index_of(skel.position).T)]
    search = _JoinSearch(skel, region, region_pieces, node_piece, bridgeable, limits)
    candidates = search.find(ends)
    rejected = search.rejected
    del search, region_pieces  # the piece map is as large as the region: gone before painting

    report_stage(progress, cancelled, "bridge", 0.85, f"{len(candidates)} candidate joins")
    chosen = _choose_joins(candidates, skel.component, node_piece)
    bridges = [_build_bridge(region, cand) for cand in chosen]

    report_stage(progress, cancelled, "report", 0.95, f"{len(bridges)} bridges")
    pieces = _pieces(region.values == label, mask, slices)
    output = np.array(mask.array)
    paste(output, slices, region.values)
    note = _note(label, pieces_before, pieces, bridges, rejected)
    report = RepairReport(
        label=label,
        pieces_before=int(pieces_before),
        pieces_after=len(pieces),
        bridges=bridges,
        rejected=rejected[:_MAX_REJECTED_LISTED],
        backend=graph.name,
        note=note,
        pieces=pieces,
        region_voxels=int(region.values.size),
        skeleton_spacing_mm=iso,
    )
    report_stage(progress, None, "done", 1.0, note)
    return mask.with_array(output, mask.labels), report


# ----------------------------------------------------------------------------------------
# input checks


def _graph_backend(backend: str | GraphBackend) -> GraphBackend:
    """select_backend, with a name it cannot use reported as the request's `backend`."""
    try:
        return select_backend(backend)
    except ValueError as error:
        raise ParameterError("backend", str(error)) from None


def _check_inputs(mask: Volume, label: int) -> int:
    try:
        label = int(label)
    except (TypeError, ValueError):
        raise ValueError(f"label must be an integer of the convention, got {label!r}") from None
    if label not in STRUCTURES:
        expected = ", ".join(f"{v}={n}" for v, n in STRUCTURES.items())
        raise ValueError(f"label {label} is not a structure of the convention (expected one of {expected})")
    if mask.array.ndim != 3:
        raise ValueError(f"mask must be a 3D label volume, got {mask.array.ndim}D")
    if mask.array.dtype == bool:
        raise ValueError("mask must hold convention label values, not a boolean mask")
    # label_values_present counts slab by slab: no int64 copy of the whole mask.
    present = {int(v) for v in require_convention(mask.array, "mask", NAMES)}
    if label not in present:
        raise ValueError(f"mask has no {NAMES[label]} (label {label}) voxels")
    return label


# ----------------------------------------------------------------------------------------
# grids


def _resample_isotropic(
    target: np.ndarray, spacing_zyx: np.ndarray, iso: float, start_zyx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Binary mask on an isotropic grid by linear interpolation and a 0.5 threshold.

    The isotropic grid is anchored to the FULL volume (its nodes sit at multiples of iso mm
    from voxel 0), not to the crop, so the cropped and whole-volume paths sample the same
    points and find the same skeleton. Returns the mask and the global isotropic index (z, y, x)
    of its voxel 0."""
    offset_mm = start_zyx * spacing_zyx  # crop start, mm from the volume's voxel 0
    first = np.ceil(offset_mm / iso - 1e-6).astype(np.int64)  # global isotropic index of voxel 0
    phase = np.maximum(first * iso - offset_mm, 0.0)
    if np.allclose(spacing_zyx, iso) and np.allclose(phase, 0.0):
        return target.copy(), first
    extent = (np.array(target.shape) - 1) * spacing_zyx - phase
    shape = tuple(int(math.floor(e / iso + 1e-6)) + 1 for e in extent)
    resampled = ndimage.affine_transform(
        target.astype(np.float32),
        iso / spacing_zyx,
        offset=phase / spacing_zyx,
        output_shape=shape,
        order=1,
        mode="constant",
        cval=0.0,
        output=np.float32,
    )
    return resampled >= 0.5, first


@dataclass
class _Region:
    """The box of the original grid worked on, and where it lies in the volume.

    Points are mm (z, y, x) from the FULL volume's voxel 0, not from the box, so the cropped
    and whole-volume paths compute with the very same numbers."""

    values: np.ndarray  # the box's label values; bridges are painted into it
    start: np.ndarray  # (z, y, x) index of values[0, 0, 0] in the full volume
    spacing_zyx: np.ndarray
    label: int  # the structure being repaired
    index_to_physical: np.ndarray  # the volume's 4x4 matrix, (x, y, z, 1) index -> LPS mm

    @property
    def sample_step(self) -> float:
        """Step for sampling along a line: a quarter of the finest voxel, so none is skipped."""
        return 0.25 * float(self.spacing_zyx.min())

    def index_of(self, points_mm: np.ndarray) -> np.ndarray:
        """Nearest voxel of each point, as a (z, y, x) index into values; may lie outside."""
        return np.rint(points_mm / self.spacing_zyx).astype(np.int64) - self.start

    def clipped_index_of(self, points_mm: np.ndarray) -> np.ndarray:
        """index_of, moved onto the box's nearest face where it lies outside."""
        return np.clip(self.index_of(points_mm), 0, np.array(self.values.shape) - 1)

    def physical(self, point_mm: np.ndarray) -> tuple[float, float, float]:
        """A point as LPS physical mm (rounded to 0.01 mm, as reported)."""
        index_zyx = point_mm / self.spacing_zyx
        physical = self.index_to_physical @ np.array([*index_zyx[::-1], 1.0])
        return tuple(round(float(v), 2) for v in physical[:3])  # type: ignore[return-value]

    def describe(self, point_mm: np.ndarray) -> str:
        """A point as text for a refusal reason: LPS mm to the nearest mm."""
        return "(" + ", ".join(f"{v:.0f}" for v in self.physical(point_mm)) + ") mm"

    def line_profile(self, p0: np.ndarray, p1: np.ndarray) -> tuple[float, list[int]]:
        """Background length along the segment p0-p1 (mm) and the other labels it passes through."""
        length = float(np.linalg.norm(p1 - p0))
        n = max(2, int(math.ceil(length / self.sample_step)) + 1)
        t = np.linspace(0.0, 1.0, n)
        values = self.values[tuple(self.clipped_index_of(p0 + t[:, None] * (p1 - p0)).T)]
        background = float(np.count_nonzero(values == 0)) / n * length
        return background, _other_labels(values, self.label)

    def paint_tube(self, p0: np.ndarray, p1: np.ndarray, r0: float, r1: float) -> int:
        """Paint the tube {x : |x - s(t)| <= r0 + t (r1 - r0)} around segment p0-p1 with the
        label, into background voxels only. Returns the voxels added."""
        spacing_zyx, start = self.spacing_zyx, self.start
        r_max = max(r0, r1)
        lo = np.floor((np.minimum(p0, p1) - r_max) / spacing_zyx).astype(int) - start
        hi = np.ceil((np.maximum(p0, p1) + r_max) / spacing_zyx).astype(int) + 1 - start
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, self.values.shape)
        if np.any(hi <= lo):
            return 0
        grids = np.meshgrid(*[(np.arange(a, b) + o) * s for a, b, o, s in zip(lo, hi, start, spacing_zyx)], indexing="ij")
        points = np.stack(grids, axis=-1)
        direction = p1 - p0
        length_sq = float(direction @ direction)
        t = np.clip(((points - p0) @ direction) / length_sq, 0.0, 1.0) if length_sq > 0 else np.zeros(points.shape[:-1])
        closest = p0 + t[..., None] * direction
        inside = np.linalg.norm(points - closest, axis=-1) <= r0 + t * (r1 - r0)
        box = self.values[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        paint = inside & (box == 0)
        box[paint] = self.label
        return int(paint.sum())


def _other_labels(values: np.ndarray, label: int) -> list[int]:
    """Labels among values other than background and `label`, sorted."""
    return sorted({int(v) for v in np.unique(values)} - {0, label})


# ----------------------------------------------------------------------------------------
# skeleton graph


def _restore_vanished_skeletons(skeleton: np.ndarray, pieces: np.ndarray, wanted: np.ndarray) -> None:
    """Give back a skeleton to pieces that Lee's thinning erased entirely (scikit-image issue
    #3757: some even-thickness shapes vanish). Thinning the piece grown or shrunk by one voxel
    changes its thickness parity; the first non-empty result is kept (in place)."""
    kept = np.unique(pieces[skeleton])
    missing = [i for i in range(1, len(wanted)) if wanted[i] and i not in set(kept.tolist())]
    if not missing:
        return
    boxes = ndimage.find_objects(pieces)
    for index in missing:
        box = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in boxes[index - 1])
        piece = pieces[box] == index
        for variant in (ndimage.binary_dilation(piece, _STRUCTURE_26), ndimage.binary_erosion(piece)):
            thin = skeletonize(variant) & piece
            if thin.any():
                skeleton[box] |= thin
                break
        else:  # nothing thin survives: keep the deepest voxel so the piece is still a node
            depth = ndimage.distance_transform_edt(piece)
            skeleton[box][np.unravel_index(np.argmax(depth), piece.shape)] = True



# Half of the 26-neighbourhood: each undirected voxel adjacency is found once.
_HALF_OFFSETS = np.array(
    [(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dz, dy, dx) > (0, 0, 0)]
)


@dataclass
class End:
    node: int
    position: np.ndarray  # mm (z, y, x) from the volume's voxel 0
    tangent: np.ndarray  # unit vector pointing out of the piece
    radius: float  # mm


class SkeletonGraph:
    """Skeleton voxels as graph nodes, 26-neighbour adjacency as edges."""

    def __init__(self, coords, iso, radius, edges, graph: GraphBackend, first=(0, 0, 0)):
        self.coords = coords  # (N, 3) indices (z, y, x) in the isotropic array
        self.iso = iso
        self.first = np.asarray(first, dtype=np.int64)  # global isotropic index of array voxel 0
        self.position = (coords + self.first) * iso  # mm (z, y, x) from the volume's voxel 0
        self.radius = radius  # (N,) mm, distance map at the node
        self.edges = edges
        self.graph = graph
        n = len(coords)
        self.alive = np.ones(n, dtype=bool)
        if len(edges):
            both = np.concatenate([edges, edges[:, ::-1]])
            self.adj = csr_matrix((np.ones(len(both), np.int8), (both[:, 0], both[:, 1])), shape=(n, n))
        else:
            self.adj = csr_matrix((n, n), dtype=np.int8)
        self.component = graph.connected_components(n, edges)

    @property
    def n_nodes(self) -> int:
        return len(self.coords)

    @classmethod
    def build(
        cls, skeleton: np.ndarray, iso: float, radius_map: np.ndarray, graph: GraphBackend, first=(0, 0, 0)
    ) -> "SkeletonGraph":
        coords = np.argwhere(skeleton)
        shape = np.array(skeleton.shape)
        linear = np.ravel_multi_index(coords.T, skeleton.shape) if len(coords) else np.zeros(0, np.int64)
        edge_parts = []
        for offset in _HALF_OFFSETS:
            neighbour = coords + offset
            inside = np.all((neighbour >= 0) & (neighbour < shape), axis=1)
            source = np.flatnonzero(inside)
            neighbour_linear = np.ravel_multi_index(neighbour[inside].T, skeleton.shape)
            position = np.searchsorted(linear, neighbour_linear)
            position = np.minimum(position, max(len(linear) - 1, 0))
            hit = linear[position] == neighbour_linear if len(linear) else np.zeros(0, bool)
            edge_parts.append(np.column_stack([source[hit], position[hit]]))
        edges = np.concatenate(edge_parts) if edge_parts else np.zeros((0, 2), np.int64)
        # The distance map at a skeleton voxel (to the nearest background voxel centre) is an
        # unbiased radius on digitised tubes of r = 2-4 mm (measured), so no correction.
        radius = np.maximum(radius_map[tuple(coords.T)], 0.5 * iso)
        return cls(coords, iso, radius.astype(float), edges.astype(np.int64), graph, first)

    def neighbours(self, node: int) -> np.ndarray:
        row = self.adj.indices[self.adj.indptr[node] : self.adj.indptr[node + 1]]
        return row[self.alive[row]]

    def degree(self) -> np.ndarray:
        alive_edges = self.alive[self.edges[:, 0]] & self.alive[self.edges[:, 1]] if len(self.edges) else np.zeros(0, bool)
        e = self.edges[alive_edges]
        deg = np.bincount(e.ravel(), minlength=self.n_nodes)
        deg[~self.alive] = -1
        return deg

    def _walk_to_junction(self, tip: int, degree: np.ndarray) -> tuple[list[int], float]:
        """Nodes from a tip up to (and including) the first node whose degree is not 2."""
        path, length, previous, current = [tip], 0.0, -1, tip
        while True:
            following = [n for n in self.neighbours(current) if n != previous]
            if not following:
                return path, length
            nxt = following[0]
            length += float(np.linalg.norm(self.position[nxt] - self.position[current]))
            path.append(nxt)
            if degree[nxt] != 2:
                return path, length
            previous, current = current, nxt

    def prune_spurs(self, rounds: int = 3) -> None:
        """Remove tip branches that end within the junction's own tube (voxel noise on the
        wall, forks at a flat cut end): length <= junction radius - tip radius + 2 voxels."""
        for _ in range(rounds):
            degree = self.degree()
            removed = False
            for tip in np.flatnonzero(degree == 1):
                path, length = self._walk_to_junction(int(tip), degree)
                junction = path[-1]
                if degree[junction] < 3:
                    continue  # a whole piece, not a spur
                if length <= self.radius[junction] - self.radius[tip] + 2 * self.iso:
                    self.alive[path[:-1]] = False
                    removed = True
            if not removed:
                return

    def endpoints(self, tangent_length_mm: float, pieces: np.ndarray) -> list[End]:
        """Degree-1 nodes as piece ends, each with its axis direction, axis point and radius.

        Lee skeletons curl towards the rim near a flat cut face, so the last skeleton voxels
        say little about the end. Direction, end point and radius therefore come from the
        piece's own voxels near the tip: their principal axis, the end face along it, and the
        cross-section area just inside the face."""
        degree = self.degree()
        ends = []
        for tip in np.flatnonzero(degree == 1):
            # Twice the tangent length: far enough back to pass a tip that curls to the rim.
            near = self._nodes_within(int(tip), 2 * tangent_length_mm)
            if len(near) < 2:
                continue  # a single voxel of skeleton: no direction to follow
            end = self._end_geometry(int(tip), float(self.radius[near].max()), tangent_length_mm, pieces)
            if end is not None:
                ends.append(end)
        return ends

    def _end_geometry(self, tip: int, depth: float, length_mm: float, pieces: np.ndarray) -> "End | None":
        """depth: the largest distance-map value near the tip (about the tube radius, and
        not fooled by a curled tip)."""
        reach = max(length_mm, 3.5 * depth)
        centre = self.coords[tip]
        half = int(math.ceil(reach / self.iso))
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, pieces.shape)
        box = pieces[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        points = (np.argwhere(box == pieces[tuple(centre)]) + lo + self.first) * self.iso
        ball = points[np.linalg.norm(points - self.position[tip], axis=1) <= reach]
        if len(ball) < 8:
            return None
        mean = ball.mean(axis=0)
        _, _, vt = np.linalg.svd(ball - mean, full_matrices=False)
        direction = vt[0]
        # The tip sits near the face while the voxels reach back into the body: the centroid
        # lies behind the tip, which tells which way is out.
        if np.dot(self.position[tip] - mean, direction) < 0:
            direction = -direction
        face = float(np.max((ball - mean) @ direction))
        # A tip curled off the axis makes the ball lopsided and tilts its axis: refit once on
        # the cylinder of voxels around that first axis.
        along = (points - mean) @ direction
        across = np.linalg.norm((points - mean) - along[:, None] * direction, axis=1)
        core = points[(along >= face - reach) & (along <= face) & (across <= 1.5 * depth + self.iso)]
        if len(core) >= 8:
            mean = core.mean(axis=0)
            _, _, vt = np.linalg.svd(core - mean, full_matrices=False)
            direction = vt[0] if np.dot(vt[0], direction) >= 0 else -vt[0]
            face = float(np.max((core - mean) @ direction))
        # Cross-section just inside the face: voxel count / slab thickness = area.
        offsets = points - mean
        along = offsets @ direction
        across = np.linalg.norm(offsets - along[:, None] * direction, axis=1)
        thickness = max(2.0 * depth, 3.0 * self.iso)
        in_slab = (along > face - thickness) & (along <= face) & (across <= 1.5 * depth + self.iso)
        area = np.count_nonzero(in_slab) * self.iso**3 / thickness
        radius = min(math.sqrt(area / math.pi), depth) if area > 0 else depth
        inset = min(radius, 0.5 * face)
        return End(tip, mean + (face - inset) * direction, direction, radius)

    def _nodes_within(self, start: int, limit_mm: float) -> list[int]:
        """Nodes within limit_mm along the skeleton from start (small Dijkstra)."""
        import heapq

        best = {start: 0.0}
        heap = [(0.0, start)]
        while heap:
            dist, node = heapq.heappop(heap)
            if dist > best.get(node, math.inf):
                continue
            for nxt in self.neighbours(node):
                d = dist + float(np.linalg.norm(self.position[nxt] - self.position[node]))
                if d <= limit_mm and d < best.get(int(nxt), math.inf):
                    best[int(nxt)] = d
                    heapq.heappush(heap, (d, int(nxt)))
        return sorted(best)


# ----------------------------------------------------------------------------------------
# candidates and choice


@dataclass
class _Candidate:
    cost: float
    kind: str
    start_node: int
    end_node: int
    start: np.ndarray
    end: np.ndarray
    radius_start: float
    radius_end: float
    gap_mm: float
    angle_deg: float
    uses_end_node: bool  # end-end joins use up both endpoints; end-side only the first


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def _path_refusal(gap_mm: float, others: list[int], limits: RepairLimits) -> str:
    """Why a bridge path may not be painted ("" when it may): too much background to
    cross, or another label in the way (artery never joined across a vein)."""
    if gap_mm > limits.max_gap_mm:
        return f"gap {gap_mm:.1f} mm > {limits.max_gap_mm:g}"
    if others:
        return f"crosses {', '.join(f'{NAMES[o]} ({o})' for o in others)}"
    return ""


def _facing_refusal(a: End, b: End, angle: float, limits: RepairLimits) -> str:
    """Why two ends are not two sides of one cut ("" when they may be): they point past
    the gap, their axes pass each other (side-by-side vessels), or their calibres differ."""
    if angle > limits.max_angle_deg:
        return f"angle {angle:.0f} deg > {limits.max_angle_deg:g}"
    miss = _ray_miss_mm(a.position, a.tangent, b.position, b.tangent)
    if miss > max(a.radius, b.radius) + limits.aim_slack_mm:
        return f"axes miss each other by {miss:.1f} mm"
    if min(a.radius, b.radius) / max(a.radius, b.radius) < limits.min_radius_ratio:
        return f"radius {a.radius:.1f} vs {b.radius:.1f} mm"
    return ""


def _ray_miss_mm(pa: np.ndarray, ta: np.ndarray, pb: np.ndarray, tb: np.ndarray) -> float:
    """Closest approach of the two ends' axes prolonged forward over the gap. Ends of one
    tube, straight or bent, aim at a common point (about 0); side-by-side vessels run past
    each other (their spacing)."""
    reach = float(np.linalg.norm(pb - pa))
    s = np.linspace(0.0, reach, 33)
    ray_a = pa + s[:, None] * ta
    ray_b = pb + s[:, None] * tb
    return float(np.min(np.linalg.norm(ray_a[:, None, :] - ray_b[None, :, :], axis=2)))


@dataclass
class _JoinSearch:
    """Finds the joins that could bridge a gap between two skeleton pieces, each checked
    against the limits on the original grid. The refusals worth telling are kept in
    `rejected`, in the order found, for the report."""

    skel: SkeletonGraph
    region: _Region
    region_pieces: np.ndarray  # the label's 26-connected pieces in region.values, numbered
    node_piece: np.ndarray  # region_pieces at each skeleton node
    bridgeable: np.ndarray  # per skeleton node: its piece is no speck (min_piece_mm3)
    limits: RepairLimits
    rejected: list[str] = field(default_factory=list)

    def find(self, ends: list[End]) -> list[_Candidate]:
        """All candidate joins, end-to-end first, then end-to-side (refusals are recorded
        in that order too)."""
        if not ends:
            return []
        return self._end_to_end(ends) + self._end_to_side(ends)

    def _refuse(self, what: str, reason: str) -> None:
        self.rejected.append(f"{what}: {reason}")

    # -- end to end: two ends that face each other across the gap

    def _end_to_end(self, ends: list[End]) -> list[_Candidate]:
        # Ends sit about one radius inside each cut face, so search further than the gap; up to
        # twice the limit, so that gaps just too long are reported as refused, not passed over.
        search = 2 * self.limits.max_gap_mm + 2 * max(e.radius for e in ends) + 2 * self.skel.iso
        pairs = sorted(cKDTree(np.array([e.position for e in ends])).query_pairs(search))
        joins = (self._end_end(ends[i], ends[j]) for i, j in pairs)
        return [join for join in joins if join is not None]

    def _end_end(self, a: End, b: End) -> _Candidate | None:
        if self.skel.component[a.node] == self.skel.component[b.node]:
            return None
        gap_vector = b.position - a.position
        angle = max(_angle_deg(a.tangent, gap_vector), _angle_deg(b.tangent, -gap_vector))
        if angle > self.limits.max_angle_deg and angle >= 90:
            return None  # only near misses are worth telling; backward pairs are noise
        what = f"end-end {self.region.describe(a.position)}->{self.region.describe(b.position)}"
        reason = _facing_refusal(a, b, angle, self.limits)
        if reason:
            self._refuse(what, reason)
            return None
        gap, others = self.region.line_profile(a.position, b.position)
        reason = _path_refusal(gap, others, self.limits)
        if reason:
            self._refuse(what, reason)
            return None
        length = float(np.linalg.norm(gap_vector))
        return _Candidate(
            # Mostly the background to cross; the full span breaks ties between near equals.
            cost=(gap + 0.1 * length) * (1 + math.radians(angle)),
            kind="end-end",
            start_node=a.node,
            end_node=b.node,
            start=a.position,
            end=b.position,
            radius_start=a.radius,
            radius_end=b.radius,
            gap_mm=gap,
            angle_deg=angle,
            uses_end_node=True,
        )

    # -- end to side: an end whose axis, prolonged, runs into another piece (a branch cut off
    # near its origin, whose stump the skeleton may not show)

    def _end_to_side(self, ends: list[End]) -> list[_Candidate]:
        alive = np.flatnonzero(self.skel.alive)
        tree = cKDTree(self.skel.position[alive]) if alive.size else None
        joins = (self._end_side(a, alive, tree) for a in ends)
        return [join for join in joins if join is not None]

    def _end_side(self, a: End, alive: np.ndarray, tree: cKDTree | None) -> _Candidate | None:
        reach = self.limits.max_gap_mm + 2 * a.radius + 2 * self.skel.iso
        met = self._ray_to_other_piece(a, reach)
        if met is None:
            return None
        distance, piece, crossed = met
        hit = a.position + distance * a.tangent
        # The skeleton component of the piece met: the nearest skeleton node of that piece.
        near = alive[tree.query_ball_point(hit, reach)] if tree is not None else np.zeros(0, int)
        near = near[(self.node_piece[near] == piece) & self.bridgeable[near]]
        if near.size == 0:
            return None
        target_node = int(near[np.argmin(np.linalg.norm(self.skel.position[near] - hit, axis=1))])
        if self.skel.component[target_node] == self.skel.component[a.node]:
            return None
        what = f"end-side {self.region.describe(a.position)}->{self.region.describe(hit)}"
        gap = float(np.count_nonzero(crossed == 0)) * self.region.sample_step
        reason = _path_refusal(gap, _other_labels(crossed, self.region.label), self.limits)
        if reason:
            self._refuse(what, reason)
            return None
        # The piece met must not be thinner than the branch.
        side_radius = float(self.skel.radius[near].max())
        if side_radius < self.limits.min_radius_ratio * a.radius:
            self._refuse(what, f"side radius {side_radius:.1f} < branch {a.radius:.1f} mm")
            return None
        if gap <= 0:
            return None  # already touching on the original grid: nothing to bridge
        return _Candidate(
            # End-to-end joins are checked at both ends, so prefer them when close.
            cost=1.25 * (gap + 0.1 * distance),
            kind="end-side",
            start_node=a.node,
            end_node=target_node,
            start=a.position,
            end=hit + 0.5 * a.radius * a.tangent,  # a little into the side piece
            radius_start=a.radius,
            radius_end=a.radius,  # a branch keeps its own calibre up to the trunk
            gap_mm=gap,
            angle_deg=0.0,
            uses_end_node=False,
        )

    def _ray_to_other_piece(self, a: End, reach: float) -> tuple[float, int, np.ndarray] | None:
        """Follow the end's axis forward on the original grid for up to reach mm. Returns the
        distance to the first voxel of another piece, that piece, and the region values
        crossed before it; None when the ray meets no other piece."""
        t = np.arange(0.0, reach, self.region.sample_step)
        index = self.region.index_of(a.position + t[:, None] * a.tangent)
        # The ray starts inside the (convex) box, so this only trims its tail: t still lines up.
        index = index[np.all((index >= 0) & (index < np.array(self.region.values.shape)), axis=1)]
        if len(index) == 0:
            return None
        values = self.region.values[tuple(index.T)]
        pieces = self.region_pieces[tuple(index.T)]
        # The ray starts in the end's own piece; where that first voxel is background, the end
        # node's piece stands for it.
        own = pieces[0] if pieces[0] else self.node_piece[a.node]
        met = np.flatnonzero((pieces != 0) & (pieces != own))
        if met.size == 0:
            return None
        first = int(met[0])
        return float(t[first]), int(pieces[first]), values[:first]


def _choose_joins(candidates: list[_Candidate], component: np.ndarray, node_piece: np.ndarray) -> list[_Candidate]:
    """Kruskal-style: cheapest first; join only pieces not yet connected; each end once.

    Skeleton components lying in one piece of the original mask (split by resampling) start
    out connected: they need no bridge."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first_component_of_piece: dict[int, int] = {}
    for comp, piece in zip(component.tolist(), node_piece.tolist()):
        if piece == 0:
            continue
        anchor = first_component_of_piece.setdefault(piece, comp)
        root_a, root_b = find(comp), find(anchor)
        if root_a != root_b:
            parent[root_a] = root_b

    used: set[int] = set()
    chosen = []
    for cand in sorted(candidates, key=lambda c: (c.cost, c.start_node, c.end_node)):
        if cand.start_node in used or (cand.uses_end_node and cand.end_node in used):
            continue
        root_a, root_b = find(int(component[cand.start_node])), find(int(component[cand.end_node]))
        if root_a == root_b:
            continue
        parent[root_a] = root_b
        used.add(cand.start_node)
        if cand.uses_end_node:
            used.add(cand.end_node)
        chosen.append(cand)
    return chosen


# ----------------------------------------------------------------------------------------
# rebuilding and reporting


def _build_bridge(region: _Region, cand: _Candidate) -> Bridge:
    """Paint the chosen join into the region as a tube and describe it for the report."""
    added = region.paint_tube(cand.start, cand.end, cand.radius_start, cand.radius_end)
    return Bridge(
        label=region.label,
        length_mm=round(cand.gap_mm, 2),
        radius_start_mm=round(cand.radius_start, 2),
        radius_end_mm=round(cand.radius_end, 2),
        start_mm=region.physical(cand.start),
        end_mm=region.physical(cand.end),
        voxels_added=added,
        kind=cand.kind,
        angle_deg=round(cand.angle_deg, 1),
    )


def _pieces(target: np.ndarray, mask: Volume, slices) -> list[Piece]:
    labelled, count = ndimage.label(target, structure=_STRUCTURE_26)
    if count == 0:
        return []
    sizes = np.bincount(labelled.ravel())[1:]
    centroids = ndimage.center_of_mass(target, labelled, range(1, count + 1))
    offset = np.array([s.start for s in slices], dtype=float)
    matrix = mask.index_to_physical_matrix()
    pieces = []
    for size, centroid in zip(sizes, centroids):
        index_zyx = np.asarray(centroid) + offset
        physical = matrix @ np.array([*index_zyx[::-1], 1.0])
        pieces.append(
            Piece(
                volume_mm3=round(float(size) * mask.voxel_volume_mm3, 1),
                centroid_mm=tuple(round(float(v), 1) for v in physical[:3]),  # type: ignore[arg-type]
            )
        )
    return sorted(pieces, key=lambda p: -p.volume_mm3)


def _note(label: int, before: int, pieces: list[Piece], bridges: list[Bridge], rejected: list[str]) -> str:
    name = NAMES[label]
    text = f"{name}: {before} piece(s) before, {len(pieces)} after, {len(bridges)} bridge(s)"
    if bridges:
        text += " (" + ", ".join(f"{b.length_mm:.1f} mm r {b.radius_start_mm:.1f}-{b.radius_end_mm:.1f}" for b in bridges) + ")"
    if len(pieces) > 1:
        text += "; left apart: " + ", ".join(f"{p.volume_mm3:.0f} mm3" for p in pieces[1:6])
        if len(pieces) > 6:
            text += f" and {len(pieces) - 6} more"
    if rejected:
        text += f"; {len(rejected)} candidate join(s) refused"
    return text
