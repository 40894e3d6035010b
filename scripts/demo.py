"""The main job on a synthetic phantom case, through the running gateway.

Run by `make demo` after `make up`. Writes a phantom case (three contrast phases and its
ground truth) under out/demo/, then runs one case job the way a user would:

    medseg case run --arterial A --portal P --delayed D -o out/demo/result

(the phases are uploaded, the job segments, repairs, adds fat, cleans specks, meshes and
measures, and the outputs are fetched). It then prints the report's summary, the Dice of the
job's mask against the phantom's truth, and where the outputs are.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from medseg import addresses
from medseg.labels import Label
from medseg.metrics import dice
from medseg.phantom import make_phantom
from medseg.volumes import read_volume

REPO = Path(__file__).resolve().parent.parent



def print_report(report: dict) -> None:
    print(f"\n== report {report['case_id']}: {report['state']}")
    for item in report["skipped"]:
        print(f"  skipped {item['task']}: {item['reason']}")
    print("  steps: " + ", ".join(f"{s['name']} {s['seconds']:.1f}s" for s in report["steps"]))
    for s in report["structures"]:
        print(f"  {s['name']:<8} {s['volume_ml']:8.1f} ml  {s['pieces']} piece(s)")
    for name, repair in report["repairs"].items():
        if repair:
            print(f"  {name} repair: {repair['pieces_before']} -> {repair['pieces_after']} pieces, "
                  f"{repair['bridges']} bridge(s)")
    if report["removed_specks"]:
        print(f"  removed {len(report['removed_specks'])} speck(s): " + ", ".join(
            f"{s['label']} {s['volume_ml'] * 1000:.0f} mm3" for s in report["removed_specks"][:8]))
    if report["fat"]:
        print(f"  perirenal fat {report['fat']['volume_ml']:.1f} ml (CT used: {report['fat']['used_ct']})")
    for t in report["tumors"]:
        renal = t["renal"] or {}
        print(f"  tumor: {t['side']} kidney, {t['polar_location']} pole, {t['max_diameter_mm']:.1f} mm, "
              f"{t['volume_ml']:.1f} ml, exophytic {t['exophytic_fraction']:.2f}, "
              f"R.E.N.A.L. R{renal.get('R')} E{renal.get('E')} N{renal.get('N')} "
              f"A{renal.get('A')} L{renal.get('L')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway", default=None)
    # The demo models were trained at 3 mm: a 127 x 127 x 100 phantom has that spacing.
    parser.add_argument("--size", type=int, nargs=3, default=(127, 127, 100))
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--output", type=Path, default=REPO / "out" / "demo")
    args = parser.parse_args()

    started = time.monotonic()
    print(f"== phantom case {tuple(args.size)} seed {args.seed} -> {args.output}")
    case = make_phantom(size=tuple(args.size), seed=args.seed)
    files = case.write(args.output / "case")
    result = args.output / "result"

    command = [sys.executable, "-m", "medseg.cli"] + (["--gateway", args.gateway] if args.gateway else [])
    command += ["case", "run", "--arterial", str(files["arterial"]), "--portal", str(files["portal"]),
                "--delayed", str(files["delayed"]), "-o", str(result)]
    print("\n== " + " ".join(["medseg"] + command[3:]))
    if subprocess.run(command, env=os.environ.copy()).returncode != 0:
        print("the case job did not succeed (is the stack up? `make up`)", file=sys.stderr)
        return 1

    report = json.loads((result / "report.json").read_text())
    print_report(report)
    mask = read_volume(result / "mask.nii.gz").array
    truth = case.labels.array
    print("\n== Dice of the job's mask against the phantom's truth")
    print("  " + ", ".join(f"{label.name.lower()} {dice(mask == label, truth == label):.3f}"
                           for label in list(Label)[1:]))
    print(f"\nDone in {time.monotonic() - started:.0f}s. Outputs: {result}/ "
          "(mask.nii.gz, masks/, meshes/model.obj + .mtl + .glb, report.json, report.html).")
    print("The stack is still up: try `medseg case list` or `medseg status`; `make down` stops it.")
    gateway = args.gateway or addresses.gateway_address()
    print(f"\n== viewer (CT, masks, 3D models, report in the browser):\n  "
          f"http://{gateway}/viewer/?case={report['case_id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
