"""Volumes on the wire: a VolumeHeader, then ~1 MiB data chunks.

Both directions use the same two functions: `volume_chunks` cuts a Volume (or a NIfTI
file's bytes) into VolumeChunk messages, and `VolumeAssembler` checks and rebuilds volumes
from a sequence of chunks. Every size is checked against a limit *before* anything is
allocated, so a hostile header cannot make the receiver allocate absurd amounts.
"""
from __future__ import annotations

import gzip
import hashlib
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from medseg.volume.v1 import volume_pb2 as pb
from medseg.volumes import IDENTITY, Volume, raw_bytes

# One place for the chunk size: large enough for throughput, far below gRPC's 4 MiB limit.
CHUNK_SIZE = 1 << 20
# Largest gRPC message, for clients and servers alike: inline chunks are ~1 MiB, anything far
# larger is not a chunk.
MAX_MESSAGE_BYTES = 8 << 20
# Per-axis sanity bound; anything above is a corrupt or hostile header, not a CT.
MAX_VOXELS_PER_AXIS = 16384
DEFAULT_MAX_VOLUME_BYTES = 1 << 30

VOXEL_DTYPES: dict[int, np.dtype] = {
    pb.VOXEL_TYPE_UINT8: np.dtype("<u1"),
    pb.VOXEL_TYPE_INT8: np.dtype("<i1"),
    pb.VOXEL_TYPE_UINT16: np.dtype("<u2"),
    pb.VOXEL_TYPE_INT16: np.dtype("<i2"),
    pb.VOXEL_TYPE_UINT32: np.dtype("<u4"),
    pb.VOXEL_TYPE_INT32: np.dtype("<i4"),
    pb.VOXEL_TYPE_FLOAT32: np.dtype("<f4"),
    pb.VOXEL_TYPE_FLOAT64: np.dtype("<f8"),
}
_VOXEL_TYPES = {dtype.newbyteorder("="): vt for vt, dtype in VOXEL_DTYPES.items()}


class VolumeTooLarge(Exception):
    """A volume (declared or decompressed) exceeds the configured byte limit."""


class DigestMismatch(Exception):
    """A volume's bytes do not match the digest its sender declared."""


def voxel_type_of(dtype: np.dtype) -> int:
    try:
        return _VOXEL_TYPES[np.dtype(dtype).newbyteorder("=")]
    except KeyError:
        raise ValueError(f"voxel type {np.dtype(dtype)} cannot travel; use one of "
                         f"{sorted(str(d) for d in _VOXEL_TYPES)}") from None


def volume_header(volume: Volume, role: str, digest: str = "") -> pb.VolumeHeader:
    itemsize = volume.array.dtype.itemsize
    return pb.VolumeHeader(
        role=role,
        encoding=pb.VOLUME_ENCODING_RAW,
        total_bytes=volume.array.size * itemsize,
        size=list(volume.size),
        spacing=list(volume.spacing),
        origin=list(volume.origin),
        direction=list(volume.direction),
        voxel_type=voxel_type_of(volume.array.dtype),
        labels=[pb.LabelEntry(value=v, name=n) for v, n in sorted((volume.labels or {}).items())],
        sha256=digest,
    )


def volume_chunks(volume: Volume, role: str, chunk_size: int = CHUNK_SIZE,
                  digest: str | None = None) -> Iterator[pb.VolumeChunk]:
    """A Volume as RAW chunks: header first (with the SHA-256 of the data, computed here
    unless the caller already has it), then data."""
    data = raw_bytes(volume.array)
    digest = digest or hashlib.sha256(data).hexdigest()
    yield pb.VolumeChunk(header=volume_header(volume, role, digest))
    for start in range(0, len(data), chunk_size):
        yield pb.VolumeChunk(data=bytes(data[start:start + chunk_size]))


def file_volume_chunks(path: str | Path, role: str,
                       chunk_size: int = CHUNK_SIZE) -> Iterator[pb.VolumeChunk]:
    """A NIfTI file's bytes as chunks (the receiver decodes it)."""
    path = Path(path)
    size = path.stat().st_size
    yield pb.VolumeChunk(header=pb.VolumeHeader(
        role=role, encoding=pb.VOLUME_ENCODING_NIFTI, total_bytes=size))
    with path.open("rb") as f:
        while block := f.read(chunk_size):
            yield pb.VolumeChunk(data=block)


def file_chunks(name: str, data: bytes, chunk_size: int = CHUNK_SIZE) -> Iterator[pb.FileChunk]:
    """A file's bytes as FileChunk messages (at least one, even for an empty file)."""
    for start in range(0, max(len(data), 1), chunk_size):
        yield pb.FileChunk(name=name, data=data[start:start + chunk_size], total_bytes=len(data))


# --- receiving -----------------------------------------------------------------------

@dataclass
class ReceivedVolume:
    """A volume rebuilt from chunks, with the digest of its RAW voxel bytes."""

    role: str
    volume: Volume
    sha256: str
    nbytes: int


def check_header(header: pb.VolumeHeader, max_bytes: int) -> None:
    """Validate a header before allocating anything for it."""
    if not header.role:
        raise ValueError("volume header: role is empty (expected e.g. 'ct' or 'mask')")
    if header.total_bytes > max_bytes:
        raise VolumeTooLarge(f"volume '{header.role}': {header.total_bytes} bytes exceeds the "
                             f"limit of {max_bytes} bytes")
    if header.encoding == pb.VOLUME_ENCODING_NIFTI:
        if header.total_bytes == 0:
            raise ValueError(f"volume '{header.role}': total_bytes is 0")
        return
    if header.encoding not in (pb.VOLUME_ENCODING_UNSPECIFIED, pb.VOLUME_ENCODING_RAW):
        raise ValueError(f"volume '{header.role}': unknown encoding {header.encoding}")
    if len(header.size) != 3:
        raise ValueError(f"volume '{header.role}': size must have 3 values (x, y, z), "
                         f"got {len(header.size)}")
    if any(s == 0 or s > MAX_VOXELS_PER_AXIS for s in header.size):
        raise ValueError(f"volume '{header.role}': size {list(header.size)} is out of range "
                         f"(1..{MAX_VOXELS_PER_AXIS} voxels per axis)")
    if header.voxel_type not in VOXEL_DTYPES:
        raise ValueError(f"volume '{header.role}': voxel_type {header.voxel_type} is not a "
                         f"known voxel type")
    expected = int(np.prod(header.size, dtype=np.uint64)) * VOXEL_DTYPES[header.voxel_type].itemsize
    if expected > max_bytes:
        raise VolumeTooLarge(f"volume '{header.role}': size {list(header.size)} needs "
                             f"{expected} bytes, over the limit of {max_bytes} bytes")
    if header.total_bytes != expected:
        raise ValueError(f"volume '{header.role}': total_bytes {header.total_bytes} does not "
                         f"match size x voxel type ({expected} bytes)")
    for name, values in (("spacing", header.spacing), ("origin", header.origin)):
        if len(values) != 3 or not all(np.isfinite(values)):
            raise ValueError(f"volume '{header.role}': {name} must be 3 finite numbers")
    if any(s <= 0 for s in header.spacing):
        raise ValueError(f"volume '{header.role}': spacing {list(header.spacing)} must be positive")
    if header.direction:
        if len(header.direction) != 9:
            raise ValueError(f"volume '{header.role}': direction must have 9 values")
        d = np.asarray(header.direction).reshape(3, 3)
        if not np.allclose(d @ d.T, np.eye(3), atol=1e-3):
            raise ValueError(f"volume '{header.role}': direction is not an orthonormal matrix")


class VolumeAssembler:
    """Rebuilds volumes from VolumeChunk messages, checking every limit on the way."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_VOLUME_BYTES):
        self.max_bytes = max_bytes
        self.done: list[ReceivedVolume] = []
        self._header: pb.VolumeHeader | None = None
        self._buffer: bytearray | None = None
        self._filled = 0
        self._hash = hashlib.sha256()

    def add(self, chunk: pb.VolumeChunk) -> None:
        part = chunk.WhichOneof("part")
        if part == "header":
            self._expect_complete()
            check_header(chunk.header, self.max_bytes)
            self._header = chunk.header
            self._buffer = bytearray(chunk.header.total_bytes)
            self._filled = 0
            self._hash = hashlib.sha256()
        elif part == "data":
            if self._header is None:
                raise ValueError("volume data arrived before any volume header")
            end = self._filled + len(chunk.data)
            if end > len(self._buffer):
                raise ValueError(f"volume '{self._header.role}': more data than the header's "
                                 f"total_bytes ({self._header.total_bytes})")
            self._buffer[self._filled:end] = chunk.data
            self._hash.update(chunk.data)
            self._filled = end
            if self._filled == len(self._buffer):
                self._finish()
        else:
            raise ValueError("empty volume chunk (neither header nor data)")

    def finish(self) -> list[ReceivedVolume]:
        """All volumes, once the stream ended. Raises if one is incomplete."""
        self._expect_complete()
        return self.done

    def _expect_complete(self) -> None:
        if self._header is not None:
            raise ValueError(f"volume '{self._header.role}' is truncated: got {self._filled} of "
                             f"{self._header.total_bytes} bytes")

    def _finish(self) -> None:
        header, data = self._header, self._buffer
        self._header, self._buffer = None, None
        if header.sha256 and header.sha256.lower() != self._hash.hexdigest():
            raise DigestMismatch(f"volume '{header.role}': data digest {self._hash.hexdigest()} "
                                 f"does not match the header's sha256 {header.sha256}")
        if header.encoding == pb.VOLUME_ENCODING_NIFTI:
            volume = decode_nifti(bytes(data), self.max_bytes, header.role)
            digest = volume.sha256()
        else:
            array = np.frombuffer(data, dtype=VOXEL_DTYPES[header.voxel_type])
            array = array.reshape(tuple(reversed(header.size))).astype(
                array.dtype.newbyteorder("="), copy=False)
            volume = Volume(array, tuple(header.spacing), tuple(header.origin),
                            tuple(header.direction) or IDENTITY)
            digest = self._hash.hexdigest()
        if header.labels:
            volume.labels = {e.value: e.name for e in header.labels}
        self.done.append(ReceivedVolume(header.role, volume, digest, volume.array.nbytes))


# --- NIfTI ---------------------------------------------------------------------------

_NIFTI_BITPIX = {2: 8, 4: 16, 8: 32, 16: 32, 64: 64, 256: 8, 512: 16, 768: 32, 1024: 64, 1280: 64}


def gunzip_limited(data: bytes, max_bytes: int, role: str = "") -> bytes:
    """Decompress gzip data, refusing to inflate beyond max_bytes (gzip bombs)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise ValueError(f"volume '{role}': corrupt gzip data ({exc})") from None
    if len(out) > max_bytes:
        raise VolumeTooLarge(f"volume '{role}': decompresses to more than {max_bytes} bytes")
    if not inflater.eof:
        raise ValueError(f"volume '{role}': truncated gzip data")
    return out


def check_nifti_header(header: bytes, max_bytes: int, role: str = "",
                       available: int | None = None) -> None:
    """Check a NIfTI-1 header (first 348 bytes) before any library allocates for it."""
    if len(header) < 348:
        raise ValueError(f"volume '{role}': not a NIfTI file (only {len(header)} bytes)")
    for endian in "<>":
        if struct.unpack(endian + "i", header[:4])[0] == 348:
            break
    else:
        raise ValueError(f"volume '{role}': not a NIfTI-1 file (sizeof_hdr is not 348)")
    dims = struct.unpack(endian + "8h", header[40:56])
    datatype, bitpix = struct.unpack(endian + "hh", header[70:74])
    vox_offset = struct.unpack(endian + "f", header[108:112])[0]
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dims[1:ndim + 1]):
        raise ValueError(f"volume '{role}': NIfTI header has invalid dimensions {dims[:ndim + 1]}")
    if ndim < 3:
        raise ValueError(f"volume '{role}': image is {ndim}D, a 3D volume is required")
    if any(d > 1 for d in dims[4:ndim + 1]):
        raise ValueError(f"volume '{role}': image has more than 3 dimensions {dims[1:ndim + 1]}")
    if datatype not in _NIFTI_BITPIX or _NIFTI_BITPIX[datatype] != bitpix:
        raise ValueError(f"volume '{role}': unsupported NIfTI datatype {datatype} "
                         f"(bitpix {bitpix})")
    if any(d > MAX_VOXELS_PER_AXIS for d in dims[1:4]):
        raise ValueError(f"volume '{role}': size {dims[1:4]} is out of range "
                         f"(1..{MAX_VOXELS_PER_AXIS} voxels per axis)")
    needed = int(np.prod(dims[1:4], dtype=np.uint64)) * bitpix // 8
    if needed > max_bytes:
        raise VolumeTooLarge(f"volume '{role}': size {dims[1:4]} needs {needed} bytes, over "
                             f"the limit of {max_bytes} bytes")
    if available is not None and available < int(vox_offset) + needed:
        raise ValueError(f"volume '{role}': NIfTI data is truncated: expected "
                         f"{int(vox_offset) + needed} bytes, got {available}")


def decode_nifti(data: bytes, max_bytes: int, role: str = "") -> Volume:
    """A NIfTI file's bytes (plain or gzip) to a Volume, after checking the header."""
    if data[:2] == b"\x1f\x8b":
        data = gunzip_limited(data, max_bytes + 352 + (1 << 16), role)
    check_nifti_header(data[:348], max_bytes, role, available=len(data))
    with tempfile.TemporaryDirectory(prefix="medseg-nifti-") as tmp:
        path = Path(tmp) / "volume.nii"
        path.write_bytes(data)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise ValueError(f"volume '{role}': unreadable NIfTI ({str(exc).strip().splitlines()[-1]})") from None
    try:
        return Volume.from_image(image)
    except ValueError as exc:
        raise ValueError(f"volume '{role}': {exc}") from None


def read_nifti_header_of_file(path: Path) -> bytes:
    """The first 348 bytes of a .nii or .nii.gz file (decompressing only that much)."""
    with path.open("rb") as f:
        magic = f.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as f:
            return f.read(348)
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path.name}: corrupt file ({exc})") from None
