"""Content-addressed store of uploaded volumes under the data root.

    <root>/cas/sha256/ab/abcdef....nii.gz     (or .nii: the suffix follows the bytes)

The name is the sha256 of the file bytes, so the same bytes are stored once and a second
upload is a no-op. A file appears under its name only when complete and validated (written
to a temporary file in cas/tmp, checked to read as a 3D volume, then renamed).
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable

from medseg import codec
from medseg.codec import DigestMismatch, VolumeTooLarge
from medseg.serving.errors import FieldError
from medseg.volumes import read_volume

_HEX = re.compile(r"^[0-9a-f]{64}$")
_SUFFIXES = (".nii.gz", ".nii")


class UnknownDigest(FileNotFoundError):
    """No upload with that digest (NOT_FOUND)."""


class VolumeStore:
    def __init__(self, root: Path, max_bytes: int):
        self.root = Path(root).resolve()
        self.base = self.root / "cas" / "sha256"
        self.tmp = self.root / "cas" / "tmp"
        self.max_bytes = max_bytes

    def _target(self, digest: str, suffix: str) -> Path:
        return self.base / digest[:2] / f"{digest}{suffix}"

    def find(self, digest: str, field: str = "sha256") -> Path:
        """The stored file of a digest; UnknownDigest when it was never uploaded."""
        digest = digest.strip().lower()
        if not _HEX.match(digest):
            raise FieldError(field, "not a sha256 digest (64 hex digits)")
        for suffix in _SUFFIXES:
            path = self._target(digest, suffix)
            if path.is_file():
                return path
        raise UnknownDigest(f"{field}: no uploaded volume with digest {digest[:16]}…; upload it "
                            "with UploadVolume first")

    def put(self, chunks: Iterable[bytes], declared_sha256: str = "", declared_bytes: int = 0) -> dict:
        """Store one NIfTI file from its byte chunks; returns {sha256, path, bytes,
        already_present, size, spacing}. Raises FieldError (not a 3D NIfTI), VolumeTooLarge,
        DigestMismatch."""
        if declared_bytes > self.max_bytes:
            raise VolumeTooLarge(f"upload of {declared_bytes} bytes is over the limit of "
                                 f"{self.max_bytes} bytes")
        self.tmp.mkdir(parents=True, exist_ok=True)
        hasher = hashlib.sha256()
        total = 0
        handle, tmp_name = tempfile.mkstemp(prefix="upload-", suffix=".partial", dir=self.tmp)
        tmp = Path(tmp_name)
        named = None
        try:
            with os.fdopen(handle, "wb") as out:
                for data in chunks:
                    total += len(data)
                    if total > self.max_bytes:
                        raise VolumeTooLarge(f"upload is over the limit of {self.max_bytes} bytes")
                    hasher.update(data)
                    out.write(data)
            if total == 0:
                raise FieldError("data", "empty upload: send the bytes of a .nii or .nii.gz file")
            digest = hasher.hexdigest()
            if declared_sha256 and declared_sha256.lower() != digest:
                raise DigestMismatch(f"upload bytes have sha256 {digest[:16]}…, the header "
                                     f"declared {declared_sha256[:16]}…")
            if declared_bytes and declared_bytes != total:
                raise FieldError("header.total_bytes", f"declared {declared_bytes} bytes, "
                                 f"received {total}")
            with tmp.open("rb") as f:
                suffix = ".nii.gz" if f.read(2) == b"\x1f\x8b" else ".nii"
            # ITK picks its reader by the file name: validate under the final suffix.
            named = tmp.with_name(tmp.name.removesuffix(".partial") + suffix)
            tmp.replace(named)
            info = self._validate(named)
            target = self._target(digest, suffix)
            present = target.is_file()
            if not present:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(named, 0o644)
                named.replace(target)
            return {"sha256": digest, "path": str(target.relative_to(self.root)), "bytes": total,
                    "already_present": present, **info}
        finally:
            tmp.unlink(missing_ok=True)
            if named is not None:
                named.unlink(missing_ok=True)

    def _validate(self, path: Path) -> dict:
        try:
            codec.check_nifti_header(codec.read_nifti_header_of_file(path), self.max_bytes, "upload")
        except (OSError, EOFError) as exc:
            raise FieldError("data", f"not a readable NIfTI file ({exc.__class__.__name__})") from None
        except ValueError as exc:
            raise FieldError("data", str(exc)) from None
        try:
            volume = read_volume(path)
        except (RuntimeError, ValueError) as exc:
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
            # ITK names the file it read: never show a server path.
            last = last.replace(str(path), "upload").replace(path.name, "upload")
            raise FieldError("data", f"not a readable 3D volume: {last[:200]}") from None
        return {"size": list(volume.size), "spacing": list(volume.spacing)}
