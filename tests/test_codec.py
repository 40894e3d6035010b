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
