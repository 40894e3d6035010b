"""A process's resident memory from /proc (Linux), for the benches: one reader for all."""
from __future__ import annotations


def status_mb(key: str = "VmHWM", pid: int | str = "self") -> float:
    """/proc/<pid>/status field `key` (VmRSS now, VmHWM peak) in MB; NaN when unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def reset_peak(pid: int | str = "self") -> bool:
    """Restart the process's peak-RSS count (VmHWM), so the next figure is one step's only."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
