"""What a test does when something it needs is missing: on a developer's machine it skips
with the reason; under CI (CI=true) it fails, so a broken install step cannot pass as green."""
from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip (locally) or fail (CI) for a required tool or package that is not there."""
    if in_ci():
        pytest.fail(f"required for CI but missing: {reason}", pytrace=False)
    pytest.skip(reason)
