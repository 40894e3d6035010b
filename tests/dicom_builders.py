"""Real-world-shaped DICOM series for the tests: pydicom's bundled CT_small.dcm / MR_small.dcm
repeated along their normal (new SOP instances, one series), and the phantom written as CT
with medseg.dicom.write. Each builder writes real files that the code under test reads."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medseg.dicom.write import write_series
from medseg.phantom import make_phantom


def stack_of(name: str, folder: Path, n: int = 8, step: float = 5.0, *, series_uid: str | None = None,
             description: str = "", skip: tuple[int, ...] = (), positions=None, start: int = 0) -> list[Path]:
    """n copies of a bundled test file as one series, `step` mm apart along the normal
    (indices in `skip` left out: missing slices). Returns the files written."""
    template = pydicom.dcmread(get_testdata_file(name))
    series_uid = series_uid or generate_uid()
    orientation = np.array([float(v) for v in template.ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.array([float(v) for v in template.ImagePositionPatient])
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for k in range(n):
        if k in skip:
            continue
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = start + k + 1
        if description:
            ds.SeriesDescription = description
        position = positions[k] if positions is not None else origin + normal * step * k
        ds.ImagePositionPatient = [float(v) for v in position]
        path = folder / f"IM{start + k + 1:04d}"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def phantom_volume(size=(48, 48, 32), seed=3, direction=None, phase="portal"):
    kwargs = {} if direction is None else {"direction": tuple(np.asarray(direction, float).reshape(-1))}
    case = make_phantom(size=size, seed=seed, **kwargs)
    return case, case.phases[phase]


def rotation_x(degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])


def oblique_direction() -> np.ndarray:
    """A double-oblique right-handed direction (15 deg about x, then 10 deg about z)."""
    b = math.radians(10)
    rz = np.array([[math.cos(b), -math.sin(b), 0], [math.sin(b), math.cos(b), 0], [0, 0, 1]])
    return rz @ rotation_x(15)


def write_phantom_series(folder: Path, size=(48, 48, 32), seed=3, direction=None, **attributes):
    case, volume = phantom_volume(size, seed, direction)
    files = write_series(volume, folder, **attributes)
    return case, volume, files


__all__ = ["stack_of", "phantom_volume", "rotation_x", "oblique_direction", "write_phantom_series", "write_series"]
