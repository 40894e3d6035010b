#!/usr/bin/env python
"""Train the small demo nnU-Net v2 models on the synthetic CT phantom (`make models`).

For every demo task this script
1. generates phantom cases (`medseg.phantom.make_phantom`) and writes an nnU-Net raw dataset
   (imagesTr/case_XXX_0000.nii.gz, labelsTr, dataset.json with channel_names and labels),
2. plans and preprocesses it with nnU-Net's own `nnUNetv2_plan_and_preprocess` (3d_fullres), then
   shrinks the planned network (fewer features, small patch) so it trains in minutes on a CPU,
3. trains it with nnU-Net's own trainer (`DemoTrainer`: nnU-Net's `nnUNetTrainerAdam` variant
   with a short schedule, lr 3e-3 and more foreground patches) on fold 0,
4. copies dataset.json, plans.json and fold_0/checkpoint_final.pth into
   `models/demo/DatasetNNN_<Task>/<StockTrainer>__nnUNetPlans__3d_fullres/`, stripped to what
   inference reads (network weights, init args, trainer name, mirroring axes; no optimizer state),
5. evaluates Dice on held-out phantom seeds through the service's own TaskPredictor.

Why the checkpoint records a stock trainer name (`nnUNetTrainer`, or `nnUNetTrainerNoMirroring`
for the whole-body parts with left/right classes, as TotalSegmentator's): nnU-Net's predictor
rebuilds the network by looking the trainer class up by name inside the installed nnunetv2
package. DemoTrainer only changes the optimiser, schedule and foreground sampling, never the
architecture, so the stock trainer builds the identical network and the committed folders load in
any stock nnunetv2 install (nnUNetv2_predict_from_modelfolder included). The real trainer and
schedule are kept in `demo_training.json` next to plans.json.

Usage: .venv/bin/python scripts/train_demo_models.py [--tasks vessels,tumor] [--cases 24] ...
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from medseg.labels import NAMES as CONVENTION  # noqa: E402
from medseg.labels import PHASES  # noqa: E402
from medseg.metrics import dice  # noqa: E402
from medseg.volumes import write_volume  # noqa: E402

CONV_BY_NAME = {n: v for v, n in CONVENTION.items()}

# TotalSegmentator class names split into two part models (as TotalSegmentator's `total` is split
# into several parts); the registry merges them back into TotalSegmentator's numbering.
TOTAL_PART1 = ("spleen", "kidney_right", "kidney_left", "liver")

# task -> dataset id, folder name, input phases (channel order), output structures of the convention
TASKS = {
    # spacing: the model's training (target) spacing, mm; the training cases vary around it (see
    # `acquisition`). The thin ureter trains at 1.5 mm (`ureter_fine`): at 3 mm a 5-6 mm ureter
    # is two voxels wide and its Dice at finer scans falls to ~0.7.
    # epochs, cases: the schedules the committed demo models were trained with (25 iterations each;
    # 20 training cases unless given). tumor trains longer: its small label needs it for the
    # full-image run to be free of false positives far from the kidneys.
    # varied: whether the committed model was trained on varied cases (`acquisition`); the other
    # committed models were trained before it existed and meet their targets.
    # left/right classes: no mirroring augmentation (as TotalSegmentator's NoMirroring trainers)
    "total_part1": dict(id=901, name="TotalPart1", spacing=4.0, epochs=90, mirror=False, varied=False),
    "total_part2": dict(id=902, name="TotalPart2", spacing=4.0, epochs=90, mirror=False, varied=False),
    "vessels": dict(id=903, name="Vessels", spacing=3.0, epochs=12, phases=["arterial", "portal"],
                    structures=["kidney", "artery", "vein"], varied=False),
    "ureter": dict(id=904, name="Ureter", spacing=3.0, epochs=40, phases=["delayed"], structures=["kidney", "ureter"],
                   varied=False),
    # The ureter (5-6 mm across) at 1.5 mm; the `ureter` task takes only its ureter label (the
    # kidney from the 3 mm model): with varied contrast, 60 epochs leave some spleen, liver and
    # bladder labelled kidney in the delayed phase (kidney Dice ~0.78 on dev seeds).
    "ureter_fine": dict(id=906, name="UreterFine", spacing=1.5, epochs=60, cases=24, phases=["delayed"],
                        structures=["kidney", "ureter"]),
    # A 1.5 mm tumor model on varied cases with this schedule was worse on dev seeds 10004,
    # 10011, 10012, 10017 (kidney 0.89-0.92, tumor 0.36-0.83) than the 3 mm one (kidney 0.98-0.99,
    # tumor 0.84-0.97): the 3 mm model stays.
    "tumor": dict(id=905, name="Tumor", spacing=3.0, epochs=90, cases=30, phases=["portal"],
                  structures=["kidney", "tumor"], varied=False),
}


def stock_trainer(task: str) -> str:
    """The stock nnU-Net trainer that builds the same network and inference settings."""
    return "nnUNetTrainer" if TASKS[task].get("mirror", True) else "nnUNetTrainerNoMirroring"


def trainer_folder(task: str) -> str:
    return f"{stock_trainer(task)}__nnUNetPlans__3d_fullres"


def dataset_folder_name(task: str) -> str:
    t = TASKS[task]
    return f"Dataset{t['id']}_{t['name']}"


# ----------------------------------------------------------------------------- phantom -> labels

def task_labels(task: str, organ_table: dict[int, str]) -> dict[str, int]:
    """The model's own consecutive label numbering (nnU-Net needs 0..K), name -> value."""
    if task == "total_part1":
        names = [n for n in TOTAL_PART1 if n in organ_table.values()]
    elif task == "total_part2":
        names = [n for v, n in sorted(organ_table.items()) if v != 0 and n not in TOTAL_PART1]
    else:
        names = TASKS[task]["structures"]
    return {"background": 0, **{n: i + 1 for i, n in enumerate(names)}}


def task_target(task: str, case, labels: dict[str, int]) -> np.ndarray:
    """The ground-truth mask in the model's numbering."""
    if task.startswith("total"):
        src = case.organs.array
        by_name = {n: v for v, n in case.organs.labels.items()}
        out = np.zeros(src.shape, np.uint8)
        for name, value in labels.items():
            if value:
                out[src == by_name[name]] = value
        return out
    conv = case.labels.array
    out = np.zeros(conv.shape, np.uint8)
    for name, value in labels.items():
        if value:
            out[conv == CONV_BY_NAME[name]] = value
    if "kidney" in labels and "tumor" not in labels:
        # Tasks without a tumor label see the tumor as part of the kidney it sits in.
        out[conv == CONV_BY_NAME["tumor"]] = labels["kidney"]
    return out


def task_phases(task: str, seed: int) -> list[str]:
    if task.startswith("total"):
        # Whole-body models should work on any phase (they also locate the kidneys for the
        # kidney tasks, whose reference phase differs): one random phase per case.
        return [PHASES[np.random.default_rng(seed + 7919).integers(3)]]
    return TASKS[task]["phases"]


# Whole-body field of view of the phantom (its default); the size follows from the spacing.
FOV_MM = (380.0, 380.0, 300.0)


# Training-case variety (`acquisition`): spacing as multiples of the model's, the rest as
# make_phantom's own arguments; recorded in demo_training.json.
VARIETY = {"inplane_spacing_x": (0.75, 1.25), "slice_spacing_x": (0.75, 1.6), "noise_hu": (6.0, 25.0),
           "contrast": (0.6, 1.4), "body_scale": (0.88, 1.12)}


def acquisition(seed: int, spacing: float) -> dict:
    """One training case's scan and patient, drawn from VARIETY: voxel spacing around the model's
    (nnU-Net resamples to the model's spacing), CT noise, contrast strength and timing, body size.
    Seeded by the case, so `make models` draws the same cases again."""
    rng = np.random.default_rng([seed, 0xAC9])
    draw = {name: rng.uniform(*bounds) for name, bounds in VARIETY.items()}  # in VARIETY's order
    inplane, slices = spacing * draw.pop("inplane_spacing_x"), spacing * draw.pop("slice_spacing_x")
    return {"spacing": (inplane, inplane, slices), **draw}


def task_varied(task: str) -> bool:
    return TASKS[task].get("varied", True)


def make_case(seed: int, spacing: float, varied: bool = False):
    """A phantom case over the whole-body field of view at `spacing` (isotropic), or, varied, at
    a drawn `acquisition` around it."""
    from medseg.phantom import make_phantom

    scan = acquisition(seed, spacing) if varied else {"spacing": (spacing,) * 3}
    size = tuple(int(round(f / s)) for f, s in zip(FOV_MM, scan["spacing"]))
    return make_phantom(size=size, seed=seed, fov_mm=FOV_MM, **scan)


# ----------------------------------------------------------------------------- nnU-Net steps

def write_raw_dataset(task: str, seeds: list[int], raw_root: Path, args, cases_cache: dict) -> Path:
    folder = raw_root / dataset_folder_name(task)
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    labels = None
    for seed in seeds:
        spacing, varied = TASKS[task]["spacing"], task_varied(task)
        key = (seed, spacing, varied)
        case = cases_cache[key] if key in cases_cache else cases_cache.setdefault(key, make_case(seed, spacing, varied))
        if labels is None:
            labels = task_labels(task, case.organs.labels)
        for c, phase in enumerate(task_phases(task, seed)):
            write_volume(case.phases[phase], folder / "imagesTr" / f"case_{seed:03d}_{c:04d}.nii.gz")
        ref = case.phases[task_phases(task, seed)[0]]
        write_volume(ref.with_array(task_target(task, case, labels)), folder / "labelsTr" / f"case_{seed:03d}.nii.gz")
    n_channels = len(task_phases(task, seeds[0]))
    dataset = {
        # CT normalisation (global HU percentiles) for every phase
        "channel_names": {str(i): "CT" for i in range(n_channels)},
        "labels": labels,
        "numTraining": len(seeds),
        "file_ending": ".nii.gz",
        "name": dataset_folder_name(task),
        "description": f"medseg demo model for `{task}` trained on the synthetic CT phantom "
                       f"(phases: {', '.join(TASKS[task].get('phases', ['any']))})",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder


def shrink_plans(plans_file: Path, args) -> None:
    """Smaller network and patch than nnU-Net's GPU-sized defaults, so CPU training takes minutes.
    Preprocessing only depends on spacing and normalisation, which are left as planned."""
    plans = json.loads(plans_file.read_text())
    cfg = plans["configurations"]["3d_fullres"]
    arch = cfg["architecture"]["arch_kwargs"]
    n = args.stages
    cfg["patch_size"] = [args.patch] * 3
    cfg["batch_size"] = args.batch
    arch["n_stages"] = n
    arch["features_per_stage"] = [min(args.features * 2 ** i, 320) for i in range(n)]
    arch["kernel_sizes"] = [[3, 3, 3]] * n
    arch["strides"] = [[1, 1, 1]] + [[2, 2, 2]] * (n - 1)
    arch["n_conv_per_stage"] = [2] * n
    arch["n_conv_per_stage_decoder"] = [2] * (n - 1)
    plans_file.write_text(json.dumps(plans, indent=2))


def task_epochs(task: str, args) -> int:
    return args.epochs if args.epochs is not None else TASKS[task].get("epochs", 12)


def task_cases(task: str, args) -> int:
    return args.cases if args.cases is not None else TASKS[task].get("cases", 20)


def make_demo_trainer(epochs: int, iterations: int, mirror: bool):
    import torch
    from nnunetv2.training.nnUNetTrainer.variants.optimizer.nnUNetTrainerAdam import nnUNetTrainerAdam

    class DemoTrainer(nnUNetTrainerAdam):
        """nnU-Net's AdamW trainer variant with a short schedule; architecture, loss and augmentation
        unchanged. SGD at nnU-Net's 1e-2 still predicts only background after a few hundred
        iterations; AdamW at 3e-3 with more foreground patches gets there within the budget."""

        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cpu")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.initial_lr = 3e-3
            self.oversample_foreground_percent = 0.5
            self.num_epochs = epochs
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = 4
            self.save_every = 10 ** 6  # only checkpoint_final

        def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
            rotation, dummy_2d, initial_patch_size, mirror_axes = \
                super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
            if not mirror:  # exactly what nnUNetTrainerNoMirroring does
                mirror_axes = None
                self.inference_allowed_mirroring_axes = None
            return rotation, dummy_2d, initial_patch_size, mirror_axes

    return DemoTrainer


def train(task: str, env_paths: dict, args) -> Path:
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: F401

    pre = Path(env_paths["nnUNet_preprocessed"]) / dataset_folder_name(task)
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((pre / "dataset.json").read_text())
    plans["continue_training"] = False  # what run_training.py sets for a fresh run
    trainer_cls = make_demo_trainer(task_epochs(task, args), args.iterations, TASKS[task].get("mirror", True))
    trainer = trainer_cls(plans=plans, configuration="3d_fullres", fold=0, dataset_json=dataset_json,
                          device=torch.device("cpu"))
    trainer.run_training()
    return Path(trainer.output_folder)


def _plain(value):
    """numpy scalars/lists -> JSON-able Python values."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return None if value is None else float(value)


def slim_export(task: str, fold_folder: Path, out_root: Path, args, seconds: float) -> Path:
    import torch

    src_base = fold_folder.parent
    dst = out_root / dataset_folder_name(task) / trainer_folder(task)
    if dst.exists():
        shutil.rmtree(dst)
    (dst / "fold_0").mkdir(parents=True)
    for name in ("dataset.json", "plans.json"):
        shutil.copy(src_base / name, dst / name)
    ckpt = torch.load(fold_folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    slim = {
        "network_weights": ckpt["network_weights"],
        "init_args": ckpt["init_args"],
        "trainer_name": stock_trainer(task),  # same architecture; see module docstring
        "inference_allowed_mirroring_axes": ckpt["inference_allowed_mirroring_axes"],
        "current_epoch": ckpt["current_epoch"],
    }
    torch.save(slim, dst / "fold_0" / "checkpoint_final.pth")
    log = ckpt.get("logging", {})
    record = {
        "trained_with": "DemoTrainer (scripts/train_demo_models.py): nnUNetTrainerAdam, lr 3e-3, "
                        "foreground oversampling 0.5, short schedule",
        "epochs": task_epochs(task, args), "iterations_per_epoch": args.iterations, "training_cases": task_cases(task, args),
        "phantom": {"fov_mm": FOV_MM, "spacing_mm": TASKS[task]["spacing"], "seeds": f"0..{task_cases(task, args) - 1}",
                    "varied": task_varied(task) and VARIETY},
        "network": {"stages": args.stages, "base_features": args.features, "patch": args.patch, "batch": args.batch},
        "train_seconds_cpu": round(seconds, 1),
        "final_train_loss": _plain((log.get("train_losses") or [None])[-1]),
        "final_val_pseudo_dice": _plain((log.get("dice_per_class_or_region") or [None])[-1]),
    }
    (dst / "demo_training.json").write_text(json.dumps(record, indent=2))
    return dst


# ----------------------------------------------------------------------------- evaluation


def evaluate(seeds: list[int], args, registry_file: Path | None = None, tasks: list[str] | None = None) -> dict:
    """Dice per task and label on held-out phantom seeds, through the service's TaskPredictor."""
    import torch

    from nnunet_svc.predict import TaskPredictor
    from nnunet_svc.registry import load_registry

    registry = load_registry(registry_file)
    if tasks:
        registry = {t: registry[t] for t in tasks}
    results: dict[str, dict[str, list[float]]] = {}
    predictors = {name: TaskPredictor(spec, torch.device("cpu")) for name, spec in registry.items()}
    for seed in seeds:
        case = make_case(seed, args.eval_spacing)
        for name, pred in predictors.items():
            mask = pred.predict({p: case.phases[p] for p in pred.spec.phases}, kidney_crop=False)
            for value, label in pred.spec.labels.items():
                if value == 0:
                    continue
                if name == "total":
                    by_name = {n: v for v, n in case.organs.labels.items()}
                    truth = case.organs.array == by_name[label]
                else:
                    truth = task_target(name, case, {"background": 0, **{
                        n: CONV_BY_NAME[n] for n in pred.spec.labels.values() if n != "background"}}) == value
                results.setdefault(name, {}).setdefault(label, []).append(dice(mask.array == value, truth))
    return {t: {l: float(np.mean(v)) for l, v in d.items()} for t, d in results.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of " + ",".join(TASKS))
    ap.add_argument("--cases", type=int, default=None,
                    help="training cases, phantom seeds 0..N-1 (default: per task, as the committed models were trained)")
    ap.add_argument("--eval-spacing", type=float, default=3.0, help="held-out phantom spacing (mm)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs (default: per task, as the committed models were trained)")
    ap.add_argument("--iterations", type=int, default=25, help="training iterations per epoch")
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--features", type=int, default=8, help="features of the first stage (doubling per stage)")
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/medseg_nnunet_work"))
    ap.add_argument("--out", type=Path, default=REPO / "models" / "demo")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-seeds", type=int, nargs="*", default=[1000, 1001, 1002])
    ap.add_argument("--skip-train", action="store_true", help="only evaluate the registry's models")
    ap.add_argument("--eval-tasks", default="", help="registry tasks to evaluate (default: all)")
    args = ap.parse_args()

    env_paths = {k: str(args.work / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for p in env_paths.values():
        Path(p).mkdir(parents=True, exist_ok=True)
    os.environ.update(env_paths)
    os.environ.setdefault("nnUNet_n_proc_DA", "1")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        sys.exit(f"unknown task(s) {unknown}; known: {list(TASKS)}")

    if not args.skip_train:
        cases_cache: dict = {}
        for task in tasks:
            seeds = list(range(task_cases(task, args)))
            t0 = time.time()
            print(f"[{task}] writing raw dataset ({len(seeds)} cases)", flush=True)
            write_raw_dataset(task, seeds, Path(env_paths["nnUNet_raw"]), args, cases_cache)
            print(f"[{task}] nnUNetv2_plan_and_preprocess", flush=True)
            # the target spacing is the task's, not the median of the varied cases
            subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"), "-d",
                            str(TASKS[task]["id"]), "-c", "3d_fullres", "-np", str(args.threads),
                            "-overwrite_target_spacing", *[str(TASKS[task]["spacing"])] * 3,
                            "--verify_dataset_integrity"], check=True, env=os.environ.copy(),
                           stdout=subprocess.DEVNULL)
            shrink_plans(Path(env_paths["nnUNet_preprocessed"]) / dataset_folder_name(task) / "nnUNetPlans.json", args)
            print(f"[{task}] training {task_epochs(task, args)} x {args.iterations} iterations", flush=True)
            t1 = time.time()
            fold_folder = train(task, env_paths, args)
            dst = slim_export(task, fold_folder, args.out, args, time.time() - t1)
            print(f"[{task}] exported {dst} ({time.time() - t0:.0f} s)", flush=True)

    if args.eval_seeds:
        eval_tasks = [t for t in args.eval_tasks.split(",") if t] if args.eval_tasks else None
        scores = evaluate(args.eval_seeds, args, tasks=eval_tasks)
        print(json.dumps(scores, indent=2))
        record_file = args.out / "demo_eval.json"
        record = json.loads(record_file.read_text()) if record_file.is_file() else {}
        record.setdefault("dice", {}).update(scores)
        record.update({"seeds": args.eval_seeds, "spacing_mm": args.eval_spacing, "kidney_crop": False,
                       "fov_mm": FOV_MM})
        record_file.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
