#!/usr/bin/env python
"""Inference speed modes, torch threads and the kidney crop, at a real scan's size.

All measured in this one run with the demo models of models/registry.yaml, in process (the
service runs the same TaskPredictor; bench_nnunet.py measures the service and the CLI):
1. INFERENCE_MODE_FAST vs ACCURATE per task on a 512 x 512 x 300 phantom (0.74 x 0.74 x 1.0 mm):
   warm predict time ratio, and the agreement of the two masks;
2. the Dice change fast - accurate against the phantom's truth on held-out seeds (>= 20000, never
   used for training or tuning) at 3 mm, min / median over seeds per structure;
3. torch intra-op threads: one thread vs every core, same prediction;
4. the kidney crop on a longer field of view (512 x 512 x 600, chest-abdomen-pelvis length):
   full image vs crop (the 4 mm locator pass included).

Usage: .venv/bin/python bench/bench_inference.py [--seeds 3] [--repeats 2] [--size 512 512 300]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from ratios import record  # noqa: E402  (bench/, the script's folder)

from medseg.metrics import dice  # noqa: E402

HELD_OUT_SEED = 20000  # the evaluation seeds of scripts/eval.py: never used for training or tuning
FOV_XY_MM = 380.0


def clinical_case(size, seed: int):
    """A real scan's grid: 512 x 512 in-plane over 380 mm, 1 mm slices."""
    from medseg.phantom import make_phantom

    spacing = (FOV_XY_MM / size[0], FOV_XY_MM / size[1], 1.0)
    return make_phantom(size=tuple(size), spacing=spacing, seed=seed)


def timed(predictor, phases, repeats: int, **kw) -> tuple[float, object]:
    times, mask = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        mask = predictor.predict(phases, **kw)
        times.append(time.perf_counter() - start)
    return statistics.median(times), mask


def structures(spec) -> dict[int, str]:
    return {v: n for v, n in spec.labels.items() if v}


def modes_at_clinical_size(predictors, registry, size, repeats: int) -> None:
    case = clinical_case(size, HELD_OUT_SEED)
    print(f"1. fast vs accurate on {'x'.join(map(str, size))} (seed {HELD_OUT_SEED}), warm, median of {repeats}:")
    total_accurate = total_fast = 0.0
    for name, p in predictors.items():
        phases = {ph: case.phases[ph] for ph in registry[name].phases}
        accurate_s, accurate = timed(p, phases, repeats)
        fast_s, fast = timed(p, phases, repeats, mode="fast")
        total_accurate, total_fast = total_accurate + accurate_s, total_fast + fast_s
        agree = {n: dice(accurate.array == v, fast.array == v) for v, n in structures(registry[name]).items()
                 if (accurate.array == v).any()}
        low = min(agree, key=agree.get)
        print(f"   {name:8s} accurate {accurate_s:6.2f} s  fast {fast_s:6.2f} s  ratio {accurate_s / fast_s:4.2f}x  "
              f"fast-vs-accurate Dice min {agree[low]:.3f} ({low})")
        record("inference", f"{name} {'x'.join(map(str, size))}: accurate / fast", accurate_s / fast_s,
               note=f"warm predict; masks agree Dice >= {agree[low]:.3f}")
    record("inference", f"four tasks {'x'.join(map(str, size))}: accurate / fast", total_accurate / total_fast,
           note="sum of the four warm predictions")


def dice_change_on_held_out_seeds(predictors, registry, seeds: int) -> None:
    from medseg.phantom import make_phantom

    kidney_tasks = {"tumor": ("kidney", "tumor"), "vessels": ("artery", "vein"), "ureter": ("ureter",)}
    change: dict[str, list[float]] = {}
    accurate_dice: dict[str, list[float]] = {}
    for seed in range(HELD_OUT_SEED, HELD_OUT_SEED + seeds):
        case = make_phantom(size=(127, 127, 100), spacing=(3.0, 3.0, 3.0), seed=seed)
        for task, names in kidney_tasks.items():
            phases = {ph: case.phases[ph] for ph in registry[task].phases}
            accurate = predictors[task].predict(phases)
            fast = predictors[task].predict(phases, mode="fast")
            for name in names:
                value = next(v for v, n in registry[task].labels.items() if n == name)
                truth = case.labels.array == value
                d_acc, d_fast = dice(accurate.array == value, truth), dice(fast.array == value, truth)
                accurate_dice.setdefault(name, []).append(d_acc)
                change.setdefault(name, []).append(d_fast - d_acc)
    print(f"2. Dice vs truth, fast - accurate, held-out seeds {HELD_OUT_SEED}..{HELD_OUT_SEED + seeds - 1} at 3 mm:")
    for name, values in change.items():
        print(f"   {name:7s} accurate Dice min {min(accurate_dice[name]):.3f} median "
              f"{statistics.median(accurate_dice[name]):.3f} | change min {min(values):+.4f} "
              f"median {statistics.median(values):+.4f}")
        record("inference", f"{name}: Dice change fast - accurate (min over {seeds} held-out seeds)", min(values),
               unit="Dice", note=f"median {statistics.median(values):+.4f}; accurate median "
                                 f"{statistics.median(accurate_dice[name]):.3f}")


def threads(predictors, registry, size, repeats: int) -> None:
    import os

    import torch

    case = clinical_case(size, HELD_OUT_SEED)
    phases = {"portal": case.phases["portal"]}
    cores = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    seconds = {}
    for n in sorted({1, cores}):
        torch.set_num_threads(n)
        seconds[n], _ = timed(predictors["tumor"], phases, repeats)
    torch.set_num_threads(before)
    print(f"3. torch threads, tumor {'x'.join(map(str, size))}: "
          + ", ".join(f"{n} thread(s) {s:.2f} s" for n, s in seconds.items()))
    if cores > 1:
        record("inference", f"tumor {'x'.join(map(str, size))}: 1 torch thread / {cores}", seconds[1] / seconds[cores],
               note="intra-op threads (nnU-Net caps them at 8)")


def crop_on_a_long_scan(predictors, repeats: int) -> None:
    size = (512, 512, 600)
    case = clinical_case(size, HELD_OUT_SEED + 1)
    phases = {"portal": case.phases["portal"]}
    full_s, full = timed(predictors["tumor"], phases, repeats, kidney_crop=False)
    crop_s, crop = timed(predictors["tumor"], phases, repeats, kidney_crop=True)
    # SegmentCase's way: the kidney box from the `total` mask the case computes anyway.
    hint = predictors["total"].predict(phases)
    hinted_s, hinted = timed(predictors["tumor"], phases, repeats, kidney_crop=True, kidney_hint=hint)
    agree = dice(full.array == 2, crop.array == 2)
    print(f"4. kidney crop on {'x'.join(map(str, size))} (600 mm field of view): full image {full_s:.2f} s, "
          f"crop incl. the locator pass {crop_s:.2f} s ({full_s / crop_s:.2f}x), crop from the total mask "
          f"{hinted_s:.2f} s ({full_s / hinted_s:.2f}x); tumor Dice crop vs full {agree:.3f}, "
          f"hinted vs full {dice(full.array == 2, hinted.array == 2):.3f}")
    record("inference", "tumor 512x512x600: full image / kidney crop (locator)", full_s / crop_s,
           note=f"the 4 mm locator pass included; tumor Dice crop vs full {agree:.3f}")
    record("inference", "tumor 512x512x600: full image / kidney crop (from total)", full_s / hinted_s,
           note="as SegmentCase: the kidney box from the total mask")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=3, default=(512, 512, 300), metavar=("X", "Y", "Z"))
    parser.add_argument("--seeds", type=int, default=3, help="held-out seeds for the Dice change")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-long", action="store_true", help="skip the 512 x 512 x 600 crop comparison")
    parser.add_argument("--only-long", action="store_true", help="only the 512 x 512 x 600 crop comparison")
    args = parser.parse_args()

    import torch

    from nnunet_svc.predict import TaskPredictor
    from nnunet_svc.registry import load_registry

    registry = load_registry()
    start = time.perf_counter()
    predictors = {name: TaskPredictor(spec, torch.device("cpu")) for name, spec in registry.items()}
    for p in predictors.values():
        p.warm_up()
    print(f"loaded and warmed {len(predictors)} tasks in {time.perf_counter() - start:.1f} s; "
          f"torch threads {torch.get_num_threads()}; fast = "
          + ", ".join(f"{n}: step {s.fast.tile_step_size}, folds <= {s.fast.max_folds or 'all'}"
                      for n, s in registry.items()))
    if not args.only_long:
        modes_at_clinical_size(predictors, registry, args.size, args.repeats)
        dice_change_on_held_out_seeds(predictors, registry, args.seeds)
        threads(predictors, registry, args.size, args.repeats)
    if not args.skip_long:
        crop_on_a_long_scan(predictors, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
