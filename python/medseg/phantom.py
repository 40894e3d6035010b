"""Synthetic abdominal CT phantom with exact ground truth.

The anatomy is defined in physical millimetres (LPS: +x patient left, +y posterior,
+z superior) from a seeded random draw, then sampled at voxel centres, so one seed gives the
same body at any resolution, spacing or orientation. Every structure is rasterised only inside
its own index-space bounding box (in z-chunks), painted in priority order into one small
"tissue" code map; the convention mask, the TotalSegmentator-numbered organ mask and the three
contrast phases are then look-ups of that map (plus seeded noise for the CT).

Priority (low -> high): subcutaneous fat, soft tissue, perirenal fat, liver, spleen, spine,
veins, arteries, ureters, bladder, kidney (cortex, medulla, pelvis), tumor. Later paints win, so fat
only remains where no other structure is, tubes end inside the kidney/bladder they join, and
the tumor overrides the kidney.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.labels import PHASES, Label, convention_table
from medseg.volumes import IDENTITY, Volume, write_volume

# Subset of TotalSegmentator v2 "total" classes the phantom draws (numbers and names as in
# wasserth/TotalSegmentator totalsegmentator/map_to_binary.py, class_map["total"]).
TOTAL_CLASSES: dict[int, str] = {
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    5: "liver",
    21: "urinary_bladder",
    26: "vertebrae_S1",
    27: "vertebrae_L5",
    28: "vertebrae_L4",
    29: "vertebrae_L3",
    30: "vertebrae_L2",
    31: "vertebrae_L1",
    32: "vertebrae_T12",
    33: "vertebrae_T11",
    34: "vertebrae_T10",
    52: "aorta",
    63: "inferior_vena_cava",
    65: "iliac_artery_left",
    66: "iliac_artery_right",
    67: "iliac_vena_left",
    68: "iliac_vena_right",
}
_TOTAL_BY_NAME = {name: value for value, name in TOTAL_CLASSES.items()}

HU_MIN, HU_MAX = -1024, 3071

# Vertebrae from cranial to caudal; their centres are spaced by _VERTEBRA_PITCH_MM.
_VERTEBRAE = ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1")
_VERTEBRA_PITCH_MM = 34.0
_VERTEBRA_HEIGHT_MM = 27.0  # the rest of the pitch is disc (soft tissue)
_CHUNK_SLICES = 32  # z-planes rasterised at once; bounds temporaries for large grids


# ---------------------------------------------------------------------------- tissue codes
@dataclass(frozen=True)
class _Tissue:
    code: int
    name: str
    label: int  # convention label (medseg.labels)
    organ: int  # TotalSegmentator class number, 0 for none
    hu: tuple[int, int, int]  # arterial, portal, delayed


def _build_tissues() -> list[_Tissue]:
    bg = int(Label.BACKGROUND)
    rows: list[tuple[str, int, str | None, tuple[int, int, int]]] = [
        ("air", bg, None, (-1000, -1000, -1000)),
        ("subcutaneous_fat", bg, None, (-100, -100, -100)),
        ("soft_tissue", bg, None, (40, 45, 45)),
        ("perirenal_fat", int(Label.FAT), None, (-100, -100, -100)),
        ("liver", bg, "liver", (70, 110, 90)),
        ("spleen", bg, "spleen", (95, 120, 100)),
        ("bladder", bg, "urinary_bladder", (10, 10, 700)),
        ("aorta", int(Label.ARTERY), "aorta", (300, 160, 100)),
        ("renal_artery", int(Label.ARTERY), None, (300, 160, 100)),
        ("iliac_artery_left", int(Label.ARTERY), "iliac_artery_left", (300, 160, 100)),
        ("iliac_artery_right", int(Label.ARTERY), "iliac_artery_right", (300, 160, 100)),
        ("inferior_vena_cava", int(Label.VEIN), "inferior_vena_cava", (120, 180, 100)),
        ("renal_vein", int(Label.VEIN), None, (120, 180, 100)),
        ("iliac_vena_left", int(Label.VEIN), "iliac_vena_left", (120, 180, 100)),
        ("iliac_vena_right", int(Label.VEIN), "iliac_vena_right", (120, 180, 100)),
        ("ureter", int(Label.URETER), None, (15, 20, 700)),
        ("kidney_right_cortex", int(Label.KIDNEY), "kidney_right", (180, 160, 120)),
        ("kidney_right_medulla", int(Label.KIDNEY), "kidney_right", (100, 160, 130)),
        ("kidney_left_cortex", int(Label.KIDNEY), "kidney_left", (180, 160, 120)),
        ("kidney_left_medulla", int(Label.KIDNEY), "kidney_left", (100, 160, 130)),
        # collecting system: urine in the early phases, excreted contrast when delayed
        ("kidney_right_pelvis", int(Label.KIDNEY), "kidney_right", (15, 20, 650)),
        ("kidney_left_pelvis", int(Label.KIDNEY), "kidney_left", (15, 20, 650)),
        ("tumor_right", int(Label.TUMOR), "kidney_right", (100, 90, 70)),
        ("tumor_left", int(Label.TUMOR), "kidney_left", (100, 90, 70)),
    ]
    rows += [(f"vertebrae_{v}", bg, f"vertebrae_{v}", (500, 500, 500)) for v in _VERTEBRAE]
    return [
        _Tissue(code, name, label, _TOTAL_BY_NAME[organ] if organ else 0, hu)
        for code, (name, label, organ, hu) in enumerate(rows)
    ]


_TISSUES = _build_tissues()
_CODE = {t.name: t.code for t in _TISSUES}
_LABEL_LUT = np.array([t.label for t in _TISSUES], dtype=np.uint8)
_ORGAN_LUT = np.array([t.organ for t in _TISSUES], dtype=np.uint8)
_HU_LUT = {p: np.array([t.hu[i] for t in _TISSUES], dtype=np.float32) for i, p in enumerate(PHASES)}
# A tissue's least-enhanced phase stands in for its unenhanced HU: `contrast` scales the
# enhancement above it (a weaker or later bolus, a stronger or earlier one).
_BASE_HU = np.minimum.reduce(list(_HU_LUT.values()))


# ---------------------------------------------------------------------------- grid sampling
class _Grid:
    """Voxel grid geometry: physical = origin + D·diag(spacing)·index (index = x, y, z)."""

    def __init__(self, size, spacing, origin, direction):
        self.size = tuple(int(s) for s in size)
        self.spacing = np.asarray(spacing, dtype=np.float64)
        self.origin = np.asarray(origin, dtype=np.float64)
        self.direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        self.matrix = self.direction @ np.diag(self.spacing)
        self.inverse = np.linalg.inv(self.matrix)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size[2], self.size[1], self.size[0])

    def index_box(self, lo_mm, hi_mm) -> tuple[slice, slice, slice] | None:
        """(z, y, x) slices of the voxels whose centres can lie in the physical box; None if
        the box misses the grid."""
        lo_mm, hi_mm = np.asarray(lo_mm, float), np.asarray(hi_mm, float)
        corners = np.array(list(itertools.product(*zip(lo_mm, hi_mm))))
        idx = (corners - self.origin) @ self.inverse.T
        first = np.maximum(np.floor(idx.min(axis=0)).astype(int), 0)
        last = np.minimum(np.ceil(idx.max(axis=0)).astype(int), np.asarray(self.size) - 1)
        if np.any(last < first):
            return None
        return (slice(first[2], last[2] + 1), slice(first[1], last[1] + 1), slice(first[0], last[0] + 1))

    def coords(self, box: tuple[slice, slice, slice]):
        """Physical x, y, z (float32) of the voxel centres in box, as arrays broadcastable to the
        box's shape; with an axis-aligned direction they stay 1D-thin (no full-box copies)."""
        k = np.arange(box[0].start, box[0].stop, dtype=np.float64)[:, None, None]
        j = np.arange(box[1].start, box[1].stop, dtype=np.float64)[None, :, None]
        i = np.arange(box[2].start, box[2].stop, dtype=np.float64)[None, None, :]
        out = []
        for axis in range(3):
            m = self.matrix[axis]
            terms = [(m[0], i), (m[1], j), (m[2], k)]
            value = None
            for coefficient, index in terms:
                if coefficient == 0.0:
                    continue
                term = (coefficient * index).astype(np.float32)
                value = term if value is None else value + term
            base = np.float32(self.origin[axis])
            out.append(np.full((1, 1, 1), base, np.float32) if value is None else value + base)
        return out

    def chunks(self, box):
        """Split a box along z so temporaries stay bounded on big grids."""
        z = box[0]
        for start in range(z.start, z.stop, _CHUNK_SLICES):
            yield (slice(start, min(start + _CHUNK_SLICES, z.stop)), box[1], box[2])


def _paint(tissue: np.ndarray, grid: _Grid, lo, hi, code: int, inside, only_over: tuple[int, ...] | None = None):
    """Set tissue to code wherever inside(x, y, z) holds, within the physical box lo..hi."""
    box = grid.index_box(lo, hi)
    if box is None:
        return
    for chunk in grid.chunks(box):
        x, y, z = grid.coords(chunk)
        mask = inside(x, y, z)
        target = tissue[chunk]
        mask = np.broadcast_to(mask, target.shape)
        if only_over is not None:
            mask = mask & np.isin(target, only_over)
        np.copyto(target, np.uint8(code), where=mask)


def _paint_ellipsoid(tissue, grid, code, centre, semi_axes, axes=None, only_over=None):
    """Ellipsoid with semi-axes along the columns of `axes` (3x3, default world axes)."""
    centre = np.asarray(centre, float)
    semi = np.asarray(semi_axes, float)
    axes = np.eye(3) if axes is None else np.asarray(axes, float)
    half = np.sqrt(((axes * semi[None, :]) ** 2).sum(axis=1))  # axis-aligned half extent

    def inside(x, y, z):
        dx, dy, dz = x - np.float32(centre[0]), y - np.float32(centre[1]), z - np.float32(centre[2])
        total = None
        for a in range(3):
            col = axes[:, a] / semi[a]
            q = dx * np.float32(col[0]) + dy * np.float32(col[1]) + dz * np.float32(col[2])
            total = q * q if total is None else total + q * q
        return total <= 1.0

    _paint(tissue, grid, centre - half, centre + half, code, inside, only_over)


def _paint_tube(tissue, grid, code, points, radius):
    """Union of capsules around the polyline's segments (round joints and ends)."""
    points = np.asarray(points, float)
    r2 = np.float32(radius * radius)
    for a, b in zip(points[:-1], points[1:]):
        d = b - a
        length2 = float(d @ d)

        def inside(x, y, z, a=a, d=d, length2=length2):
            dx, dy, dz = x - np.float32(a[0]), y - np.float32(a[1]), z - np.float32(a[2])
            if length2 > 0:
                t = (dx * np.float32(d[0]) + dy * np.float32(d[1]) + dz * np.float32(d[2])) / np.float32(length2)
                t = np.clip(t, 0.0, 1.0)
                dx = dx - t * np.float32(d[0])
                dy = dy - t * np.float32(d[1])
                dz = dz - t * np.float32(d[2])
            return dx * dx + dy * dy + dz * dz <= r2

        _paint(tissue, grid, np.minimum(a, b) - radius, np.maximum(a, b) + radius, code, inside)


def _paint_elliptic_prism(tissue, grid, code, centre_xy, semi_xy, z_range, only_over=None):
    """Elliptic cylinder along z (body outline, vertebral bodies)."""
    cx, cy = centre_xy
    ax, ay = semi_xy

    def inside(x, y, z):
        u = (x - np.float32(cx)) / np.float32(ax)
        v = (y - np.float32(cy)) / np.float32(ay)
        mask = u * u + v * v <= 1.0
        return mask & (z >= np.float32(z_range[0])) & (z <= np.float32(z_range[1]))

    _paint(tissue, grid, (cx - ax, cy - ay, z_range[0]), (cx + ax, cy + ay, z_range[1]), code, inside, only_over)


def _paint_ring_prism(tissue, grid, code, centre_xy, r_outer, r_inner, z_range):
    """Vertebral arch: a circular ring around the spinal canal."""
    cx, cy = centre_xy

    def inside(x, y, z):
        d2 = (x - np.float32(cx)) ** 2 + (y - np.float32(cy)) ** 2
        return (d2 <= r_outer**2) & (d2 >= r_inner**2) & (z >= np.float32(z_range[0])) & (z <= np.float32(z_range[1]))

    _paint(tissue, grid, (cx - r_outer, cy - r_outer, z_range[0]), (cx + r_outer, cy + r_outer, z_range[1]), code, inside)


# ---------------------------------------------------------------------------- anatomy draw
def _rotation(axis: str, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _ellipsoid_surface_point(centre, semi, axes, local_direction):
    """Point where the ray from the centre along local_direction (ellipsoid frame) meets the
    surface, and the outward unit normal there (both in world mm)."""
    d = np.asarray(local_direction, float)
    d = d / np.linalg.norm(d)
    q = d / math.sqrt(float(((d / semi) ** 2).sum()))
    n_local = q / semi**2
    n_local /= np.linalg.norm(n_local)
    return centre + axes @ q, axes @ n_local


def _draw_anatomy(seed: int, tumor: bool) -> dict:
    """All structure parameters in mm, from one seeded generator (grid independent)."""
    rng = np.random.default_rng(seed)
    u = rng.uniform

    body = {"centre_mm": [0.0, 0.0], "semi_axes_mm": [u(155, 172), u(112, 125)], "subcutaneous_fat_mm": u(10, 20)}

    z_shift = u(-6, 6)
    spine_y = u(46, 52)
    body_semi = (u(19, 22), u(15, 18))
    vertebrae = []
    for n, name in enumerate(_VERTEBRAE):
        zc = z_shift + (3 - n) * _VERTEBRA_PITCH_MM + 48.0  # L1 centre near z = +48 mm
        vertebrae.append(
            {
                "name": f"vertebrae_{name}",
                "organ_value": _TOTAL_BY_NAME[f"vertebrae_{name}"],
                "centre_mm": [0.0, spine_y, zc],
                "body_semi_axes_mm": list(body_semi),
                "arch_centre_mm": [0.0, spine_y + body_semi[1] + 12.0],
                "arch_radii_mm": [15.0, 8.0],
                "z_range_mm": [zc - _VERTEBRA_HEIGHT_MM / 2, zc + _VERTEBRA_HEIGHT_MM / 2],
            }
        )
    spine_front = spine_y - body_semi[1]

    aorta_r, ivc_r = u(9, 11.5), u(10, 12.5)
    aorta_xy = np.array([u(12, 18), spine_front - aorta_r - u(2, 5)])
    ivc_xy = np.array([-u(20, 25), max(spine_front - ivc_r - u(1, 4), aorta_xy[1])])
    bifurcation_z = vertebrae[6]["centre_mm"][2] + u(-4, 8)  # L4
    confluence_z = bifurcation_z - u(6, 12)

    kidneys = {}
    right_z = z_shift + u(-2, 10)
    for side, sign in (("right", -1.0), ("left", 1.0)):
        centre = np.array([sign * u(64, 74), u(40, 48), right_z + (u(6, 16) if side == "left" else 0.0)])
        semi = np.array([u(27, 33), u(22, 27), u(50, 60)])  # transverse (lateral), AP, long
        theta, phi, psi = math.radians(u(20, 40)), math.radians(u(6, 18)), math.radians(u(6, 18))
        axes = _rotation("z", theta) @ _rotation("y", -phi) @ _rotation("x", -psi)
        if sign < 0:  # mirror to the patient's right
            axes = np.diag([-1.0, 1.0, 1.0]) @ axes
        hilum, _ = _ellipsoid_surface_point(centre, semi, axes, (-1.0, 0.0, 0.0))
        # renal pelvis in the sinus behind the hilum vessels, where the ureter starts
        pelvis_centre = hilum + axes @ np.array([9.0, 5.0, -6.0])
        kidneys[side] = {
            "centre_mm": centre,
            "semi_axes_mm": semi,
            "axes": axes,  # columns: lateral, posterior-ish (AP), long (superior pole) unit vectors
            "hilum_mm": hilum,
            "volume_ml": 4.0 / 3.0 * math.pi * float(np.prod(semi)) / 1000.0,
            "fat_thickness_mm": u(8, 15),
            "pelvis": {"centre_mm": pelvis_centre, "semi_axes_mm": np.array([8.0, 5.0, 11.0])},
        }

    tubes: dict[str, dict] = {}

    def tube(name, tissue, points, radius, parent=None):
        tubes[name] = {
            "tissue": tissue,
            "label": convention_table()[_TISSUES[_CODE[tissue]].label],
            "organ_value": _TISSUES[_CODE[tissue]].organ,
            "points_mm": np.asarray(points, float),
            "radius_mm": float(radius),
            "parent": parent,
        }

    top_z = 400.0  # the aorta and IVC run past the field of view; sampling clips them
    bottom_z = -170.0  # iliac vessels leave the default field of view (z >= -150 mm)
    tube("aorta", "aorta", [[*aorta_xy, top_z], [*aorta_xy, bifurcation_z]], aorta_r)
    tube("inferior_vena_cava", "inferior_vena_cava", [[*ivc_xy, top_z], [*ivc_xy, confluence_z]], ivc_r)
    # iliac arteries swing forwards so that the left iliac vein passes behind the right one
    iliac_r_art, iliac_r_vein = aorta_r * 0.55, ivc_r * 0.6
    for side, sign in (("left", 1.0), ("right", -1.0)):
        bend_a = [aorta_xy[0] + sign * 10.0, aorta_xy[1] - 14.0, bifurcation_z - 25.0]
        end_a = [sign * u(48, 56), aorta_xy[1] - u(4, 8), bottom_z]
        end_v = [sign * u(38, 44), ivc_xy[1] + u(10, 14), bottom_z]  # medial, behind the artery
        tube(f"iliac_artery_{side}", f"iliac_artery_{side}", [[*aorta_xy, bifurcation_z], bend_a, end_a], iliac_r_art, "aorta")
        tube(f"iliac_vena_{side}", f"iliac_vena_{side}", [[*ivc_xy, confluence_z], end_v], iliac_r_vein, "inferior_vena_cava")

    bladder_centre = np.array([u(-5, 5), u(-32, -20), vertebrae[8]["centre_mm"][2] + u(0, 8)])
    bladder_semi = np.array([u(34, 42), u(26, 32), u(22, 28)])

    artery_r, vein_r, ureter_r = u(3.0, 4.0), u(4.5, 5.5), u(2.5, 3.2)
    for side, sign in (("right", -1.0), ("left", 1.0)):
        k = kidneys[side]
        semi, axes, hilum = k["semi_axes_mm"], k["axes"], k["hilum_mm"]
        lateral, ap, long = axes[:, 0], axes[:, 1], axes[:, 2]
        inward = lateral * 5.0  # tubes end 5 mm inside the kidney so they join it
        artery_end = hilum + inward + long * 5.0 + ap * 1.0
        vein_end = hilum + inward - ap * 8.0 - long * 4.0
        pelvis = hilum + inward + ap * 7.0 - long * 8.0
        artery_z = artery_end[2] + u(4, 10)
        vein_z = vein_end[2] - u(2, 5)
        if side == "left":
            artery = [[*aorta_xy, artery_z], [aorta_xy[0] + aorta_r, aorta_xy[1] + 3.0, artery_z], artery_end]
            # the left renal vein crosses in front of the aorta
            front_y = aorta_xy[1] - aorta_r - vein_r - 6.0
            clear = aorta_r + vein_r + 6.0
            vein = [vein_end, [aorta_xy[0] + clear, front_y, vein_z], [aorta_xy[0], front_y, vein_z], [*ivc_xy, vein_z]]
        else:
            # the right renal artery passes behind the IVC
            behind = [ivc_xy[0], ivc_xy[1] + ivc_r + artery_r + 6.0, artery_z]
            artery = [[*aorta_xy, artery_z], [aorta_xy[0], aorta_xy[1] + aorta_r * 0.6, artery_z], behind, artery_end]
            vein = [vein_end, [*ivc_xy, vein_z]]
        tube(f"renal_artery_{side}", "renal_artery", artery, artery_r, "aorta")
        tube(f"renal_vein_{side}", "renal_vein", vein, vein_r, "inferior_vena_cava")

        # ureter: pelvis -> down in front of the psoas -> forwards, crossing in front of the
        # iliac artery at the pelvic brim -> bladder wall
        entry, _ = _ellipsoid_surface_point(bladder_centre, bladder_semi, np.eye(3), (sign * 0.7, 0.6, 0.35))
        entry = bladder_centre + (entry - bladder_centre) * 0.85  # inside the bladder
        x0 = abs(pelvis[0])
        ureter = [
            pelvis,
            [sign * (x0 - 2.0), pelvis[1] + 2.0, pelvis[2] - 30.0],
            [sign * u(44, 50), u(34, 42), bifurcation_z + u(-2, 6)],
            [sign * u(42, 48), u(-13, -8), bladder_centre[2] + 32.0],
            entry,
        ]
        tube(f"ureter_{side}", "ureter", ureter, ureter_r, None)

    liver = {
        "centre_mm": np.array([u(-78, -66), u(-10, 0), z_shift + u(92, 102)]),
        "semi_axes_mm": np.array([u(64, 74), u(60, 68), u(50, 58)]),
        "axes": _rotation("z", math.radians(u(-10, 10))),
    }
    spleen = {
        "centre_mm": np.array([u(84, 92), u(18, 28), z_shift + u(95, 108)]),
        "semi_axes_mm": np.array([u(18, 22), u(34, 42), u(34, 42)]),
        "axes": _rotation("z", math.radians(u(-35, -20))),
    }

    tumor_info = None
    if tumor:
        side = "left" if rng.random() < 0.5 else "right"
        k = kidneys[side]
        radius = u(10, 25)
        outward = u(-0.2, 0.5)  # centre offset along the normal in radii: partly exophytic
        # site: lateral half (away from the hilum vessels and ureter); of a few draws, the
        # first whose tumor and fat shell stay inside the muscle wall (else the least bulging)
        inner = np.asarray(body["semi_axes_mm"]) - body["subcutaneous_fat_mm"] - 4.0
        best = None
        for _ in range(12):
            direction = rng.normal(size=3)
            direction[0] = abs(direction[0]) + 0.15
            surface, normal = _ellipsoid_surface_point(k["centre_mm"], k["semi_axes_mm"], k["axes"], direction)
            centre = surface + normal * radius * outward
            extent = radius + k["fat_thickness_mm"]
            reach = float(np.max(((centre[:2] + np.array([[extent, 0], [-extent, 0], [0, extent], [0, -extent]])) / inner) ** 2 @ np.ones(2)))
            if best is None or reach < best[0]:
                best = (reach, surface, centre)
            if reach <= 1.0:
                break
        _, surface, centre = best
        tumor_info = {
            "side": side,
            "centre_mm": centre,
            "radius_mm": radius,
            "volume_ml": 4.0 / 3.0 * math.pi * radius**3 / 1000.0,
            "surface_point_mm": surface,
            "outward_offset_radii": outward,
        }

    _fit_body(body, kidneys, tumor_info, liver, spleen)
    return {
        "seed": seed,
        "body": body,
        "vertebrae": vertebrae,
        "kidneys": kidneys,
        "tumor": tumor_info,
        "tubes": tubes,
        "bladder": {"centre_mm": bladder_centre, "semi_axes_mm": bladder_semi},
        "liver": liver,
        "spleen": spleen,
        "perirenal_fat": {side: {"thickness_mm": kidneys[side]["fat_thickness_mm"]} for side in kidneys},
        "hu": {t.name: dict(zip(PHASES, t.hu)) for t in _TISSUES},
    }


def _ellipsoid_samples(centre, semi, axes, n: int = 600) -> np.ndarray:
    """Points spread over an ellipsoid's surface (Fibonacci sphere, stretched and turned)."""
    k = np.arange(n) + 0.5
    polar = np.arccos(1 - 2 * k / n)
    azimuth = np.pi * (1 + 5**0.5) * k
    unit = np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1)
    return np.asarray(centre) + (unit * np.asarray(semi)) @ np.asarray(axes).T


def _fit_body(body: dict, kidneys: dict, tumor: dict | None, liver: dict, spleen: dict) -> None:
    """Widen the body outline where needed so every organ (kidneys with their fat shell, the
    tumor, liver, spleen) stays inside the muscle wall, a few mm clear of the subcutaneous fat."""
    points = [_ellipsoid_samples(o["centre_mm"], o["semi_axes_mm"], o["axes"]) for o in (liver, spleen)]
    for kidney in kidneys.values():
        points.append(_ellipsoid_samples(kidney["centre_mm"], kidney["semi_axes_mm"] + kidney["fat_thickness_mm"], kidney["axes"]))
    if tumor is not None:
        r = tumor["radius_mm"] + kidneys[tumor["side"]]["fat_thickness_mm"]
        points.append(_ellipsoid_samples(tumor["centre_mm"], (r, r, r), np.eye(3)))
    xy = np.concatenate(points)[:, :2]
    fat = body["subcutaneous_fat_mm"]
    inner = np.asarray(body["semi_axes_mm"]) - fat - 4.0  # 4 mm of muscle wall
    reach = float(np.sqrt((((xy - body["centre_mm"]) / inner) ** 2).sum(axis=1).max()))
    if reach > 1.0:
        body["semi_axes_mm"] = list(inner * reach + fat + 4.0)


def _rasterise(anatomy: dict, grid: _Grid) -> np.ndarray:
    """Paint every structure in priority order into a uint8 tissue-code map (z, y, x)."""
    tissue = np.zeros(grid.shape, dtype=np.uint8)
    body = anatomy["body"]
    ax, ay = body["semi_axes_mm"]
    fat = body["subcutaneous_fat_mm"]
    zr = (-1e4, 1e4)
    _paint_elliptic_prism(tissue, grid, _CODE["subcutaneous_fat"], (0.0, 0.0), (ax, ay), zr)
    _paint_elliptic_prism(tissue, grid, _CODE["soft_tissue"], (0.0, 0.0), (ax - fat, ay - fat), zr)

    # perirenal fat shells first, only over soft tissue; everything later overrides them
    tumor = anatomy["tumor"]
    for side, k in anatomy["kidneys"].items():
        t = k["fat_thickness_mm"]
        fat_code = _CODE["perirenal_fat"]
        _paint_ellipsoid(tissue, grid, fat_code, k["centre_mm"], k["semi_axes_mm"] + t, k["axes"], only_over=(_CODE["soft_tissue"],))
        if tumor is not None and tumor["side"] == side:
            r = tumor["radius_mm"] + t
            _paint_ellipsoid(tissue, grid, fat_code, tumor["centre_mm"], (r, r, r), only_over=(_CODE["soft_tissue"],))

    for organ in ("liver", "spleen"):
        o = anatomy[organ]
        _paint_ellipsoid(tissue, grid, _CODE[organ], o["centre_mm"], o["semi_axes_mm"], o["axes"])

    for v in anatomy["vertebrae"]:
        code = _CODE[v["name"]]
        _paint_elliptic_prism(tissue, grid, code, v["centre_mm"][:2], v["body_semi_axes_mm"], v["z_range_mm"])
        _paint_ring_prism(tissue, grid, code, v["arch_centre_mm"], *v["arch_radii_mm"], v["z_range_mm"])

    tubes = anatomy["tubes"]
    order = {"vein": 0, "artery": 1, "ureter": 2}
    for name in sorted(tubes, key=lambda n: (order[tubes[n]["label"]], n)):
        t = tubes[name]
        _paint_tube(tissue, grid, _CODE[t["tissue"]], t["points_mm"], t["radius_mm"])

    b = anatomy["bladder"]
    _paint_ellipsoid(tissue, grid, _CODE["bladder"], b["centre_mm"], b["semi_axes_mm"])

    for side, k in anatomy["kidneys"].items():
        _paint_ellipsoid(tissue, grid, _CODE[f"kidney_{side}_cortex"], k["centre_mm"], k["semi_axes_mm"], k["axes"])
        _paint_ellipsoid(tissue, grid, _CODE[f"kidney_{side}_medulla"], k["centre_mm"], k["semi_axes_mm"] * 0.6, k["axes"])
        kidney_codes = (_CODE[f"kidney_{side}_cortex"], _CODE[f"kidney_{side}_medulla"])
        pelvis = k["pelvis"]
        _paint_ellipsoid(tissue, grid, _CODE[f"kidney_{side}_pelvis"], pelvis["centre_mm"], pelvis["semi_axes_mm"], k["axes"], only_over=kidney_codes)
    if tumor is not None:
        r = tumor["radius_mm"]
        _paint_ellipsoid(tissue, grid, _CODE[f"tumor_{tumor['side']}"], tumor["centre_mm"], (r, r, r))
    return tissue


def _phase_image(tissue: np.ndarray, phase: str, seed: int, noise_hu: float, contrast: float = 1.0) -> np.ndarray:
    """HU = tissue value (enhancement scaled by `contrast`) + Gaussian noise, drawn slab by slab
    from a per-phase generator."""
    lut = _BASE_HU + np.float32(contrast) * (_HU_LUT[phase] - _BASE_HU)
    rng = np.random.default_rng([seed, PHASES.index(phase), 0x5EED])
    out = np.empty(tissue.shape, dtype=np.int16)
    for start in range(0, tissue.shape[0], _CHUNK_SLICES):
        stop = min(start + _CHUNK_SLICES, tissue.shape[0])
        slab = rng.standard_normal(size=(stop - start,) + tissue.shape[1:], dtype=np.float32)
        slab *= np.float32(noise_hu)
        slab += lut[tissue[start:stop]]
        np.rint(slab, out=slab)
        np.clip(slab, HU_MIN, HU_MAX, out=slab)
        out[start:stop] = slab
    return out


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------------------- public API
@dataclass
class PhantomCase:
    """One synthetic case: ground-truth masks, three contrast phases and the anatomy (mm)."""

    labels: Volume  # uint8 convention mask (medseg.labels)
    organs: Volume  # uint8 mask with TotalSegmentator v2 "total" numbers
    phases: dict[str, Volume]  # arterial/portal/delayed int16 HU, same grid
    anatomy: dict = field(repr=False)
    seed: int = 0

    def write(self, folder: str | Path) -> dict[str, Path]:
        """Write labels/organs/<phase>.nii.gz (plus anatomy.json and the masks' label tables
        labels/organs.labels.json, not returned)."""
        from medseg.labelfiles import write_mask_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {
            "labels": write_mask_file(self.labels, folder / "labels.nii.gz"),
            "organs": write_mask_file(self.organs, folder / "organs.nii.gz"),
        }
        for phase, volume in self.phases.items():
            paths[phase] = write_volume(volume, folder / f"{phase}.nii.gz")
        (folder / "anatomy.json").write_text(json.dumps(_jsonable(self.anatomy), indent=1))
        return paths


def make_phantom(
    size: tuple[int, int, int] = (128, 128, 96),
    spacing: tuple[float, float, float] | None = None,
    seed: int = 0,
    *,
    tumor: bool = True,
    fov_mm: tuple[float, float, float] = (380.0, 380.0, 300.0),
    origin: tuple[float, float, float] | None = None,
    direction: tuple[float, ...] = IDENTITY,
    noise_hu: float = 12.0,
    contrast: float = 1.0,
    body_scale: float = 1.0,
) -> PhantomCase:
    """Generate a case. size is (x, y, z) voxels; spacing defaults to fov_mm / size so every
    size shows the same body; origin defaults to a grid centred on (0, 0, 0) mm.
    physical = origin + direction · diag(spacing) · index.

    Acquisition and patient variety (training data): noise_hu is the CT noise (SD), contrast
    scales every tissue's enhancement over its least-enhanced phase (bolus strength and timing),
    body_scale grows or shrinks the whole body about the origin (the anatomy dict stays in the
    unscaled millimetres it was drawn in)."""
    size = tuple(int(s) for s in size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"size must be three positive voxel counts (x, y, z), got {size}")
    if spacing is None:
        spacing = tuple(float(f) / s for f, s in zip(fov_mm, size))
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive mm values, got {spacing}")
    direction = tuple(float(d) for d in direction)
    d = np.asarray(direction).reshape(3, 3)
    if not np.allclose(d @ d.T, np.eye(3), atol=1e-6):
        raise ValueError(f"direction must be an orthonormal 3x3 matrix (row-major), got {direction}")
    if origin is None:
        half_extent = d @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2.0)
        origin = tuple(-half_extent)
    if not contrast > 0 or not 0.5 <= body_scale <= 2.0:
        raise ValueError(f"contrast must be > 0 and body_scale within 0.5..2, got {contrast}, {body_scale}")
    grid = _Grid(size, spacing, origin, direction)

    anatomy = _draw_anatomy(seed, tumor)
    # A body s times larger on this grid is the drawn body on a grid s times finer.
    drawn = _Grid(size, np.asarray(spacing) / body_scale, np.asarray(origin) / body_scale, direction)
    tissue = _rasterise(anatomy, drawn)

    geometry = dict(spacing=spacing, origin=tuple(float(o) for o in origin), direction=direction)
    labels = Volume(_LABEL_LUT[tissue], labels=convention_table(), **geometry)
    organs = Volume(_ORGAN_LUT[tissue], labels={0: "background", **TOTAL_CLASSES}, **geometry)
    phases = {p: Volume(_phase_image(tissue, p, seed, noise_hu, contrast), **geometry) for p in PHASES}
    anatomy["grid"] = {"size": list(size), **{k: list(v) for k, v in geometry.items()}}
    anatomy["acquisition"] = {"noise_hu": float(noise_hu), "contrast": float(contrast), "body_scale": float(body_scale)}
    return PhantomCase(labels=labels, organs=organs, phases=phases, anatomy=anatomy, seed=seed)
