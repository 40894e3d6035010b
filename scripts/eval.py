#!/usr/bin/env python
"""Evaluation on phantom cases never used for training or tuning, through the real services.

The rule: evaluation uses phantom seeds 20000 and up, here and in bench/bench_inference.py only.
Everything else stays below: training (scripts/train_demo_models.py), the tests and the
benches' defaults, and tuning (seeds 10000-19999 are the development set unseen by training:
e.g. AddFat's default reach was chosen on 10000-10003).

For every resolution (3 mm, 1.5 mm, and a real scan's 512 x 512 x 300 at 0.74 x 0.74 x 1.0 mm)
and seed, on a temporary stack (Envoy + the four services, as `make up` runs them):
  * chain: one case job by reference (segment -> repair -> fat -> speck cleanup -> mesh, measure),
    its combined mask against the phantom's truth;
  * each post-processing algorithm on ground-truth inputs, so its own error shows apart from
    the segmentation's:
      fat      AddFat given the true kidney/tumor/vessel mask (fat removed), the true organs, the CT;
      repair   ConnectVessels + ConnectUreters on the true mask cut at random places (2-8 mm gaps);
      template SampleFromTemplate given the true kidney + tumor only.
Per structure: Dice, HD95 (mm), volume error, pieces vs the truth's; min / median / max over seeds.
Writes a JSON file with every case's figures and a Markdown report (docs/evaluation.md by default).

Usage: .venv/bin/python scripts/eval.py [--seeds 20] [--resolutions 3mm 1.5mm 0.74mm]
                                        [--json docs/evaluation.json] [--markdown docs/evaluation.md]
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FIRST_HELD_OUT_SEED = 20000
# The phantom's body (380 x 380 x 300 mm) on each grid; spacing = field of view / size.
RESOLUTIONS = {"3mm": (127, 127, 100), "1.5mm": (253, 253, 200), "0.74mm": (512, 512, 300)}
CHAIN_STRUCTURES = ("kidney", "tumor", "artery", "vein", "ureter", "fat")
# Issue targets (min over seeds): Dice per structure through the services; fat on true inputs.
DICE_TARGETS = {"chain": {"kidney": 0.93, "tumor": 0.80, "artery": 0.85, "vein": 0.85, "ureter": 0.80},
                "fat": {"fat": 0.92}, "repair": {"artery": 0.90, "vein": 0.90, "ureter": 0.90}}
FAT_VOLUME_TOLERANCE = 0.08
PIECES_MATCH_TARGET = 0.90  # share of cases whose piece count equals the truth's
PIECE_STRUCTURES = ("kidney", "artery", "vein", "ureter")


def label_value(name: str) -> int:
    from medseg.labels import NAMES

    return {n: v for v, n in NAMES.items()}[name]


def per_structure(pred, truth, names) -> dict:
    from medseg.metrics import compare

    return {n: compare(pred.array == label_value(n), truth.array == label_value(n), truth.spacing) for n in names}


def random_cuts(rng: np.random.Generator) -> dict:
    """Where to cut the phantom's tubes this time: one or two gaps of 2-8 mm per tube."""
    from tests.repair_cases import PHANTOM_CUTS

    plan = {}
    for tube in PHANTOM_CUTS:
        n = int(rng.integers(1, 3))
        fractions = sorted(rng.uniform(0.2, 0.8, size=n))
        plan[tube] = [(float(f), float(rng.uniform(2.0, 8.0))) for f in fractions]
    return plan


def evaluate_case(stack, cases, client, resolution: str, seed: int, parts: set[str]) -> dict:
    from medseg.case_jobs import state_name
    from medseg.client import Ref
    from medseg.metrics import pieces
    from medseg.phantom import make_phantom
    from medseg.volumes import Volume, read_volume, write_volume
    from tests.repair_cases import cut_phantom

    size = RESOLUTIONS[resolution]
    root = stack.data_root
    folder = f"eval/{resolution}/{seed}"
    case = make_phantom(size=size, seed=seed)
    case.write(root / folder)
    truth = case.labels
    out: dict = {"seed": seed, "resolution": resolution, "size": list(size),
                 "spacing_mm": [round(s, 3) for s in truth.spacing]}
    if "chain" in parts:
        start = time.perf_counter()
        job = cases.submit(**{p: Ref(f"{folder}/{p}.nii.gz") for p in ("arterial", "portal", "delayed")},
                           display_name=f"eval {resolution} {seed}")
        job = cases.wait(job.job_id)
        if state_name(job.state) != "SUCCEEDED":
            raise RuntimeError(f"case job for seed {seed} at {resolution} ended {state_name(job.state)}: "
                               f"{job.error.message}")
        mask = read_volume(root / "cases" / job.job_id / "mask.nii.gz")
        out["chain"] = per_structure(mask, truth, CHAIN_STRUCTURES)
        # No tumor piece outside the kidneys: a predicted tumor piece with no voxel within 2 voxels
        # of the true kidney + tumor; voxels of the pieces that are there but reach beyond them, apart.
        from scipy import ndimage

        from medseg.metrics import CONNECTIVITY

        organ = ndimage.binary_dilation(np.isin(truth.array, [label_value("kidney"), label_value("tumor")]),
                                        iterations=2)
        tumor_pieces, count = ndimage.label(mask.array == label_value("tumor"), CONNECTIVITY)
        inside = set(np.unique(tumor_pieces[organ & (tumor_pieces > 0)]).tolist())
        out["chain_tumor_pieces_outside_kidneys"] = sum(1 for i in range(1, count + 1) if i not in inside)
        out["chain_tumor_voxels_beyond_kidneys"] = int(((tumor_pieces > 0) & ~organ).sum())
        out["chain_seconds"] = round(time.perf_counter() - start, 1)
        cases.delete(job.job_id)
    if "fat" in parts:
        no_fat = truth.array.copy()
        no_fat[no_fat == label_value("fat")] = 0
        write_volume(truth.with_array(no_fat), root / folder / "truth_no_fat.nii.gz")
        result = client.add_fat(Ref(f"{folder}/truth_no_fat.nii.gz"), Ref(f"{folder}/organs.nii.gz"),
                                Ref(f"{folder}/portal.nii.gz"), output=f"{folder}/fat_on_truth.nii.gz")
        del result
        out["fat"] = per_structure(read_volume(root / folder / "fat_on_truth.nii.gz"), truth, ("fat",))
    if "repair" in parts:
        cut = cut_phantom(size=size, seed=seed, cuts=random_cuts(np.random.default_rng(seed)))
        write_volume(cut.cut, root / folder / "cut.nii.gz")
        client.connect_vessels(Ref(f"{folder}/cut.nii.gz"), output=f"{folder}/cut_vessels.nii.gz")
        client.connect_ureters(Ref(f"{folder}/cut_vessels.nii.gz"), output=f"{folder}/repaired.nii.gz")
        repaired = read_volume(root / folder / "repaired.nii.gz")
        out["repair"] = per_structure(repaired, cut.truth, ("artery", "vein", "ureter"))
        for name in ("artery", "vein", "ureter"):
            out["repair"][name]["cut_pieces"] = pieces(cut.cut.array == label_value(name))
        # Each bridge (a 26-connected piece of added voxels) against its own label's true tube,
        # grown by 2 voxels: a wrong join runs mostly outside it (between tubes that the truth does
        # not connect, or off the tube); a right join at a bend can stick out a little, counted apart.
        from scipy import ndimage

        from medseg.metrics import CONNECTIVITY

        added = (repaired.array != cut.cut.array) & (repaired.array > 0)
        bridges, count = ndimage.label(added, CONNECTIVITY)
        near = {v: ndimage.binary_dilation(cut.truth.array == v, iterations=2)
                for v in np.unique(repaired.array[added]).tolist()}
        wrong_joins = off_tube = 0
        for index, box in enumerate(ndimage.find_objects(bridges), start=1):
            voxels = bridges[box] == index
            value = int(repaired.array[box][voxels][0])
            outside = int((voxels & ~near[value][box]).sum())
            off_tube += outside
            wrong_joins += int(outside > int(voxels.sum()) / 2)
        out["repair_wrong_joins"] = wrong_joins
        out["repair_off_tube_voxels"] = off_tube
        out["repair_gaps"] = len(cut.gaps)
    if "template" in parts:
        kidney_tumor = np.where(np.isin(truth.array, [label_value("kidney"), label_value("tumor")]), truth.array, 0)
        write_volume(Volume(kidney_tumor.astype(np.uint8), truth.spacing, truth.origin, truth.direction),
                     root / folder / "kidney_tumor.nii.gz")
        client.sample_from_template(Ref(f"{folder}/kidney_tumor.nii.gz"), output=f"{folder}/template.nii.gz")
        # what the template adds (no fat: AddFat makes that, see models/templates/README.md)
        out["template"] = per_structure(read_volume(root / folder / "template.nii.gz"), truth,
                                        ("artery", "vein", "ureter"))
    return out


# ------------------------------------------------------------------------------------ summary

def _finite(values):
    return [v for v in values if v is not None and math.isfinite(v)]


def summarise(results: list[dict]) -> dict:
    """min / median / max per resolution, part, structure and metric; piece-count agreement."""
    summary: dict = {}
    for r in results:
        for part in ("chain", "fat", "repair", "template"):
            for name, metrics in r.get(part, {}).items():
                slot = summary.setdefault(r["resolution"], {}).setdefault(part, {}).setdefault(name, {})
                for metric, value in metrics.items():
                    slot.setdefault(metric, []).append(value)
                slot.setdefault("pieces_match", []).append(metrics["pieces"] == metrics["true_pieces"])
    out: dict = {}
    for res, parts in summary.items():
        for part, structures in parts.items():
            for name, metrics in structures.items():
                row = {}
                for metric in ("dice", "hd95_mm", "volume_error"):
                    vals = _finite(metrics[metric])
                    infinite = len(metrics[metric]) - len(vals)
                    row[metric] = {"min": min(vals) if vals else None, "median": statistics.median(vals) if vals else None,
                                   "max": max(vals) if vals else None, "not_finite": infinite}
                row["pieces_match"] = sum(metrics["pieces_match"]) / len(metrics["pieces_match"])
                row["cases"] = len(metrics["dice"])
                out.setdefault(res, {}).setdefault(part, {})[name] = row
    for res in out:
        tumor_out = [r.get("chain_tumor_pieces_outside_kidneys", 0) for r in results if r["resolution"] == res]
        wrong = [r.get("repair_wrong_joins", 0) for r in results if r["resolution"] == res]
        off_tube = [r.get("repair_off_tube_voxels", 0) for r in results if r["resolution"] == res]
        out[res]["checks"] = {"cases_with_tumor_outside_kidneys": sum(v > 0 for v in tumor_out),
                              "cases_with_wrong_joins": sum(v > 0 for v in wrong),
                              "cases_with_bridge_voxels_off_the_tube": sum(v > 0 for v in off_tube),
                              "bridge_voxels_off_the_tube_max": max(off_tube, default=0)}
    return out


def targets(summary: dict) -> list[dict]:
    """Each issue target against the measured min (or share), per resolution."""
    rows = []
    for res, parts in summary.items():
        for part, wanted in DICE_TARGETS.items():
            for name, minimum in wanted.items():
                row = parts.get(part, {}).get(name)
                if row is None:
                    continue
                got = row["dice"]["min"]
                rows.append({"resolution": res, "what": f"{part} {name} Dice min", "target": f">= {minimum}",
                             "measured": got, "met": got is not None and got >= minimum})
        fat = parts.get("fat", {}).get("fat")
        if fat:
            worst = max(abs(fat["volume_error"]["min"]), abs(fat["volume_error"]["max"]))
            rows.append({"resolution": res, "what": "fat on true inputs, |volume error| max",
                         "target": f"<= {FAT_VOLUME_TOLERANCE:.0%}", "measured": worst,
                         "met": worst <= FAT_VOLUME_TOLERANCE})
        chain = parts.get("chain", {})
        for name in PIECE_STRUCTURES:
            if name in chain:
                share = chain[name]["pieces_match"]
                rows.append({"resolution": res, "what": f"chain {name} pieces = truth's (share of cases)",
                             "target": f">= {PIECES_MATCH_TARGET:.0%}", "measured": share,
                             "met": share >= PIECES_MATCH_TARGET})
        checks = parts["checks"]
        if "chain" in parts:
            n = checks["cases_with_tumor_outside_kidneys"]
            rows.append({"resolution": res, "what": "cases with a tumor piece outside the kidneys", "target": "0",
                         "measured": n, "met": n == 0})
        if "repair" in parts:
            n = checks["cases_with_wrong_joins"]
            rows.append({"resolution": res, "what": "repair: cases with a wrong join (a bridge mostly off its true tube)",
                         "target": "0", "measured": n, "met": n == 0})
    return rows


def _fmt(value, metric: str) -> str:
    if value is None:
        return "-"
    if metric == "volume_error":
        return f"{100 * value:+.1f}%"
    if metric == "hd95_mm":
        return f"{value:.1f}"
    return f"{value:.3f}"


def markdown(summary: dict, target_rows: list[dict], meta: dict) -> str:
    lines = ["# Evaluation on held-out phantom seeds", "",
             "Generated by `scripts/eval.py` (`make eval`); do not edit by hand. Seeds "
             f"{meta['seeds'][0]}..{meta['seeds'][-1]} (per resolution: "
             + ", ".join(f"{r} {n}" for r, n in meta["seeds_per_resolution"].items()) + "; the rule: "
             f"seeds >= {FIRST_HELD_OUT_SEED} are never used for training or tuning), demo models of "
             f"models/registry.yaml, through Envoy and the real services. Machine: {meta['machine']}; "
             f"{meta['seconds']:.0f} s. Every figure is min / median / max over seeds; HD95 in mm; "
             "volume error = (predicted - true) / true; pieces = share of cases whose piece count "
             "(26-connected) equals the truth's.", "",
             "Parts: **chain** = one case job (segmentation, repair, fat, speck cleanup) against the "
             "truth; **fat** = AddFat on the true mask, organs and CT; **repair** = ConnectVessels + "
             "ConnectUreters on the true mask cut at random places (2-8 mm gaps); **template** = "
             "SampleFromTemplate from the true kidney + tumor only.", ""]
    lines += ["## Targets", "", "| resolution | what | target | measured | met |", "|---|---|---|---:|---|"]
    for row in target_rows:
        measured = row["measured"]
        shown = f"{measured:.3f}" if isinstance(measured, float) else str(measured)
        lines.append(f"| {row['resolution']} | {row['what']} | {row['target']} | {shown} | "
                     f"{'yes' if row['met'] else '**no**'} |")
    for res, parts in summary.items():
        lines += ["", f"## {res} ({'x'.join(map(str, RESOLUTIONS[res]))} voxels)", "",
                  "| part | structure | Dice | HD95 mm | volume error | pieces |", "|---|---|---|---|---|---:|"]
        for part in ("chain", "fat", "repair", "template"):
            for name, row in parts.get(part, {}).items():
                cells = [" / ".join(_fmt(row[m][k], m) for k in ("min", "median", "max"))
                         + (f" ({row[m]['not_finite']} inf)" if row[m]["not_finite"] else "")
                         for m in ("dice", "hd95_mm", "volume_error")]
                lines.append(f"| {part} | {name} | {cells[0]} | {cells[1]} | {cells[2]} | "
                             f"{100 * row['pieces_match']:.0f}% |")
        checks = parts["checks"]
        if "repair" in parts:
            lines += ["", f"Repair bridges sticking out more than 2 voxels from their true tube (right joins at "
                          f"bends): {checks['cases_with_bridge_voxels_off_the_tube']} case(s), at most "
                          f"{checks['bridge_voxels_off_the_tube_max']} voxels in one case."]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    """Dice of every case, per part and structure, one column of dots per resolution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in ("chain", "fat", "repair", "template") if any(p in r for r in results)]
    fig, axes = plt.subplots(1, len(parts), figsize=(4 * len(parts), 3.6), squeeze=False, sharey=True)
    resolutions = list(dict.fromkeys(r["resolution"] for r in results))
    for ax, part in zip(axes[0], parts):
        names = list(dict.fromkeys(n for r in results for n in r.get(part, {})))
        for k, res in enumerate(resolutions):
            for i, name in enumerate(names):
                values = [r[part][name]["dice"] for r in results if r["resolution"] == res and part in r]
                x = i + (k - (len(resolutions) - 1) / 2) * 0.22
                ax.scatter([x] * len(values), values, s=10, alpha=0.7, color=f"C{k}",
                           label=res if i == 0 else None)
        ax.set_xticks(range(len(names)), names, rotation=30)
        ax.set_title(part)
        ax.set_ylim(0, 1.02)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("Dice per case")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _json_safe(value):
    """inf (a structure missing on one side) as null: JSON has no infinity."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def machine() -> str:
    sys.path.insert(0, str(REPO / "bench"))
    from ratios import machine as describe

    return describe()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20, help="held-out seeds per resolution")
    parser.add_argument("--fewer", nargs="+", default=[], metavar="RES=N",
                        help="fewer seeds at some resolutions, e.g. 0.74mm=3 (the report says so)")
    parser.add_argument("--first-seed", type=int, default=FIRST_HELD_OUT_SEED)
    parser.add_argument("--resolutions", nargs="+", default=list(RESOLUTIONS), choices=list(RESOLUTIONS))
    parser.add_argument("--parts", nargs="+", default=["chain", "fat", "repair", "template"],
                        choices=["chain", "fat", "repair", "template"])
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "evaluation.json")
    parser.add_argument("--markdown", type=Path, default=REPO / "docs" / "evaluation.md")
    args = parser.parse_args(argv)
    if args.first_seed < FIRST_HELD_OUT_SEED:
        parser.error(f"evaluation seeds start at {FIRST_HELD_OUT_SEED}: lower ones are used for training and tuning")

    from gateway_envoy.stack import SERVICES, temporary_stack
    from medseg.case_jobs import CaseClient
    from medseg.client import Client

    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    try:
        fewer = {res: int(n) for res, n in (item.split("=", 1) for item in args.fewer)}
    except ValueError:
        parser.error("--fewer takes RES=N items, e.g. 0.74mm=3")
    results = []
    start = time.perf_counter()
    with temporary_stack(SERVICES, extra_env={"MEDSEG_GRACE_SECONDS": "5"}, say=lambda *_: None) as stack, \
            CaseClient(stack.gateway, timeout=3600) as cases, Client(stack.gateway, timeout=3600) as client:
        for res in args.resolutions:
            for seed in seeds[:fewer.get(res, len(seeds))]:
                t = time.perf_counter()
                result = evaluate_case(stack, cases, client, res, seed, set(args.parts))
                results.append(result)
                chain = result.get("chain", {})
                print(f"{res} seed {seed}: {time.perf_counter() - t:.0f} s  " + "  ".join(
                    f"{n} {m['dice']:.3f}" for n, m in chain.items()), flush=True)
            # After each resolution: a long run that is stopped keeps what it finished.
            done = args.resolutions[:args.resolutions.index(res) + 1]
            meta = {"seeds": seeds, "seeds_per_resolution": {r: len(seeds[:fewer.get(r, len(seeds))]) for r in done},
                    "resolutions": done, "parts": args.parts, "machine": machine(),
                    "python": platform.python_version(), "seconds": time.perf_counter() - start}
            target_rows = write_reports(args, results, meta)
    missed = [r for r in target_rows if not r["met"]]
    for row in missed:
        print(f"target missed at {row['resolution']}: {row['what']} {row['target']}, measured {row['measured']}")
    return 0


def write_reports(args, results: list[dict], meta: dict) -> list[dict]:
    """The JSON, the Markdown report and its plot for `results`; returns the target rows."""
    summary = summarise(results)
    target_rows = targets(summary)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(_json_safe({"meta": meta, "summary": summary, "targets": target_rows,
                                                "cases": results}), indent=1))
    figure = args.markdown.with_name(args.markdown.stem + "-dice.png")
    plot(results, figure)
    args.markdown.write_text(markdown(summary, target_rows, meta) + f"\n![Dice per case]({figure.name})\n")
    print(f"wrote {args.json}, {args.markdown} and {figure}", flush=True)
    return target_rows


if __name__ == "__main__":
    sys.exit(main())
