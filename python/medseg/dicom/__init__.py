"""Hospital DICOM: find the series in a folder, DICOMDIR or zip, check it before its
geometry is trusted, read it into a Volume; DICOM-SEG out (medseg.dicom.seg, highdicom);
DICOMweb pull and push (medseg.dicom.web, dicomweb-client).

    from medseg.dicom import read_dicom, list_series
    read = read_dicom("CD/", series_uid="1.2.3")   # DicomError (a ValueError) when not trusted
    read.volume, read.notes, read.series.uid

pydicom is a dependency of the SDK (every reader of a DICOM folder runs these checks);
highdicom and dicomweb-client come with the `dicom` extra (`pip install 'medseg[dicom]'`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Collection

from medseg.dicom.errors import DicomError
from medseg.dicom.series import CheckedSeries, Series, check, choose, scan, to_volume
from medseg.dicom.sources import dicom_files, looks_like_dicom_source
from medseg.volumes import Volume

__all__ = ["DicomError", "DicomRead", "Series", "list_series", "looks_like_dicom_source", "read_dicom"]


@dataclass
class DicomRead:
    """A series read and checked: the volume, the series, and what QC tolerated."""

    volume: Volume
    series: Series
    checked: CheckedSeries
    notes: list[str]
    pacs: tuple[str, str] | None = None  # (DICOMweb root, study UID) when pulled from a PACS

    @property
    def resampled(self) -> bool:
        """The volume's grid is not the frames' grid (gantry tilt corrected)."""
        return bool(self.checked.tilt_deg)


def list_series(source: str | Path) -> list[Series]:
    """Every image series in a folder (recursively), DICOMDIR, zip or file."""
    with dicom_files(Path(source)) as files:
        return scan(files)


def read_dicom(source: str | Path, series_uid: str | Collection[str] = "", allow_non_ct: bool = False,
               max_bytes: int | None = None) -> DicomRead:
    """Discover, choose (`series_uid`, or the only series), check and read a series.

    allow_non_ct: research override of the modality and HU-plausibility rules.
    max_bytes: refuse (medseg.codec.VolumeTooLarge) before decoding a series whose voxels
    would need more (at 4 bytes a voxel, the widest a rescaled series takes)."""
    with dicom_files(Path(source)) as files:
        if not files:
            raise DicomError("holds no files (an empty folder, or a DICOMDIR that references none)")
        candidates = scan(files)
        if not candidates:
            raise DicomError(f"holds no DICOM series ({len(files)} file(s), none of them a DICOM image)")
        series = choose(candidates, series_uid)
        if Path(source).is_file() and not series.enhanced and len(series.frames) == 1:
            raise DicomError("is a single DICOM file holding one slice: give the folder holding the whole series")
        checked = check(series, allow_non_ct)
        if max_bytes is not None:
            first = checked.frames[0]
            needed = first.rows * first.columns * len(checked.frames) * 4
            if needed > max_bytes:
                from medseg.codec import VolumeTooLarge

                raise VolumeTooLarge(f"series {series.uid}: {first.columns}x{first.rows}x{len(checked.frames)} "
                                     f"voxels need {needed} bytes, over the limit of {max_bytes}")
        volume = to_volume(checked, allow_non_ct)  # pixels read while the files exist
    return DicomRead(volume=volume, series=series, checked=checked, notes=checked.notes)
