"""One table of every ratio `make bench` measured, with the machine it ran on.

Each benchmark calls `record(...)` for the ratios it prints; when MEDSEG_BENCH_RATIOS names a
file (make bench sets it) they are appended there as JSON lines, and `python bench/ratios.py
FILE` prints them as one table at the end of the run. Ratios, not seconds: they are measured in
one run against a baseline on the same machine, so a noisy or shared machine moves both sides.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path


def record(bench: str, name: str, value: float, unit: str = "x", note: str = "") -> None:
    """Append one measured figure (`unit` "x" for a ratio) to MEDSEG_BENCH_RATIOS, if set."""
    target = os.environ.get("MEDSEG_BENCH_RATIOS")
    if not target:
        return
    row = {"bench": bench, "name": name, "value": float(value), "unit": unit, "note": note,
           "load": round(os.getloadavg()[0], 1)}
    with open(target, "a") as out:
        out.write(json.dumps(row) + "\n")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal:"))
        memory = f"{mem_kb / 2 ** 20:.0f} GiB"
    except (OSError, StopIteration):
        memory = "? GiB"
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, {memory}, {gpu}, {platform.system()} {platform.release()}"


def table(rows: list[dict]) -> str:
    lines = ["| bench | measured | value | load | how |", "|---|---|---:|---:|---|"]
    for r in rows:
        value = f"{r['value']:.2f}{r['unit']}" if r["unit"] == "x" else f"{r['value']:.3g} {r['unit']}"
        lines.append(f"| {r['bench']} | {r['name']} | {value} | {r['load']} | {r['note']} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else os.environ.get("MEDSEG_BENCH_RATIOS", ""))
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    print(f"\nmachine: {machine()}")
    print("load: the 1-minute load average when the figure was taken (the benches are not alone "
          "when it exceeds the core count)")
    print(table(rows) if rows else "(no ratios recorded)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
