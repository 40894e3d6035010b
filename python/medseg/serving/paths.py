"""Path references confined to the data root (MEDSEG_DATA_ROOT)."""
from __future__ import annotations

from pathlib import Path

from medseg.serving.errors import FieldError


class DataRoot:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    def _resolve(self, field: str, relative: str) -> Path:
        if "\x00" in relative:
            raise FieldError(field, "path contains a NUL byte")
        candidate = Path(relative)
        if candidate.is_absolute():
            # Absolute paths are accepted only when they already point inside the root.
            resolved = candidate.resolve()
        else:
            resolved = (self.root / candidate).resolve()
        if not resolved.is_relative_to(self.root):
            raise PermissionError(f"{field}: '{relative}' is outside the data root")
        return resolved

    def input(self, field: str, relative: str) -> Path:
        """An existing file or DICOM folder under the root."""
        path = self._resolve(field, relative)
        if not path.exists():
            raise FileNotFoundError(f"{field}: '{relative}' does not exist under the data root")
        return path

    def output(self, field: str, relative: str) -> Path:
        """A path to write under the root (parents are created by the writer)."""
        path = self._resolve(field, relative)
        if path.is_dir():
            raise FieldError(field, f"'{relative}' is a folder, expected a file path")
        return path

    def relative(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.root))
