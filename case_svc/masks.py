"""Mask arithmetic of a case job, on arrays and geometry only (no gRPC, no store).

Combining the task masks into one convention mask (precedence documented on `combine`),
merging the repairs back, and removing specks.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medseg.labels import (NAMES, TOTALSEG_NEIGHBOUR_ORGAN_CLASSES, TOTALSEG_VERTEBRA_CLASSES, Label,
                           convention_table, is_neighbour_organ_name, is_vertebra_name, organ_values)
from medseg.summary import mask_box
from medseg.volumes import Volume

# Task masks follow the convention already; which labels each task contributes.
TASK_LABELS = {
    "tumor": (Label.KIDNEY, Label.TUMOR),
    "vessels": (Label.KIDNEY, Label.ARTERY, Label.VEIN),
    "ureter": (Label.KIDNEY, Label.URETER),
}
# Where the kidney comes from, best first: the tumor model is trained for kidney + tumor on
# the portal phase; the vessel and ureter models see the kidney only as context.
KIDNEY_SOURCES = ("tumor", "vessels", "ureter")
# Labels never cleaned as specks: a small second tumor matters more than a false speck. A
# tumor piece that touches no kidney voxel is removed instead (a renal tumor grows from the
# kidney), unless it is the largest tumor piece.
NEVER_CLEANED = (Label.TUMOR,)


def on_grid(volume: Volume, reference: Volume) -> Volume:
    """The mask resampled (nearest neighbour) onto the reference grid, or itself when it is
    already there (the phases of one acquisition usually share a grid)."""
    if volume.same_grid(reference):
        return volume
    image = sitk.Resample(volume.to_image(), reference.to_image(), sitk.Transform(),
                          sitk.sitkNearestNeighbor, 0, volume.to_image().GetPixelID())
    return reference.with_array(sitk.GetArrayFromImage(image), labels=volume.labels)


def tumor_outside_organs(tumor: np.ndarray, other_organ: np.ndarray) -> np.ndarray:
    """The tumor mask less what another organ's model claims: a tumor piece mostly inside the
    other organ goes whole (a false piece in the liver, with a rim the organ model left out),
    and every other tumor voxel inside it goes too (a true tumor's bulge into the liver)."""
    pieces, count = ndimage.label(tumor, np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return tumor
    inside = np.bincount(pieces[other_organ], minlength=count + 1)
    total = np.bincount(pieces.ravel(), minlength=count + 1)
    mostly_inside = np.flatnonzero(inside * 2 > total)
    mostly_inside = mostly_inside[mostly_inside > 0]
    return tumor & ~other_organ & ~np.isin(pieces, mostly_inside)


def combine(task_masks: dict[str, Volume], reference: Volume,
            organs: Volume | None = None) -> tuple[Volume, dict[str, int]]:
    """One convention mask from the task masks, on the reference grid, and the voxels the organ
    mask ruled out ({'tumor in liver or spleen': n, 'ureter at a vertebra': m}).

    Precedence (later never overwrites earlier):
      1. tumor (from the tumor task) over everything, except where the organ mask (the total
         task) has liver or spleen (`tumor_outside_organs`): in the portal phase they enhance
         like a renal tumor, and the organ model, trained on them, knows their boundary better;
      2. kidney from the first task of KIDNEY_SOURCES that ran;
      3. artery and vein (vessels task), then ureter (ureter task), only into voxels still
         background: where a kidney model and a tubular model disagree at the hilum, the
         kidney model's answer stands (its own structure), and the repair steps reconnect
         the tubes around it;
      4. with an organ mask (the total task): no ureter in or within one voxel of a vertebra.
         Excreted contrast and bone are both bright in the delayed phase, and a ureter model's
         false pieces sit in the vertebral bodies, large enough to pass as pieces of their own.
    """
    masks = {task: on_grid(mask, reference).array for task, mask in task_masks.items()}
    out = np.zeros(reference.array.shape, dtype=np.uint8)
    dropped = {}
    if organs is not None:
        organ_array = on_grid(organs, reference).array
    if "tumor" in masks:
        tumor = masks["tumor"] == Label.TUMOR
        box = mask_box(tumor)
        if organs is not None and box is not None:
            liver_spleen = organ_values(organs.labels, is_neighbour_organ_name, TOTALSEG_NEIGHBOUR_ORGAN_CLASSES)
            kept = tumor_outside_organs(tumor[box], np.isin(organ_array[box], liver_spleen))
            dropped["tumor in liver or spleen"] = int(np.count_nonzero(tumor[box] & ~kept))
            tumor[box] = kept
        out[tumor] = Label.TUMOR
    for task in KIDNEY_SOURCES:
        if task in masks:
            out[(masks[task] == Label.KIDNEY) & (out == 0)] = Label.KIDNEY
            break
    for task, label in (("vessels", Label.ARTERY), ("vessels", Label.VEIN), ("ureter", Label.URETER)):
        if task in masks:
            out[(masks[task] == label) & (out == 0)] = label
    box = mask_box(out == Label.URETER, grow=1)
    if organs is not None and box is not None:
        vertebrae = np.isin(organ_array[box], organ_values(organs.labels, is_vertebra_name, TOTALSEG_VERTEBRA_CLASSES))
        near_bone = ndimage.binary_dilation(vertebrae, np.ones((3, 3, 3), dtype=bool))
        at_bone = near_bone & (out[box] == Label.URETER)
        dropped["ureter at a vertebra"] = int(np.count_nonzero(at_bone))
        out[box][at_bone] = 0
    return reference.with_array(out, labels=convention_table()), dropped


def merge_repairs(combined: Volume, repaired: dict[int, Volume]) -> Volume:
    """The combined mask with each repaired label taken from its repair's output: the vessel
    repair contributes artery voxels, the ureter repair ureter voxels. A repair only paints
    into background, so the other labels are unchanged."""
    out = combined.array.copy()
    for label, volume in repaired.items():
        add = (volume.array == label) & ((out == 0) | (out == label))
        out[add] = label
    return combined.with_array(out, labels=convention_table())


# A piece this small next to its label's largest is a speck whatever its absolute size: the
# demo models' false positives are 0.1-2% of the structure they stand beside, while the
# pieces a case really has (two kidneys, two ureters, left and right fat) are of one size.
SPECK_FRACTION = 0.05


def remove_specks(mask: Volume, max_mm3: float, max_fraction: float = SPECK_FRACTION) -> tuple[Volume, list[dict]]:
    """Remove connected pieces (26-connectivity) of each label that are not the label's
    largest piece and are smaller than `max_mm3` or than `max_fraction` of that largest
    piece. The repair steps ran before, so a piece they joined is part of a larger one here.
    Tumor is never cleaned by size; a tumor piece that touches no kidney voxel (26-neighbours)
    and is not the largest tumor piece is removed. max_mm3 <= 0 turns the cleanup off. Returns
    the cleaned mask and one record per removed piece: label, voxels, volume_ml, centre_mm,
    reason."""
    out = mask.array.copy()
    removed = []
    if max_mm3 <= 0:
        return mask, removed
    voxel_mm3 = mask.voxel_volume_mm3
    matrix = mask.index_to_physical_matrix()
    structure = np.ones((3, 3, 3), dtype=bool)
    # Each label is worked on within its own bounding box: the labels fill a few percent of a
    # 512 x 512 x 300 scan, where full-size labelling and dilation per label are seconds each.
    boxes = ndimage.find_objects(out)
    has_kidney = len(boxes) >= Label.KIDNEY and boxes[Label.KIDNEY - 1] is not None
    for value, box in enumerate(boxes, start=1):
        if box is None:
            continue
        pieces, count = ndimage.label(out[box] == value, structure)
        if count < 2:
            continue
        sizes = np.bincount(pieces.ravel())[1:]
        largest = int(np.argmax(sizes)) + 1
        if value in NEVER_CLEANED:
            if not has_kidney:
                continue
            # the kidney within one voxel of the box is all a 26-neighbour can touch
            grown = tuple(slice(max(0, b.start - 1), min(n, b.stop + 1)) for b, n in zip(box, out.shape))
            inner = tuple(slice(b.start - g.start, b.stop - g.start) for b, g in zip(box, grown))
            # the input's kidney, as it was before its own specks were removed above
            near_kidney = ndimage.binary_dilation(mask.array[grown] == Label.KIDNEY, structure)[inner]
            touching = set(np.unique(pieces[near_kidney & (pieces > 0)]).tolist())
            small = [i for i in range(1, count + 1) if i not in touching and i != largest]
            reason = "touches no kidney"
        else:
            limit = max(max_mm3 / voxel_mm3, max_fraction * sizes[largest - 1])  # in voxels
            small = [i + 1 for i, n in enumerate(sizes) if n < limit and i + 1 != largest]
            reason = "speck"
        if not small:
            continue
        # each piece's centre from its own box: ndimage.center_of_mass over a list of pieces
        # took ~50 s for 2000 specks in a 512 x 512 x 300 mask
        piece_boxes = ndimage.find_objects(pieces)
        for index in small:
            piece_box = piece_boxes[index - 1]
            inside = np.argwhere(pieces[piece_box] == index)
            zyx = inside.mean(axis=0) + [b.start + p.start for b, p in zip(box, piece_box)]
            xyz1 = np.array([zyx[2], zyx[1], zyx[0], 1.0])
            removed.append({"label": NAMES.get(value, str(value)), "voxels": int(sizes[index - 1]),
                            "volume_ml": float(sizes[index - 1] * voxel_mm3 / 1000.0),
                            "centre_mm": [round(float(c), 2) for c in (matrix @ xyz1)[:3]],
                            "reason": reason})
        out[box][np.isin(pieces, small)] = 0
    return mask.with_array(out, labels=mask.labels or convention_table()), removed
