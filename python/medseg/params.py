"""The one parameter error science functions raise, free of any transport.

A science function that owns a default also owns its range: it raises
`ParameterError(name, reason)` for a value it cannot use. The servers map it once to
INVALID_ARGUMENT with a `BadRequest` field path `params.<name>`; other callers get a
plain ValueError with the name in its message.
"""
from __future__ import annotations


class ParameterError(ValueError):
    """Parameter `name` (as the request names it, e.g. 'margin_mm' or 'limits.max_gap_mm')
    cannot be used, for `reason`."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason
