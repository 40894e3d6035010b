"""A Volume written as a classic CT series (one CT Image Storage file per slice) with
pydicom: the phantom as a hospital would send it, and the source of test series.

Stored values are unsigned (HU + 1024) with RescaleIntercept -1024, as most scanners
write them. Slices are written along the volume's third axis, which must be the normal of
its first two (a right-handed direction): DICOM has no other way to say slice order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.volumes import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _uid() -> str:
    from pydicom.uid import generate_uid

    return generate_uid()


def series_datasets(volume: Volume, *, study_uid: str | None = None, series_uid: str | None = None,
                    frame_of_reference_uid: str | None = None, modality: str = "CT",
                    description: str = "medseg phantom", series_number: int = 1,
                    patient_id: str = "PHANTOM", patient_name: str = "Phantom^Medseg",
                    contrast: str = "", acquisition_time: str = "120000",
                    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
                    reverse_instances: bool = False, intercept: float = -1024.0):
    """The datasets of the series, in slice order (index 0 = the volume's z = 0).
    reverse_instances numbers them the other way (InstanceNumber 1 = last slice)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    d = np.asarray(volume.direction).reshape(3, 3)
    if np.linalg.det(d) < 0:
        raise ValueError("a left-handed direction cannot be written as DICOM slices; flip the z axis first")
    study_uid, series_uid = study_uid or _uid(), series_uid or _uid()
    frame_of_reference_uid = frame_of_reference_uid or _uid()
    sx, sy, sz = volume.spacing
    nz = volume.array.shape[0]
    stored = np.rint(volume.array.astype(np.float64) - intercept)
    if stored.min() < 0 or stored.max() > 65535:
        raise ValueError(f"values {volume.array.min()}..{volume.array.max()} do not fit 16 bits with intercept {intercept}")
    stored = stored.astype(np.uint16)
    datasets = []
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = _uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = "20260101"
        ds.StudyTime, ds.SeriesTime, ds.AcquisitionTime = "120000", acquisition_time, acquisition_time
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "MEDSEG1", ""
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber = modality, description, series_number
        ds.Manufacturer = "medseg"
        ds.InstanceNumber = (nz - k) if reverse_instances else (k + 1)
        ds.ImageType = list(image_type)
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference_uid, ""
        ds.ImagePositionPatient = [float(v) for v in np.asarray(volume.origin) + d[:, 2] * sz * k]
        ds.ImageOrientationPatient = [float(v) for v in np.concatenate([d[:, 0], d[:, 1]])]
        ds.PixelSpacing = [sy, sx]
        ds.SliceThickness = sz
        if contrast:
            ds.ContrastBolusAgent = contrast
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = volume.array.shape[1], volume.array.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, 1, "HU"
        ds.KVP, ds.GantryDetectorTilt = 120, 0
        ds.PixelData = stored[k].tobytes()
        datasets.append(ds)
    return datasets


def write_series(volume: Volume, folder: str | Path, name: str = "IM{:04d}.dcm", **attributes) -> list[Path]:
    """Write the series into folder (created); returns the files in slice order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ds in enumerate(series_datasets(volume, **attributes)):
        path = folder / name.format(k + 1)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# Series descriptions and acquisition times of a phantom study: what medseg.dicom.phases reads.
STUDY_SERIES = {"arterial": ("Abdomen arterial 3.0", "120130"), "portal": ("Abdomen portal venous 3.0", "120210"),
                "delayed": ("Abdomen delayed excretory 3.0", "120800")}


def write_study(phases: dict[str, Volume], folder: str | Path, **attributes) -> dict[str, Path]:
    """Each phase as a CT series of one study (same Study and Frame of Reference UIDs) under
    folder/<phase>/, described so the phase rules assign them; returns phase -> folder."""
    folder = Path(folder)
    study_uid, frame_of_reference_uid = _uid(), _uid()
    written = {}
    for number, (phase, volume) in enumerate(phases.items(), start=2):
        description, time = STUDY_SERIES.get(phase, (phase, "120000"))
        write_series(volume, folder / phase, study_uid=study_uid, frame_of_reference_uid=frame_of_reference_uid,
                     description=description, series_number=number, contrast="IOHEXOL 350",
                     acquisition_time=time, **attributes)
        written[phase] = folder / phase
    return written
