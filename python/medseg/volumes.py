"""In-memory volumes with ITK geometry, and reading/writing them with SimpleITK.

A Volume holds the voxel array in numpy (z, y, x) order, exactly as
SimpleITK.GetArrayFromImage returns it, plus geometry in ITK order: spacing (x, y, z) mm,
origin (x, y, z) mm in LPS, direction as a row-major 3x3 tuple. Science code takes and
returns Volumes (or arrays + geometry) and knows nothing of gRPC.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass
class Volume:
    """A 3D image or mask with its physical geometry.

    array: (z, y, x) voxels. spacing/origin: (x, y, z) mm. direction: row-major 3x3.
    labels: label table {value: name} for masks, None for images.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = IDENTITY
    labels: dict[int, str] | None = field(default=None)

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = tuple(float(d) for d in self.direction)

    @property
    def size(self) -> tuple[int, int, int]:
        """Voxels along x, y, z (ITK order)."""
        z, y, x = self.array.shape
        return (x, y, z)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def with_array(self, array: np.ndarray, labels: dict[int, str] | None = None) -> "Volume":
        """Same geometry, other voxels (e.g. a mask computed from this image)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from volume shape {self.array.shape}")
        return replace(self, array=array, labels=labels)

    def same_grid(self, other: "Volume", tol: float = 1e-4) -> bool:
        """True when both volumes share size, spacing, origin and direction."""
        return (
            self.array.shape == other.array.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def crop(self, box: tuple[slice, slice, slice]) -> "Volume":
        """The sub-volume inside a (z, y, x) index box, its origin moved so every voxel keeps
        its physical position (spacing, direction and labels unchanged; the array is a view)."""
        z, y, x = (s.start or 0 for s in box)
        origin = self.index_to_physical_matrix() @ np.array([x, y, z, 1.0])
        return replace(self, array=self.array[box], origin=tuple(float(v) for v in origin[:3]))

    def index_to_physical_matrix(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous voxel index (x, y, z, 1) to LPS mm."""
        m = np.eye(4)
        m[:3, :3] = np.asarray(self.direction).reshape(3, 3) @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def sha256(self) -> str:
        """Digest of the voxel bytes as little-endian, x fastest (the wire's RAW layout)."""
        return hashlib.sha256(raw_bytes(self.array)).hexdigest()

    def to_image(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def from_image(cls, image: sitk.Image, labels: dict[int, str] | None = None) -> "Volume":
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(f"expected one value per voxel, got {image.GetNumberOfComponentsPerPixel()}")
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=image.GetDirection(),
            labels=labels,
        )


def raw_bytes(array: np.ndarray) -> memoryview:
    """The array's voxels as little-endian bytes in C order (x fastest for (z, y, x))."""
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return memoryview(np.ascontiguousarray(little)).cast("B")


def read_volume(path: str | Path, labels: dict[int, str] | None = None, *, series_uid: str | tuple[str, ...] = "",
                allow_non_ct: bool = False) -> Volume:
    """Read a NIfTI/NRRD/MHA file, or DICOM (a folder, DICOMDIR, zip or multi-frame file:
    one series, checked by medseg.dicom before its geometry is trusted) into a Volume."""
    path = Path(path)
    from medseg.dicom.sources import looks_like_dicom_source

    if looks_like_dicom_source(path):
        from medseg.dicom import read_dicom

        volume = read_dicom(path, series_uid=series_uid, allow_non_ct=allow_non_ct).volume
        volume.labels = labels
        return volume
    _refuse_unsupported(path)
    image = sitk.ReadImage(str(path))
    if labels is None:  # a table kept beside or inside the file (medseg.labelfiles)
        from medseg.labelfiles import labels_from_metadata, read_sidecar

        labels = labels_from_metadata(image) or read_sidecar(path)
    return Volume.from_image(image, labels)


def _refuse_unsupported(path: Path) -> None:
    """Formats users send that ITK cannot read, named with what to do (ITK's own message
    says only 'Unable to determine ImageIO reader')."""
    name = path.name.lower()
    if name.endswith((".mgz", ".mgh")):
        raise ValueError("FreeSurfer MGH/MGZ is not supported: convert it to NIfTI "
                         "(e.g. mri_convert in.mgz out.nii.gz, or nibabel)")
    if name.endswith((".nii", ".nii.gz")) and path.is_file():
        import gzip

        with path.open("rb") as f:
            head = f.read(4)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                head = f.read(4)
        if len(head) == 4 and 540 in (int.from_bytes(head, "little"), int.from_bytes(head, "big")):
            raise ValueError("is NIfTI-2, which is not supported: save it as NIfTI-1 "
                             "(e.g. nibabel: nib.save(nib.Nifti1Image(img.dataobj, img.affine), 'out.nii.gz'))")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary file in the target's folder (same suffix, so writers
    that choose the format by name still do), then rename it into place: a reader never sees
    a half-written file, and a failure leaves none behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{suffix}", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_volume(volume: Volume, path: str | Path) -> Path:
    """Write atomically (see atomic_write); `.gz` names are compressed."""
    path = Path(path)
    image = volume.to_image()
    return atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=path.name.endswith(".gz")))
