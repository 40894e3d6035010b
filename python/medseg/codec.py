"""Volumes on the wire: a VolumeHeader, then ~1 MiB data chunks.

Both directions use the same two functions: `volume_chunks` cuts a Volume (or a NIfTI
file's bytes) into VolumeChunk messages, and `VolumeAssembler` checks and rebuilds volumes
from a sequence of chunks. Every size is checked against a limit *before* anything is
allocated, so a hostile header cannot make the receiver allocate absurd amounts.
"""
from __future__ import annotations

import gzip
import hashlib
import re
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


class VolumeError(ValueError):
    """A malformed volume: `field` is the VolumeChunk field at fault ("header.size",
    "data", ...), `reason` the problem; str() is "volume '<role>': <reason>"."""

    def __init__(self, role: str, field: str, reason: str):
        super().__init__(f"volume '{role}': {reason}" if role else reason)
        self.role = role
        self.field = field
        self.reason = reason


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


# --- compressed and bit-packed RAW volumes (VolumeHeader.compression / bits_per_voxel) --

ENCODINGS = ("raw", "gzip", "packed", "gzip+packed", "auto")
PACKABLE_BITS = (1, 2, 4)
MAX_CHUNK_BYTES = 16 << 20  # largest declared inflated chunk accepted
GZIP_LEVEL = 1


def packed_bits(array: np.ndarray) -> int:
    """Fewest bits (1, 2 or 4) holding every voxel of an integer volume; 0 when it cannot
    be packed (not integer, negative values, or values >= 16)."""
    if array.dtype.kind not in "ui" or array.size == 0:
        return 0
    low, high = int(array.min()), int(array.max())
    if low < 0:
        return 0
    return next((bits for bits in PACKABLE_BITS if high < (1 << bits)), 0)


def is_mask_like(array: np.ndarray) -> bool:
    """Integer voxels all within 0..255: a label mask (CT has negative HU, or is float)."""
    return (array.dtype.kind in "ui" and array.size > 0
            and int(array.min()) >= 0 and int(array.max()) <= 255)


def choose_encoding(array: np.ndarray, compress: bool = True) -> tuple[int, int]:
    """(compression, bits_per_voxel) the SDK sends a volume with by default: masks gzip'd
    and bit-packed where their values allow, anything else raw (CT barely compresses at
    gzip speed). With compress=False: raw."""
    if not compress or not is_mask_like(array):
        return pb.VOLUME_COMPRESSION_UNSPECIFIED, 0
    return pb.VOLUME_COMPRESSION_GZIP, packed_bits(array)


def pack(values: np.ndarray, bits: int) -> bytes:
    """Integer voxels (each < 2**bits) as the bit-packed stream of the contract."""
    flat = values.reshape(-1).astype(np.uint8, copy=False)
    if bits == 1:
        return np.packbits(flat, bitorder="little").tobytes()
    per_byte = 8 // bits
    if len(flat) % per_byte:
        flat = np.concatenate([flat, np.zeros(per_byte - len(flat) % per_byte, np.uint8)])
    groups = flat.reshape(-1, per_byte)
    out = groups[:, 0].copy()
    for k in range(1, per_byte):
        out |= groups[:, k] << (k * bits)
    return out.tobytes()


def unpack_into(stream, bits: int, out: np.ndarray) -> None:
    """Decode len(out) voxels from the start of a bit-packed stream into `out` (1D)."""
    packed = np.frombuffer(stream, np.uint8)
    if bits == 1:
        out[:] = np.unpackbits(packed, count=len(out), bitorder="little")
        return
    per_byte = 8 // bits
    whole = len(out) // per_byte
    mask = (1 << bits) - 1
    if whole:
        grid = out[: whole * per_byte].reshape(whole, per_byte)
        for k in range(per_byte):
            grid[:, k] = (packed[:whole] >> (k * bits)) & mask
    for k in range(len(out) - whole * per_byte):
        out[whole * per_byte + k] = (packed[whole] >> (k * bits)) & mask


def _encoding(array: np.ndarray, encoding: str) -> tuple[int, int]:
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    if encoding == "auto":
        return choose_encoding(array)
    compression = (pb.VOLUME_COMPRESSION_GZIP if encoding.startswith("gzip")
                   else pb.VOLUME_COMPRESSION_UNSPECIFIED)
    bits = packed_bits(array) if encoding.endswith("packed") else 0
    if encoding.endswith("packed") and bits == 0:
        raise ValueError("encoding 'packed' needs integer voxels within 0..15")
    return compression, bits


def gzip_member(data) -> bytes:
    """One complete gzip member of `data` (deflate level GZIP_LEVEL)."""
    packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def volume_chunks(volume: Volume, role: str, chunk_size: int = CHUNK_SIZE,
                  digest: str | None = None, encoding: str = "raw") -> Iterator[pb.VolumeChunk]:
    """A Volume as RAW chunks: header first (with the SHA-256 of the decoded voxels,
    computed here unless the caller already has it), then data.

    encoding: "raw" (plain voxels), "gzip" (one gzip member per `chunk_size` bytes of the
    voxel stream), "packed" (bit-packed, integer voxels within 0..15), "gzip+packed", or
    "auto" (choose_encoding: gzip+packed for masks, raw for anything else).
    """
    compression, bits = _encoding(volume.array, encoding)
    data = raw_bytes(volume.array)
    digest = digest or hashlib.sha256(data).hexdigest()
    header = volume_header(volume, role, digest)
    header.compression = compression
    header.bits_per_voxel = bits
    if compression:
        header.chunk_bytes = chunk_size
    yield pb.VolumeChunk(header=header)
    if bits:
        flat = volume.array.reshape(-1)
        voxels = chunk_size * 8 // bits  # whole bytes of the stream per chunk
        pieces = (pack(flat[start:start + voxels], bits) for start in range(0, len(flat), voxels))
    else:
        pieces = (bytes(data[start:start + chunk_size]) for start in range(0, len(data), chunk_size))
    for piece in pieces:
        yield pb.VolumeChunk(data=gzip_member(piece) if compression else piece)


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
    compressed: bool = False  # travelled with a VolumeHeader.compression


def check_header(header: pb.VolumeHeader, max_bytes: int) -> None:
    """Validate a header before allocating anything for it."""
    if not header.role:
        raise VolumeError("", "header.role", "role is empty (expected e.g. 'ct' or 'mask')")
    if header.total_bytes > max_bytes:
        raise VolumeTooLarge(f"volume '{header.role}': {header.total_bytes} bytes exceeds the "
                             f"limit of {max_bytes} bytes")
    if header.encoding == pb.VOLUME_ENCODING_NIFTI:
        if header.total_bytes == 0:
            raise VolumeError(header.role, "header.total_bytes", "total_bytes is 0: the file is empty")
        for name in ("compression", "bits_per_voxel", "chunk_bytes"):
            if getattr(header, name):
                raise VolumeError(header.role, f"header.{name}", f"{name} applies to RAW volumes "
                                  f"only (a NIfTI file may be .nii.gz)")
        return
    if header.encoding not in (pb.VOLUME_ENCODING_UNSPECIFIED, pb.VOLUME_ENCODING_RAW):
        raise VolumeError(header.role, "header.encoding", f"unknown encoding {header.encoding}")
    if len(header.size) != 3:
        raise VolumeError(header.role, "header.size", f"size must have 3 values (x, y, z), "
                          f"got {len(header.size)}")
    if any(s == 0 or s > MAX_VOXELS_PER_AXIS for s in header.size):
        raise VolumeError(header.role, "header.size", f"size {list(header.size)} is out of range "
                          f"(1..{MAX_VOXELS_PER_AXIS} voxels per axis)")
    if header.voxel_type not in VOXEL_DTYPES:
        raise VolumeError(header.role, "header.voxel_type", f"voxel_type {header.voxel_type} is "
                          f"not a known voxel type")
    expected = int(np.prod(header.size, dtype=np.uint64)) * VOXEL_DTYPES[header.voxel_type].itemsize
    if expected > max_bytes:
        raise VolumeTooLarge(f"volume '{header.role}': size {list(header.size)} needs "
                             f"{expected} bytes, over the limit of {max_bytes} bytes")
    if header.total_bytes != expected:
        raise VolumeError(header.role, "header.total_bytes", f"total_bytes {header.total_bytes} "
                          f"does not match size x voxel type ({expected} bytes)")
    if header.compression not in (pb.VOLUME_COMPRESSION_UNSPECIFIED, pb.VOLUME_COMPRESSION_GZIP):
        raise VolumeError(header.role, "header.compression", f"unknown compression {header.compression}")
    if header.bits_per_voxel not in (0, *PACKABLE_BITS):
        raise VolumeError(header.role, "header.bits_per_voxel", f"bits_per_voxel must be 0, 1, 2 "
                          f"or 4, got {header.bits_per_voxel}")
    if header.bits_per_voxel and VOXEL_DTYPES[header.voxel_type].kind not in "ui":
        raise VolumeError(header.role, "header.bits_per_voxel", "bits_per_voxel needs an integer "
                          "voxel type")
    if header.compression and not 1 <= header.chunk_bytes <= MAX_CHUNK_BYTES:
        raise VolumeError(header.role, "header.chunk_bytes", f"chunk_bytes must be "
                          f"1..{MAX_CHUNK_BYTES} with compression, got {header.chunk_bytes}")
    if not header.compression and header.chunk_bytes:
        raise VolumeError(header.role, "header.chunk_bytes", "chunk_bytes is only for compressed "
                          "volumes")
    for name, values in (("spacing", header.spacing), ("origin", header.origin)):
        if len(values) != 3 or not all(np.isfinite(values)):
            raise VolumeError(header.role, f"header.{name}", f"{name} must be 3 finite numbers")
    if any(s <= 0 for s in header.spacing):
        raise VolumeError(header.role, "header.spacing", f"spacing {list(header.spacing)} must be positive")
    if header.direction:
        if len(header.direction) != 9:
            raise VolumeError(header.role, "header.direction", "direction must have 9 values")
        d = np.asarray(header.direction).reshape(3, 3)
        if not np.allclose(d @ d.T, np.eye(3), atol=1e-3):
            raise VolumeError(header.role, "header.direction", "direction is not an orthonormal matrix")


class VolumeAssembler:
    """Rebuilds volumes from VolumeChunk messages, checking every limit on the way.

    RAW voxels land in one array preallocated from the (checked) header and are hashed
    chunk by chunk as they arrive, so the end of a stream costs nothing; gzip chunks are
    inflated at most to their declared size, bit-packed ones unpacked straight into place.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_VOLUME_BYTES):
        self.max_bytes = max_bytes
        self.done: list[ReceivedVolume] = []
        self._header: pb.VolumeHeader | None = None
        self._buffer: bytearray | None = None  # NIfTI file bytes
        self._voxels: np.ndarray | None = None  # RAW: decoded voxels, flat
        self._bytes: memoryview | None = None  # RAW: the same memory as bytes
        self._stream = 0  # bytes of the (packed) voxel stream expected
        self._filled = 0  # bytes of it received (decoded)
        self._hash = hashlib.sha256()

    def add(self, chunk: pb.VolumeChunk) -> None:
        part = chunk.WhichOneof("part")
        if part == "header":
            self._expect_complete()
            header = chunk.header
            check_header(header, self.max_bytes)
            self._header = header
            self._filled = 0
            self._hash = hashlib.sha256()
            if header.encoding == pb.VOLUME_ENCODING_NIFTI:
                self._buffer = bytearray(header.total_bytes)
                self._stream = header.total_bytes
            else:
                dtype = VOXEL_DTYPES[header.voxel_type]
                count = header.total_bytes // dtype.itemsize
                self._voxels = np.empty(count, dtype)
                self._bytes = memoryview(self._voxels.view(np.uint8))
                bits = header.bits_per_voxel
                self._stream = (count * bits + 7) // 8 if bits else header.total_bytes
            if self._stream == 0:
                self._finish()
        elif part == "data":
            if self._header is None:
                raise VolumeError("", "data", "volume data arrived before any volume header")
            header = self._header
            data = chunk.data
            if header.compression:
                data = self._inflate(data)
            end = self._filled + len(data)
            if end > self._stream:
                raise VolumeError(header.role, "data", f"more data than the header's "
                                  f"total_bytes ({header.total_bytes})")
            if header.encoding == pb.VOLUME_ENCODING_NIFTI:
                self._buffer[self._filled:end] = data
                self._hash.update(data)
            elif header.bits_per_voxel:
                per_byte = 8 // header.bits_per_voxel
                first = self._filled * per_byte
                last = min(end * per_byte, len(self._voxels))
                unpack_into(data, header.bits_per_voxel, self._voxels[first:last])
                size = self._voxels.dtype.itemsize
                self._hash.update(self._bytes[first * size:last * size])
            else:
                self._bytes[self._filled:end] = data
                self._hash.update(data)
            self._filled = end
            if self._filled == self._stream:
                self._finish()
        else:
            raise VolumeError("", "part", "empty volume chunk (neither header nor data)")

    def _inflate(self, data: bytes) -> bytes:
        """One gzip member inflated to exactly its declared size, never beyond it."""
        header = self._header
        expected = min(header.chunk_bytes, self._stream - self._filled)
        if expected <= 0:
            raise VolumeError(header.role, "data", f"more data than the header's total_bytes "
                              f"({header.total_bytes})")
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = inflater.decompress(data, expected)
            if inflater.unconsumed_tail or (not inflater.eof and inflater.decompress(b"", 1)):
                raise VolumeError(header.role, "data", f"a gzip chunk inflates beyond its declared "
                                  f"{expected} bytes (chunk_bytes)")
        except zlib.error as exc:
            raise VolumeError(header.role, "data", f"corrupt gzip chunk ({exc})") from None
        if not inflater.eof:
            raise VolumeError(header.role, "data", "truncated gzip chunk")
        if inflater.unused_data:
            raise VolumeError(header.role, "data", "bytes after the gzip member of a chunk "
                              "(one member per chunk)")
        if len(out) != expected:
            raise VolumeError(header.role, "data", f"a gzip chunk inflates to {len(out)} bytes, "
                              f"not its declared {expected} (chunk_bytes)")
        return out

    def finish(self) -> list[ReceivedVolume]:
        """All volumes, once the stream ended. Raises if one is incomplete."""
        self._expect_complete()
        return self.done

    def _expect_complete(self) -> None:
        if self._header is not None:
            raise VolumeError(self._header.role, "data", f"truncated: got {self._filled} of "
                              f"{self._stream} bytes")

    def _finish(self) -> None:
        header = self._header
        self._header = None
        if header.sha256 and header.sha256.lower() != self._hash.hexdigest():
            raise DigestMismatch(f"volume '{header.role}': data digest {self._hash.hexdigest()} "
                                 f"does not match the header's sha256 {header.sha256}")
        if header.encoding == pb.VOLUME_ENCODING_NIFTI:
            data, self._buffer = self._buffer, None
            volume = decode_nifti(bytes(data), self.max_bytes, header.role)
            digest = volume.sha256()
        else:
            array, self._voxels, self._bytes = self._voxels, None, None
            array = array.reshape(tuple(reversed(header.size))).astype(
                array.dtype.newbyteorder("="), copy=False)
            volume = Volume(array, tuple(header.spacing), tuple(header.origin),
                            tuple(header.direction) or IDENTITY)
            digest = self._hash.hexdigest()
        if header.labels:
            volume.labels = {e.value: e.name for e in header.labels}
        self.done.append(ReceivedVolume(header.role, volume, digest, volume.array.nbytes,
                                        compressed=bool(header.compression)))


# --- NIfTI ---------------------------------------------------------------------------

_NIFTI_BITPIX = {2: 8, 4: 16, 8: 32, 16: 32, 64: 64, 256: 8, 512: 16, 768: 32, 1024: 64, 1280: 64}


def gunzip_limited(data: bytes, max_bytes: int, role: str = "") -> bytes:
    """Decompress gzip data, refusing to inflate beyond max_bytes (gzip bombs)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise VolumeError(role, "data", f"corrupt gzip data ({exc})") from None
    if len(out) > max_bytes:
        raise VolumeTooLarge(f"volume '{role}': decompresses to more than {max_bytes} bytes")
    if not inflater.eof:
        raise VolumeError(role, "data", "truncated gzip data")
    return out


_NIFTI_COLOUR = {128: "RGB", 2304: "RGBA", 32: "complex", 1792: "complex", 2048: "complex"}
# Bytes accepted after a gzip NIfTI's image data before it counts as a gzip bomb.
_NIFTI_TRAILING_SLACK = 1 << 16


def _nifti_error(role: str, reason: str) -> VolumeError:
    return VolumeError(role, "data", reason)


def nifti_data_end(header: bytes) -> int:
    """Byte offset where a (checked) NIfTI-1 header's image data ends."""
    endian = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
    dims = struct.unpack(endian + "8h", header[40:56])
    bitpix = struct.unpack(endian + "h", header[72:74])[0]
    vox_offset = struct.unpack(endian + "f", header[108:112])[0]
    return int(vox_offset) + int(np.prod(dims[1:4], dtype=np.uint64)) * bitpix // 8


def check_nifti_header(header: bytes, max_bytes: int, role: str = "",
                       available: int | None = None) -> None:
    """Check a NIfTI-1 header (first 348 bytes) before any library allocates for it:
    dimensions, voxel type, spacing (pixdim), data offset, and (when `available` is the
    file's size) that the file holds all the data the header declares."""
    if not header:
        raise _nifti_error(role, "the file is empty (0 bytes)")
    if len(header) < 348:
        raise _nifti_error(role, f"not a NIfTI file (only {len(header)} bytes)")
    sizes = {struct.unpack(e + "i", header[:4])[0]: e for e in "<>"}
    if 540 in sizes:
        raise _nifti_error(role, "NIfTI-2 files are not supported: save the image as NIfTI-1")
    if 348 not in sizes:
        raise _nifti_error(role, "not a NIfTI-1 file (sizeof_hdr is not 348)")
    endian = sizes[348]
    magic = header[344:348]
    if magic == b"ni1\x00":
        raise _nifti_error(role, "a NIfTI .hdr/.img pair is not supported: send one .nii/.nii.gz file")
    if magic != b"n+1\x00":
        raise _nifti_error(role, f"not a NIfTI-1 file (magic {magic!r}, expected b'n+1\\x00')")
    dims = struct.unpack(endian + "8h", header[40:56])
    datatype, bitpix = struct.unpack(endian + "hh", header[70:74])
    pixdim = struct.unpack(endian + "8f", header[76:108])
    vox_offset = struct.unpack(endian + "f", header[108:112])[0]
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise _nifti_error(role, f"NIfTI header has invalid dimensions: dim[0] = {ndim} "
                                 f"(expected 1..7)")
    if any(d < 1 for d in dims[1:ndim + 1]):
        raise _nifti_error(role, f"NIfTI header has invalid dimensions {dims[1:ndim + 1]} "
                                 f"(each must be >= 1)")
    if ndim < 3:
        raise _nifti_error(role, f"image is {ndim}D, a 3D volume is required")
    if any(d > 1 for d in dims[4:ndim + 1]):
        raise _nifti_error(role, f"image has more than 3 dimensions {dims[1:ndim + 1]}: "
                                 f"a 3D volume is required")
    if datatype in _NIFTI_COLOUR:
        raise _nifti_error(role, f"{_NIFTI_COLOUR[datatype]} voxels (NIfTI datatype {datatype}) "
                                 f"are not supported: a single-component scalar volume is required")
    if datatype not in _NIFTI_BITPIX or _NIFTI_BITPIX[datatype] != bitpix:
        raise _nifti_error(role, f"unsupported NIfTI datatype {datatype} (bitpix {bitpix})")
    if any(d > MAX_VOXELS_PER_AXIS for d in dims[1:4]):
        raise _nifti_error(role, f"size {dims[1:4]} is out of range "
                                 f"(1..{MAX_VOXELS_PER_AXIS} voxels per axis)")
    spacing = pixdim[1:4]
    if not all(np.isfinite(spacing)) or any(s <= 0 for s in spacing):
        raise _nifti_error(role, f"pixdim (voxel spacing) {[float(s) for s in spacing]} must be "
                                 f"3 finite positive numbers")
    if not np.isfinite(vox_offset) or vox_offset < 352:
        raise _nifti_error(role, f"vox_offset {vox_offset} is invalid (a single-file NIfTI-1 "
                                 f"has its data at byte 352 or later)")
    needed = int(np.prod(dims[1:4], dtype=np.uint64)) * bitpix // 8
    if needed > max_bytes:
        raise VolumeTooLarge(f"{f'volume {role!r}: ' if role else ''}size {dims[1:4]} needs "
                             f"{needed} bytes, over the limit of {max_bytes} bytes")
    if available is not None and available < int(vox_offset) + needed:
        raise _nifti_error(role, f"NIfTI data is truncated: the header declares "
                                 f"{int(vox_offset) + needed} bytes, the file holds {available}")


def _gunzip_nifti(data: bytes, max_bytes: int, role: str) -> bytes:
    """Inflate a gzip NIfTI: its header first (checked), then only as many bytes as that
    header declares (plus a little slack): a gzip bomb is refused without inflating it."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = bytearray(inflater.decompress(data, 348))
        if len(out) < 348 and not inflater.eof:
            raise _nifti_error(role, "truncated gzip data")
        check_nifti_header(bytes(out), max_bytes, role)
        limit = nifti_data_end(bytes(out)) + _NIFTI_TRAILING_SLACK
        out += inflater.decompress(inflater.unconsumed_tail, limit - len(out))
        if not inflater.eof:
            if inflater.decompress(inflater.unconsumed_tail, 1):
                raise _nifti_error(role, f"gzip data inflates beyond the {nifti_data_end(bytes(out[:348]))} "
                                         f"bytes its NIfTI header declares (a gzip bomb?)")
            raise _nifti_error(role, "truncated gzip data")
    except zlib.error as exc:
        raise _nifti_error(role, f"corrupt gzip data ({exc})") from None
    return bytes(out)


def readable_itk_error(exc: BaseException, *paths) -> str:
    """The last line of a SimpleITK error, without any server path in it."""
    text = str(exc).strip()
    line = text.splitlines()[-1] if text else "unreadable"
    for prefix in ("ITK ERROR:", "sitk::ERROR:"):
        line = line.removeprefix(prefix).strip()
    for path in paths:
        line = line.replace(str(path), Path(path).name)
    line = re.sub(r"(?<![\w.])/[^\s'\"():,]+", "<file>", line)
    if "orthonormal" in line:
        return ("qform/sform does not define an orthonormal direction (degenerate or sheared "
                "matrix and no valid alternative)")
    return line[:300]


def decode_nifti(data: bytes, max_bytes: int, role: str = "") -> Volume:
    """A NIfTI file's bytes (plain or gzip) to a Volume, after checking the header."""
    if data[:2] == b"\x1f\x8b":
        data = _gunzip_nifti(data, max_bytes, role)
    check_nifti_header(data[:348], max_bytes, role, available=len(data))
    with tempfile.TemporaryDirectory(prefix="medseg-nifti-") as tmp:
        path = Path(tmp) / "volume.nii"
        path.write_bytes(data)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise _nifti_error(role, f"unreadable NIfTI ({readable_itk_error(exc, path)})") from None
    try:
        return Volume.from_image(image)
    except ValueError as exc:
        raise _nifti_error(role, str(exc)) from None


def read_nifti_header_of_file(path: Path) -> bytes:
    """The first 348 bytes of a .nii or .nii.gz file (decompressing only that much)."""
    with path.open("rb") as f:
        magic = f.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as f:
            header = f.read(348)
    except (OSError, EOFError, zlib.error) as exc:
        raise VolumeError("", "data", f"corrupt gzip data ({exc})") from None
    if opener is gzip.open and len(header) < 348:
        raise VolumeError("", "data", "truncated gzip data")
    return header


def check_nifti_gzip_file(path: Path, header: bytes) -> None:
    """Inflate a checked .nii.gz file once without keeping it: it must hold all the data its
    header declares (a truncated file is refused, not zero-filled) and not much more (a gzip
    bomb is refused after inflating only what the header declares)."""
    end = nifti_data_end(header)
    limit = end + _NIFTI_TRAILING_SLACK
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while block := f.read(min(CHUNK_SIZE, limit + 1 - total)):
                total += len(block)
                if total > limit:
                    raise VolumeError("", "data", f"gzip data inflates beyond the {end} bytes its "
                                                  f"NIfTI header declares (a gzip bomb?)")
    except (OSError, EOFError, zlib.error) as exc:
        raise VolumeError("", "data", f"truncated or corrupt gzip data ({exc.__class__.__name__})") from None
    if total < end:
        raise VolumeError("", "data", f"NIfTI data is truncated: the header declares {end} bytes, "
                                      f"the file holds {total}")
