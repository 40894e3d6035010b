"""Where DICOM files come from: a folder (searched recursively, e.g. a CD's DICOM/ST*/SE*),
a DICOMDIR, a zip of a study (as Orthanc exports it), or a single (multi-frame) file.

Zip members are extracted one by one to names we compute, never with extractall: a member
whose name is absolute, climbs out with `..`, is a link, or would inflate the archive past
the limits is refused, and nothing of that archive is read.
"""
from __future__ import annotations

import stat
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterator

from medseg.dicom.errors import DicomError

# Limits on a zip we extract: total inflated bytes, members, and the inflate ratio of any
# member (a zip bomb inflates by 1000x and more; DICOM compresses by 2-10x).
MAX_ZIP_BYTES = 16 * 1024**3
MAX_ZIP_MEMBERS = 100_000
MAX_ZIP_RATIO = 200


def is_dicom_file(path: Path) -> bool:
    """A file with the DICOM Part 10 preamble ('DICM' at byte 128)."""
    try:
        with path.open("rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def is_dicomdir(path: Path) -> bool:
    return path.is_file() and path.name.upper() == "DICOMDIR"


def looks_like_dicom_source(path: Path) -> bool:
    """True for inputs this package reads: folders, DICOMDIR, zips, DICOM files."""
    path = Path(path)
    return (path.is_dir() or is_dicomdir(path) or (path.is_file() and zipfile.is_zipfile(path)
                                                  and path.suffix.lower() == ".zip")
            or (path.is_file() and is_dicom_file(path)))


def _member_target(root: Path, info: zipfile.ZipInfo) -> Path | None:
    """The extraction path of a member, or None for a folder entry; DicomError when the
    name is unsafe."""
    name = info.filename.replace("\\", "/")
    pure = PurePosixPath(name)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in pure.parts:
        raise DicomError(f"zip member '{info.filename}' points outside the archive (absolute or '..' path); "
                         "the archive is refused")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise DicomError(f"zip member '{info.filename}' is a symbolic link; the archive is refused")
    if info.is_dir():
        return None
    target = (root / pure).resolve()
    if not target.is_relative_to(root.resolve()):
        raise DicomError(f"zip member '{info.filename}' points outside the archive; the archive is refused")
    return target


def extract_zip(archive: Path, into: Path) -> None:
    """Extract a zip of DICOM files safely (see module docstring)."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise DicomError(f"is not a readable zip archive ({exc})") from None
    with zf:
        members = zf.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise DicomError(f"zip holds {len(members)} members (limit {MAX_ZIP_MEMBERS})")
        total = sum(m.file_size for m in members)
        if total > MAX_ZIP_BYTES:
            raise DicomError(f"zip inflates to {total} bytes (limit {MAX_ZIP_BYTES})")
        targets = [(m, _member_target(into, m)) for m in members]  # every name checked first
        for member, target in targets:
            if target is None:
                continue
            if member.compress_size and member.file_size / member.compress_size > MAX_ZIP_RATIO:
                raise DicomError(f"zip member '{member.filename}' inflates {member.file_size // member.compress_size}x "
                                 f"(limit {MAX_ZIP_RATIO}x); the archive is refused")
            target.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            with zf.open(member) as src, target.open("wb") as dst:
                while block := src.read(1 << 20):
                    written += len(block)
                    if written > member.file_size:  # a lying header: stop at the declared size
                        raise DicomError(f"zip member '{member.filename}' is larger than its header says")
                    dst.write(block)


def _dicomdir_files(dicomdir: Path) -> list[Path]:
    """The image files a DICOMDIR references (pydicom reads the directory records)."""
    import pydicom

    try:
        ds = pydicom.dcmread(dicomdir)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad DICOMDIR
        raise DicomError(f"DICOMDIR '{dicomdir.name}' cannot be read ({exc})") from None
    base = dicomdir.parent
    files = []
    for record in ds.get("DirectoryRecordSequence", []):
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else list(file_id)
        if any(p in ("..", "") or "/" in p or "\\" in p for p in parts):
            raise DicomError(f"DICOMDIR references '{'/'.join(parts)}', outside its folder")
        path = base.joinpath(*parts)
        if not path.exists():  # CDs are often copied with lower-case names
            path = base.joinpath(*[p.lower() for p in parts])
        if path.is_file():
            files.append(path)
    return files


def _walk(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name.upper() != "DICOMDIR":
            yield path


@contextmanager
def dicom_files(source: Path) -> Iterator[list[Path]]:
    """The candidate DICOM files of a source, valid inside the `with` (a zip is extracted
    into a temporary folder removed afterwards). Files are not parsed here."""
    source = Path(source)
    if source.is_dir():
        dicomdir = next((p for p in source.iterdir() if is_dicomdir(p)), None)
        files = _dicomdir_files(dicomdir) if dicomdir else []
        yield files or list(_walk(source))
    elif is_dicomdir(source):
        yield _dicomdir_files(source)
    elif source.is_file() and zipfile.is_zipfile(source) and not is_dicom_file(source):
        with tempfile.TemporaryDirectory(prefix="medseg-zip-") as tmp:
            extract_zip(source, Path(tmp))
            with dicom_files(Path(tmp)) as files:
                yield files
    elif source.is_file():
        yield [source]
    else:
        raise DicomError("no such file or folder")
