"""Progress and cancellation for long science functions, free of any gRPC.

Science functions take `progress(stage, fraction, message)` and `cancelled()` callbacks and
call `report_stage` between stages; a cancelled call raises OperationCancelled, which the
servers answer with CANCELLED.
"""
from __future__ import annotations

from typing import Callable

Progress = Callable[[str, float, str], None]
Cancelled = Callable[[], bool]


class OperationCancelled(Exception):
    """The caller cancelled (the client went away or its deadline passed)."""


def report_stage(progress: Progress | None, cancelled: Cancelled | None, stage: str,
                 fraction: float, message: str = "") -> None:
    """Tell the caller where we are, and stop if it has cancelled."""
    if cancelled is not None and cancelled():
        raise OperationCancelled(f"cancelled before stage '{stage}'")
    if progress is not None:
        progress(stage, float(fraction), message)
