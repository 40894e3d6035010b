"""The volume codec: exact round trips, and every malformed input refused before allocation."""
import gzip

import numpy as np
import pytest

from medseg import codec
from medseg.volume.v1 import volume_pb2 as pb
from medseg.volumes import Volume, write_volume

ROTATED = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def assemble(chunks):
    """Receive a stream of chunks the way servers do."""
    assembler = codec.VolumeAssembler(codec.DEFAULT_MAX_VOLUME_BYTES)
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.finish()


def _volume(dtype=np.int16, shape=(7, 9, 11)):
    rng = np.random.default_rng(0)
    return Volume(rng.integers(-1000, 1000, shape).astype(dtype), (0.8, 0.7, 2.5), (-10.5, 3.0, 99.0), ROTATED)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
def test_raw_round_trip_keeps_bytes_and_geometry(dtype):
    volume = _volume(dtype)
    [received] = assemble(codec.volume_chunks(volume, "ct", chunk_size=100))
    assert received.role == "ct"
    assert received.volume.array.dtype == volume.array.dtype
    assert np.array_equal(received.volume.array, volume.array)
    assert received.volume.spacing == volume.spacing
    assert received.volume.origin == volume.origin
    assert received.volume.direction == volume.direction
    assert received.sha256 == volume.sha256()


def test_label_table_travels_with_the_mask():
    mask = Volume(np.ones((2, 2, 2), np.uint8), labels={0: "background", 1: "kidney"})
    [received] = assemble(codec.volume_chunks(mask, "mask"))
    assert received.volume.labels == {0: "background", 1: "kidney"}


def test_several_volumes_in_one_stream():
    a, b = _volume(np.int16), _volume(np.uint8, (3, 4, 5))
    chunks = list(codec.volume_chunks(a, "arterial", 64)) + list(codec.volume_chunks(b, "portal", 64))
    received = assemble(chunks)
    assert [r.role for r in received] == ["arterial", "portal"]
    assert np.array_equal(received[1].volume.array, b.array)


def test_nifti_file_bytes_decode_to_the_same_voxels(tmp_path):
    volume = _volume()
    write_volume(volume, tmp_path / "ct.nii.gz")
    [received] = assemble(codec.file_volume_chunks(tmp_path / "ct.nii.gz", "ct"))
    assert np.array_equal(received.volume.array, volume.array)
    assert received.sha256 == volume.sha256()
    assert np.allclose(received.volume.direction, volume.direction)


def _header(**overrides):
    fields = dict(role="ct", encoding=pb.VOLUME_ENCODING_RAW, total_bytes=2 * 3 * 4 * 2, size=[4, 3, 2],
                  spacing=[1, 1, 1], origin=[0, 0, 0], voxel_type=pb.VOXEL_TYPE_INT16)
    fields.update(overrides)
    return pb.VolumeChunk(header=pb.VolumeHeader(**fields))


@pytest.mark.parametrize("overrides, error, words", [
    (dict(size=[4, 3]), ValueError, "size must have 3 values"),
    (dict(size=[100000, 100000, 100000]), ValueError, "out of range"),
    (dict(size=[16000, 16000, 16000], voxel_type=pb.VOXEL_TYPE_UINT8, total_bytes=16000 ** 3),
     codec.VolumeTooLarge, "limit"),
    (dict(voxel_type=pb.VOXEL_TYPE_UNSPECIFIED), ValueError, "voxel_type"),
    (dict(total_bytes=7), ValueError, "does not match"),
    (dict(spacing=[1, 0, 1]), ValueError, "spacing"),
    (dict(direction=[1, 1, 1, 0, 0, 0, 0, 0, 0]), ValueError, "orthonormal"),
    (dict(role=""), ValueError, "role"),
])
def test_bad_headers_are_refused_before_allocation(overrides, error, words):
    with pytest.raises(error, match=words):
        codec.VolumeAssembler(max_bytes=1 << 30).add(_header(**overrides))


def test_truncated_and_overlong_data():
    assembler = codec.VolumeAssembler()
    assembler.add(_header())
    assembler.add(pb.VolumeChunk(data=b"\0" * 10))
    with pytest.raises(ValueError, match="truncated"):
        assembler.finish()
    assembler = codec.VolumeAssembler()
    assembler.add(_header())
    with pytest.raises(ValueError, match="more data"):
        assembler.add(pb.VolumeChunk(data=b"\0" * 49))


def test_data_before_header_and_digest_mismatch():
    with pytest.raises(ValueError, match="before any volume header"):
        codec.VolumeAssembler().add(pb.VolumeChunk(data=b"x"))
    assembler = codec.VolumeAssembler()
    assembler.add(_header(sha256="00" * 32))
    with pytest.raises(codec.DigestMismatch):
        assembler.add(pb.VolumeChunk(data=b"\0" * 48))


def test_truncated_gzip_nifti(tmp_path):
    write_volume(_volume(), tmp_path / "ct.nii.gz")
    data = (tmp_path / "ct.nii.gz").read_bytes()
    with pytest.raises(ValueError, match="truncated gzip"):
        codec.decode_nifti(data[: len(data) // 2], 1 << 30, "ct")


def test_gzip_bomb_is_stopped_at_the_limit():
    bomb = gzip.compress(b"\0" * (4 << 20))
    with pytest.raises(codec.VolumeTooLarge):
        codec.gunzip_limited(bomb, 1 << 20, "ct")


def test_nifti_header_checks(tmp_path):
    write_volume(_volume(), tmp_path / "ct.nii")
    data = bytearray((tmp_path / "ct.nii").read_bytes())
    with pytest.raises(ValueError, match="truncated"):
        codec.decode_nifti(bytes(data[:-100]), 1 << 30, "ct")
    with pytest.raises(codec.VolumeTooLarge):
        codec.decode_nifti(bytes(data), 100, "ct")
    corrupt = bytearray(data)
    corrupt[0:4] = b"\x01\x02\x03\x04"
    with pytest.raises(ValueError, match="not a NIfTI-1"):
        codec.decode_nifti(bytes(corrupt), 1 << 30, "ct")
    flat = bytearray(data)
    flat[40:42] = (2).to_bytes(2, "little")  # ndim = 2
    with pytest.raises(ValueError, match="2D"):
        codec.decode_nifti(bytes(flat), 1 << 30, "ct")


def test_unsupported_dtype_cannot_travel():
    with pytest.raises(ValueError, match="cannot travel"):
        list(codec.volume_chunks(Volume(np.zeros((2, 2, 2), np.complex64)), "ct"))


# --------------------------------------------------------------------------- compressed and bit-packed transfer (issue 17)

import hashlib  # noqa: E402  (this section only)


def _mask_volume(high: int = 6, shape=(7, 33, 29), dtype=np.uint8) -> Volume:
    rng = np.random.default_rng(3)
    array = rng.integers(0, high + 1, shape).astype(dtype)
    array[:, :10] = 0  # some structure for gzip
    return Volume(array, (0.8, 0.8, 2.5), (1.0, 2.0, 3.0))


@pytest.mark.parametrize("encoding", ["raw", "gzip", "packed", "gzip+packed", "auto"])
@pytest.mark.parametrize("high", [1, 3, 6, 15])
def test_every_encoding_round_trips_with_the_raw_digest(encoding, high):
    volume = _mask_volume(high)
    raw = hashlib.sha256(volume.array.tobytes()).hexdigest()
    chunks = list(codec.volume_chunks(volume, "mask", chunk_size=97, encoding=encoding))
    [received] = assemble(chunks)
    np.testing.assert_array_equal(received.volume.array, volume.array)
    assert received.sha256 == raw == chunks[0].header.sha256
    header = chunks[0].header
    assert header.total_bytes == volume.array.nbytes
    expected_bits = {1: 1, 3: 2, 6: 4, 15: 4}[high]
    assert header.bits_per_voxel == (expected_bits if "packed" in encoding or encoding == "auto" else 0)
    assert received.compressed == (header.compression == pb.VOLUME_COMPRESSION_GZIP)


def test_wider_voxel_types_and_images():
    for dtype in (np.uint16, np.int32):
        volume = _mask_volume(3, dtype=dtype)
        [received] = assemble(codec.volume_chunks(volume, "mask", chunk_size=50, encoding="gzip+packed"))
        assert received.volume.array.dtype == dtype
        np.testing.assert_array_equal(received.volume.array, volume.array)
    ct = Volume(np.random.default_rng(0).integers(-1024, 2000, (5, 9, 11)).astype(np.int16))
    assert codec.choose_encoding(ct.array) == (pb.VOLUME_COMPRESSION_UNSPECIFIED, 0)  # CT stays raw
    [received] = assemble(codec.volume_chunks(ct, "ct", chunk_size=33, encoding="gzip"))  # odd split of int16
    np.testing.assert_array_equal(received.volume.array, ct.array)
    with pytest.raises(ValueError, match="packed"):
        list(codec.volume_chunks(ct, "ct", encoding="packed"))


def test_phantom_mask_wire_bytes_are_a_tenth_of_raw():
    mask = np.zeros((60, 256, 256), np.uint8)
    mask[10:50, 60:120, 50:110] = 1
    mask[20:30, 80:90, 70:90] = 2
    mask[:, 128:136, 120:128] = 3
    chunks = list(codec.volume_chunks(Volume(mask), "mask", encoding="auto"))
    wire = sum(c.ByteSize() for c in chunks)
    assert wire <= mask.nbytes / 10
    np.testing.assert_array_equal(assemble(chunks)[0].volume.array, mask)


def _compressed(volume, chunk_size=64, **header):
    chunks = list(codec.volume_chunks(volume, "mask", chunk_size=chunk_size, encoding="gzip"))
    for name, value in header.items():
        setattr(chunks[0].header, name, value)
    return chunks


def test_gzip_chunk_bomb_is_refused_before_inflating():
    volume = Volume(np.zeros((4, 16, 16), np.uint8))  # 1024 bytes
    chunks = _compressed(volume, chunk_size=64)
    # A member inflating to far more than its declared 64 bytes (and than the volume).
    chunks[1] = pb.VolumeChunk(data=codec.gzip_member(bytes(50 << 20)))
    with pytest.raises(ValueError, match="beyond its declared 64"):
        assemble(chunks)


def test_wrong_sizes_and_corrupt_chunks_are_refused():
    volume = _mask_volume(6)
    short = _compressed(volume)
    short[1] = pb.VolumeChunk(data=codec.gzip_member(bytes(10)))
    with pytest.raises(ValueError, match="not its declared 64"):
        assemble(short)
    corrupt = _compressed(volume)
    corrupt[2] = pb.VolumeChunk(data=b"\x1f\x8b" + bytes(20))
    with pytest.raises(ValueError, match="corrupt gzip|truncated gzip"):
        assemble(corrupt)
    truncated = _compressed(volume)
    truncated[1] = pb.VolumeChunk(data=truncated[1].data[:-6])
    with pytest.raises(ValueError, match="truncated gzip"):
        assemble(truncated)
    trailing = _compressed(volume)
    trailing[1] = pb.VolumeChunk(data=trailing[1].data + b"xx")
    with pytest.raises(ValueError, match="after the gzip member"):
        assemble(trailing)
    extra = _compressed(volume) + [pb.VolumeChunk(data=codec.gzip_member(b"\0"))]
    with pytest.raises(ValueError, match="before any volume header"):  # the volume was complete
        assemble(extra)
    missing = _compressed(volume)[:-1]
    with pytest.raises(ValueError, match="truncated"):
        assemble(missing)
    digest = _compressed(volume, sha256="00" * 32)
    with pytest.raises(codec.DigestMismatch):
        assemble(digest)


@pytest.mark.parametrize("overrides, words", [
    ({"compression": 7}, "unknown compression"),
    ({"bits_per_voxel": 3}, "bits_per_voxel must be"),
    ({"chunk_bytes": 0}, "chunk_bytes must be"),
    ({"chunk_bytes": (16 << 20) + 1}, "chunk_bytes must be"),
])
def test_bad_compression_headers_are_refused(overrides, words):
    chunks = _compressed(_mask_volume(6), **overrides)
    with pytest.raises(ValueError, match=words):
        codec.VolumeAssembler().add(chunks[0])
    float_packed = pb.VolumeHeader(role="mask", total_bytes=8 * 4, size=[2, 2, 2], spacing=[1, 1, 1],
                                   origin=[0, 0, 0], voxel_type=pb.VOXEL_TYPE_FLOAT32, bits_per_voxel=1)
    with pytest.raises(ValueError, match="integer voxel type"):
        codec.VolumeAssembler().add(pb.VolumeChunk(header=float_packed))
    nifti = pb.VolumeHeader(role="ct", encoding=pb.VOLUME_ENCODING_NIFTI, total_bytes=10,
                            compression=pb.VOLUME_COMPRESSION_GZIP)
    with pytest.raises(ValueError, match="RAW volumes only"):
        codec.VolumeAssembler().add(pb.VolumeChunk(header=nifti))
