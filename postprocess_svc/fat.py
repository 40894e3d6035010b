"""Perirenal fat from a kidney/tumor mask, a whole-body organ mask and (optionally) the CT.

No open automated perirenal-fat tool exists; this is the geometric approximation of the
research note (part B, "Perirenal fat"):
  1. the region within margin_mm of the kidney/tumor surface, measured in mm (EDT with
     the voxel spacing, so anisotropic grids are handled). With a CT the margin is only a
     reach: the fat itself is found in the CT (steps 4-5), out to where soft tissue bounds it
     (the renal fascia), so its default is wider (20 mm: adult perirenal fat is up to ~2 cm
     thick; the phantom's 8-15 mm). A fixed 10 mm margin cut 8-33% of the fat off on
     phantom seeds whose fascia lies farther out. Without a CT the margin is the fat's
     outer surface (10 mm),
  2. minus kidney, tumor, vessels, ureter and every non-kidney organ of the organ mask,
  3. limited to the kidneys' craniocaudal extent (+ craniocaudal_margin_mm),
  4. intersected with the fat HU window when the CT is given,
  5. keeping only components that touch the kidney/tumor surface.
All of it runs inside the kidney/tumor bounding box grown by the margin: nothing outside
can be within margin_mm of the kidney, so the result equals the whole-volume computation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from medseg.labels import NAMES, TOTALSEG_KIDNEY_CLASSES, Label, is_kidney_name, organ_values
from medseg.params import ParameterError
from medseg.progress import Cancelled, Progress, report_stage
from medseg.volumes import Volume

from .regions import (
    bbox_of_values,
    full_slices,
    label_values_present,
    paste,
    require_convention,
    require_same_grid,
)

DEFAULT_MARGIN_MM = 10.0  # without a CT: the fat region's thickness
DEFAULT_CT_MARGIN_MM = 20.0  # with a CT: how far out fat connected to the kidney is looked for
DEFAULT_HU_MIN, DEFAULT_HU_MAX = -190.0, -30.0


@dataclass
class FatReport:
    fat_volume_ml: float
    used_ct: bool
    margin_mm: float
    hu_window: tuple[float, float] | None
    note: str
    fat_voxels: int = 0
    craniocaudal_margin_mm: float = 0.0
    # (z, y, x) shape of the region actually processed (the whole grid when whole_volume).
    region_shape: tuple[int, int, int] = field(default=(0, 0, 0))
    replaced_existing_fat: bool = False


def organ_kidney_values(organs: Volume) -> set[int]:
    """Organ-mask values that are kidney parenchyma (they are not 'other organ').

    With a label table: names containing 'kidney' except cysts (a cyst is never fat).
    Without one: TotalSegmentator v2 `total` numbering.
    """
    return set(organ_values(organs.labels, is_kidney_name, TOTALSEG_KIDNEY_CLASSES))


def craniocaudal_axis(volume: Volume) -> int:
    """Array axis (0=z, 1=y, 2=x) whose index direction is closest to physical S-I (LPS z)."""
    direction = np.asarray(volume.direction).reshape(3, 3)
    itk_axis = int(np.argmax(np.abs(direction[2, :])))  # column k = index axis k (x, y, z)
    return 2 - itk_axis


def add_fat(
    mask: Volume,
    organs: Volume,
    ct: Volume | None = None,
    *,
    margin_mm: float | None = None,
    hu_min: float = DEFAULT_HU_MIN,
    hu_max: float = DEFAULT_HU_MAX,
    craniocaudal_margin_mm: float = 0.0,
    whole_volume: bool = False,
    progress: Progress | None = None,
    cancelled: Cancelled | None = None,
) -> tuple[Volume, FatReport]:
    """Return the mask with perirenal fat (Label.FAT) added on the same grid, and a report.

    mask: convention mask with kidney (and tumor, maybe vessels/ureter). Fat already in it
    is replaced. organs: organ mask on the same grid (TotalSegmentator classes); every
    non-zero non-kidney class counts as another organ. ct: HU image on the same grid, or None
    for the geometric region only; hu_min..hu_max is the fat window on it. margin_mm: unset,
    DEFAULT_CT_MARGIN_MM with a CT, DEFAULT_MARGIN_MM without (module doc). whole_volume: skip
    the crop (benchmark baseline; output is identical).
    """
    report_stage(progress, cancelled, "validate", 0.0, "checking inputs")
    if margin_mm is None:
        margin_mm = DEFAULT_MARGIN_MM if ct is None else DEFAULT_CT_MARGIN_MM
    if not margin_mm > 0:
        raise ParameterError("margin_mm", f"must be positive, got {margin_mm}")
    if not craniocaudal_margin_mm >= 0:
        raise ParameterError("craniocaudal_margin_mm", f"must be >= 0, got {craniocaudal_margin_mm}")
    # The window is checked even without a CT: a bad window is a bad request either way.
    hu_low, hu_high = float(hu_min), float(hu_max)
    if not hu_low < hu_high:
        raise ParameterError("hu_min", f"must be below hu_max, got {hu_low:g} >= {hu_high:g}")
    present = require_convention(mask.array, "mask", NAMES)
    if Label.KIDNEY not in present:
        raise ValueError(f"mask has no kidney (label {int(Label.KIDNEY)}) voxels")
    require_same_grid(mask, organs, "organs")
    if ct is not None:
        require_same_grid(mask, ct, "ct")
    organ_values = label_values_present(organs.array)
    if organ_values.size and organ_values[0] < 0:
        raise ValueError(f"organs has negative values {organ_values[organ_values < 0].tolist()}; expected class numbers >= 0")
    kidney_classes = organ_kidney_values(organs)

    # z, y, x sampling in mm for distances.
    sampling = tuple(reversed(mask.spacing))
    if whole_volume:
        region = full_slices(mask.array.shape)
    else:
        region = bbox_of_values(mask.array, (Label.KIDNEY, Label.TUMOR), margin_mm, mask.spacing)
    region_shape = tuple(s.stop - s.start for s in region)

    report_stage(progress, cancelled, "distance", 0.15, f"distance to kidney/tumor in region {region_shape}")
    labels = mask.array[region]
    kidney_or_tumor = (labels == Label.KIDNEY) | (labels == Label.TUMOR)
    distance_mm = ndimage.distance_transform_edt(~kidney_or_tumor, sampling=sampling)
    candidate = distance_mm <= margin_mm
    del distance_mm

    report_stage(progress, cancelled, "subtract", 0.5, "removing kidney, tumor, vessels, ureter, organs")
    # Every convention structure except fat itself (old fat is recomputed).
    candidate &= (labels == 0) | (labels == Label.FAT)
    organ_region = organs.array[region]
    other_organ = organ_region != 0
    if kidney_classes:
        other_organ &= ~np.isin(organ_region, list(kidney_classes))
    candidate &= ~other_organ
    del other_organ

    # Craniocaudal limit: the kidney/tumor extent along the S-I axis (+ margin).
    axis = craniocaudal_axis(mask)
    other_axes = tuple(a for a in range(3) if a != axis)
    present_slices = np.flatnonzero(kidney_or_tumor.any(axis=other_axes))
    pad = int(np.ceil(craniocaudal_margin_mm / sampling[axis] - 1e-9))
    keep = np.zeros(candidate.shape[axis], dtype=bool)
    keep[max(0, present_slices[0] - pad) : present_slices[-1] + 1 + pad] = True
    shape = [1, 1, 1]
    shape[axis] = -1
    candidate &= keep.reshape(shape)

    if ct is not None:
        report_stage(progress, cancelled, "hu_window", 0.65, f"fat window {hu_low:g}..{hu_high:g} HU")
        hu = ct.array[region]
        candidate &= (hu >= hu_low) & (hu <= hu_high)

    report_stage(progress, cancelled, "components", 0.75, "keeping fat that touches the kidney surface")
    # Voxels face-adjacent to kidney/tumor: fat must be connected to them.
    surface_ring = ndimage.binary_dilation(kidney_or_tumor) & ~kidney_or_tumor
    components, count = ndimage.label(candidate, structure=np.ones((3, 3, 3), dtype=bool))
    touching = np.unique(components[surface_ring & candidate])
    touching = touching[touching != 0]
    fat = np.isin(components, touching) if count else candidate
    del components

    report_stage(progress, cancelled, "assemble", 0.95, "writing fat into the mask")
    replaced = bool(Label.FAT in present)
    output = mask.array.copy()
    if replaced:
        output[output == Label.FAT] = 0
    out_region = output[region]
    out_region[fat] = Label.FAT
    paste(output, region, out_region)

    fat_voxels = int(fat.sum())
    fat_ml = fat_voxels * mask.voxel_volume_mm3 / 1000.0
    if ct is None:
        note = f"no CT given: geometric region only (within {margin_mm:g} mm of kidney/tumor)"
    else:
        note = f"CT fat window {hu_low:g}..{hu_high:g} HU within {margin_mm:g} mm of kidney/tumor"
    note += f"; region {region_shape[2]}x{region_shape[1]}x{region_shape[0]} voxels (x*y*z)"
    if replaced:
        note += "; fat already in the mask was replaced"
    report_stage(progress, cancelled, "done", 1.0, f"{fat_ml:.1f} ml fat")
    report = FatReport(
        fat_volume_ml=fat_ml,
        used_ct=ct is not None,
        margin_mm=float(margin_mm),
        hu_window=(hu_low, hu_high) if ct is not None else None,
        note=note,
        fat_voxels=fat_voxels,
        craniocaudal_margin_mm=float(craniocaudal_margin_mm),
        region_shape=region_shape,  # type: ignore[arg-type]
        replaced_existing_fat=replaced,
    )
    return mask.with_array(output, labels=dict(NAMES)), report
