"""Path references confined to the data root (MEDSEG_DATA_ROOT)."""
from __future__ import annotations

from pathlib import Path

from medseg.serving.errors import FieldError

# Linux's PATH_MAX and NAME_MAX: longer paths are refused before touching the filesystem.
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255


def shown(relative: str) -> str:
    """A client's path as quoted back in messages (long ones abbreviated)."""
    return relative if len(relative) <= 160 else f"{relative[:80]}...{relative[-40:]}"


class DataRoot:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    def _resolve(self, field: str, relative: str) -> Path:
        if "\x00" in relative:
            printable = shown(relative.replace("\x00", "\\0"))
            raise FieldError(field, f"path '{printable}' contains a NUL byte")
        size = len(relative.encode("utf-8", "surrogatepass"))
        if size > MAX_PATH_BYTES:
            raise FieldError(field, f"path '{shown(relative)}' is {size} bytes long (limit {MAX_PATH_BYTES})")
        if any(len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for part in relative.split("/")):
            raise FieldError(field, f"path '{shown(relative)}' has a component longer than "
                                    f"{MAX_NAME_BYTES} bytes")
        candidate = Path(relative)
        try:
            if candidate.is_absolute():
                # Absolute paths are accepted only when they already point inside the root.
                resolved = candidate.resolve()
            else:
                resolved = (self.root / candidate).resolve()
        except (OSError, RuntimeError) as exc:  # symlink loops, unreadable folders
            raise FieldError(field, f"path '{shown(relative)}' cannot be resolved "
                                    f"({getattr(exc, 'strerror', None) or 'symlink loop'})") from None
        if not resolved.is_relative_to(self.root):
            raise PermissionError(f"{field}: '{shown(relative)}' is outside the data root")
        return resolved

    def input(self, field: str, relative: str) -> Path:
        """An existing file or DICOM folder under the root."""
        path = self._resolve(field, relative)
        if not path.exists():
            raise FileNotFoundError(f"{field}: '{shown(relative)}' does not exist under the data root")
        return path

    def output(self, field: str, relative: str) -> Path:
        """A path to write under the root (parents are created by the writer)."""
        path = self._resolve(field, relative)
        if path.is_dir():
            raise FieldError(field, f"'{shown(relative)}' is a folder, expected a file path")
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise FieldError(field, f"'{shown(relative)}': '{self.relative(parent)}' is a "
                                            f"file, not a folder")
                break
        return path

    def relative(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.root))
