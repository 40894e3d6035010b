#!/usr/bin/env python
"""Build the template label map SampleFromTemplate ships with, from the synthetic phantom.

A tumor-free phantom case (its own seed, so it is not the demo case) is sampled at an
isotropic spacing, reduced to kidney, artery, vein and ureter (no fat: AddFat makes that), and
cut to the box around the kidneys that holds their vessels and the ureters down to their end.

    .venv/bin/python scripts/build_template.py [--seed 7] [--spacing 2.0] [--out models/templates/...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from medseg.labels import NAMES, Label  # noqa: E402
from medseg.phantom import make_phantom  # noqa: E402
from medseg.volumes import write_volume  # noqa: E402
from postprocess_svc.regions import bbox_of, margin_voxels  # noqa: E402
from postprocess_svc.template import default_template_path  # noqa: E402

TEMPLATE_STRUCTURES = (Label.KIDNEY, Label.ARTERY, Label.VEIN, Label.URETER)


def build_template(seed: int = 7, spacing_mm: float = 2.0, margin_mm: float = 30.0):
    fov = (380.0, 380.0, 300.0)
    size = tuple(int(round(f / spacing_mm)) for f in fov)
    case = make_phantom(size=size, spacing=(spacing_mm,) * 3, seed=seed, tumor=False, fov_mm=fov, noise_hu=0.0)
    labels = case.labels.array
    kept = np.where(np.isin(labels, [int(v) for v in TEMPLATE_STRUCTURES]), labels, 0).astype(np.uint8)
    # Left-right and front-back: the kidneys plus a margin (aorta, IVC and renal vessels lie
    # between them). Cranio-caudal: from above the kidneys down to the lowest ureter voxel.
    kidney_box = bbox_of(kept == Label.KIDNEY, margin_mm, case.labels.spacing)
    ureter_slices = np.flatnonzero((kept == Label.URETER).any(axis=(1, 2)))
    pad_z = margin_voxels(margin_mm, case.labels.spacing)[0]
    z_lo = max(0, min(kidney_box[0].start, int(ureter_slices[0]) - pad_z))
    z_hi = min(labels.shape[0], max(kidney_box[0].stop, int(ureter_slices[-1]) + 1 + pad_z))
    box = (slice(z_lo, z_hi), kidney_box[1], kidney_box[2])
    template = case.labels.with_array(kept, dict(NAMES)).crop(box)
    template.array = np.ascontiguousarray(template.array)
    return template, case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seed", type=int, default=7, help="phantom seed (not the demo's 0)")
    parser.add_argument("--spacing", type=float, default=2.0, help="isotropic template spacing, mm")
    parser.add_argument("--margin", type=float, default=30.0, help="context kept around the kidneys, mm")
    parser.add_argument("--out", type=Path, default=default_template_path())
    args = parser.parse_args()
    template, _ = build_template(args.seed, args.spacing, args.margin)
    path = write_volume(template, args.out)
    counts = {NAMES[v]: int((template.array == v).sum()) for v in TEMPLATE_STRUCTURES}
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB): size {template.size} spacing {template.spacing} "
          f"origin {tuple(round(o, 1) for o in template.origin)} voxels {counts}")


if __name__ == "__main__":
    main()
