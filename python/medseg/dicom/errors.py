"""The one error of DICOM reading: a ValueError, so servers answer INVALID_ARGUMENT on the
input's field (medseg.serving.calls.read_checked) and the CLI exits 1 before any call."""
from __future__ import annotations


class DicomError(ValueError):
    """A DICOM input that cannot be trusted or read; `reason` says why in the user's words.
    `field` names the request field to blame when it is not the input path itself
    (e.g. "series_uid" when the choice of series is the problem)."""

    def __init__(self, reason: str, field: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.field = field
