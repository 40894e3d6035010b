"""DICOM series: found in a source, chosen, checked, read into a Volume.

Headers are parsed by pydicom; every rule a series must pass before its geometry is
trusted lives in `check` (one function per rule, each failure a DicomError naming the
rule's finding, each tolerated oddity a note). Geometry follows the DICOM standard, not
the file order: slices sorted along the normal of ImageOrientationPatient, origin the
ImagePositionPatient of the first, spacing from the positions (never SliceThickness).
"""
from __future__ import annotations

import math
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection

import numpy as np

from medseg.dicom.errors import DicomError
from medseg.volumes import Volume

# Objects that are not images to segment even though some carry pixels.
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG", "DOC"}

# Slice spacing must not vary more than this (relative to the median step, plus an
# absolute floor for rounded positions); larger steps are gaps, equal positions duplicates.
SPACING_TOLERANCE = 0.05
SPACING_FLOOR_MM = 0.02
DUPLICATE_MM = 0.01
# Orientation vectors equal within this (cosines).
ORIENTATION_TOLERANCE = 1e-3
# In-plane drift of slice positions per slice step (mm/mm) above which the series is tilted.
TILT_TOLERANCE = 1e-3
# HU plausibility of an abdominal CT: some air and some soft tissue.
AIR_HU, AIR_MIN_FRACTION = -500.0, 0.002
SOFT_HU, SOFT_MIN_FRACTION = (-150.0, 250.0), 0.05


@dataclass
class Frame:
    """One 2D image: a classic single-frame file or one frame of an enhanced file."""

    file: Path
    index: int | None  # frame number (0-based) in a multi-frame file, None for classic
    position: np.ndarray | None
    orientation: np.ndarray | None  # 6 cosines: row direction, column direction
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) mm
    sop_uid: str
    instance_number: int
    image_type: tuple[str, ...]
    slope: float = 1.0
    intercept: float = 0.0

    @property
    def where(self) -> str:
        return self.file.name + (f" frame {self.index + 1}" if self.index is not None else "")


@dataclass
class Series:
    """The frames of one SeriesInstanceUID, with what a user needs to tell series apart."""

    uid: str
    study_uid: str
    modality: str
    description: str
    number: int | None
    frames: list[Frame]
    headers: list = field(repr=False, default_factory=list)  # pydicom datasets, no pixels
    contrast: str = ""
    time: str = ""  # AcquisitionTime or SeriesTime, HHMMSS

    @property
    def enhanced(self) -> bool:
        return any(f.index is not None for f in self.frames)

    def summary(self) -> str:
        spacing = _in_plane_spacing(self.frames)
        step = _median_step(self.frames)
        shape = (f"{spacing[1]:.3g} x {spacing[0]:.3g} x {step:.3g} mm" if spacing and step
                 else "spacing unknown")
        return (f"{self.uid}  '{self.description}'  {self.modality}  {len(self.frames)} slices  {shape}"
                + (f"  series {self.number}" if self.number is not None else ""))


@dataclass
class CheckedSeries:
    """A series that passed QC: frames in volume order and the geometry they define."""

    series: Series
    frames: list[Frame]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    notes: list[str]
    tilt_deg: float = 0.0
    step: np.ndarray | None = None  # position difference between consecutive frames


# ------------------------------------------------------------------------------ headers
def _floats(value, n: int) -> np.ndarray | None:
    try:
        array = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return array if array.shape == (n,) else None


def _frames_of(path: Path, ds) -> list[Frame]:
    image_type = tuple(str(v).upper() for v in (ds.get("ImageType") or ()))
    common = dict(file=path, rows=int(ds.get("Rows") or 0), columns=int(ds.get("Columns") or 0))
    frames_count = int(ds.get("NumberOfFrames") or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if frames_count > 1 or per_frame is not None:
        return _enhanced_frames(path, ds, image_type, common, frames_count)
    spacing = _floats(ds.get("PixelSpacing"), 2)
    return [Frame(index=None, position=_floats(ds.get("ImagePositionPatient"), 3),
                  orientation=_floats(ds.get("ImageOrientationPatient"), 6),
                  pixel_spacing=tuple(spacing) if spacing is not None else None,
                  sop_uid=str(ds.get("SOPInstanceUID", "")), instance_number=int(ds.get("InstanceNumber") or 0),
                  image_type=image_type, slope=float(ds.get("RescaleSlope", 1) or 1),
                  intercept=float(ds.get("RescaleIntercept", 0) or 0), **common)]


def _group(item, shared, sequence: str, attribute: str):
    """A functional-group attribute, per-frame first, then shared."""
    for groups in (item, shared):
        if groups is not None and sequence in groups and len(groups[sequence].value):
            value = groups[sequence][0].get(attribute)
            if value is not None:
                return value
    return None


def _enhanced_frames(path: Path, ds, image_type, common, count: int) -> list[Frame]:
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or [None] * count
    frames = []
    for index, item in enumerate(per_frame):
        spacing = _floats(_group(item, shared, "PixelMeasuresSequence", "PixelSpacing"), 2)
        frame_type = _group(item, shared, "CTImageFrameTypeSequence", "FrameType") or image_type
        frames.append(Frame(
            index=index, position=_floats(_group(item, shared, "PlanePositionSequence", "ImagePositionPatient"), 3),
            orientation=_floats(_group(item, shared, "PlaneOrientationSequence", "ImageOrientationPatient"), 6),
            pixel_spacing=tuple(spacing) if spacing is not None else None,
            sop_uid=str(ds.get("SOPInstanceUID", "")), instance_number=index + 1,
            image_type=tuple(str(v).upper() for v in frame_type),
            slope=float(_group(item, shared, "PixelValueTransformationSequence", "RescaleSlope") or 1),
            intercept=float(_group(item, shared, "PixelValueTransformationSequence", "RescaleIntercept") or 0),
            **common))
    return frames


def scan(files: list[Path]) -> list[Series]:
    """Group the image files among `files` by SeriesInstanceUID (non-DICOM files and
    non-image objects such as SEG or SR are left out)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[str, Series] = {}
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError, KeyError):
            continue  # not DICOM, or too broken to name a series
        if "SeriesInstanceUID" not in ds or not ds.get("Rows") or str(ds.get("Modality", "")) in NON_IMAGE_MODALITIES:
            continue
        uid = str(ds.SeriesInstanceUID)
        series = groups.get(uid)
        if series is None:
            number = ds.get("SeriesNumber")
            series = groups[uid] = Series(
                uid=uid, study_uid=str(ds.get("StudyInstanceUID", "")), modality=str(ds.get("Modality", "")),
                description=str(ds.get("SeriesDescription", "") or ""),
                number=int(number) if number not in (None, "") else None, frames=[],
                contrast=str(ds.get("ContrastBolusAgent", "") or ""),
                time=str(ds.get("AcquisitionTime") or ds.get("SeriesTime") or ""))
        series.frames.extend(_frames_of(path, ds))
        series.headers.append(ds)
    return sorted(groups.values(), key=lambda s: (s.study_uid, s.number if s.number is not None else 1 << 30, s.uid))


def choose(candidates: list[Series], series_uid: str | Collection[str] = "") -> Series:
    """The series to read: the one named, or the only one; never a silent pick.
    series_uid may be several UIDs (one per input of a command): the one among them
    that this source holds is read."""
    if not candidates:
        raise DicomError("holds no DICOM image series")
    wanted = {series_uid} if isinstance(series_uid, str) else set(series_uid)
    wanted.discard("")
    if wanted:
        chosen = [s for s in candidates if s.uid in wanted]
        if len(chosen) == 1:
            return chosen[0]
        if chosen:
            raise DicomError(f"holds {len(chosen)} of the chosen series; choose one:\n" + _listing(chosen),
                             field="series_uid")
        raise DicomError(f"has no series {', '.join(sorted(wanted))}; it holds:\n" + _listing(candidates),
                         field="series_uid")
    if len(candidates) > 1:
        raise DicomError(f"holds {len(candidates)} series; choose one by its UID (--series UID, "
                         f"or series_uid in the request):\n" + _listing(candidates), field="series_uid")
    return candidates[0]


def _listing(candidates: list[Series]) -> str:
    return "\n".join("  " + s.summary() for s in candidates)


# ------------------------------------------------------------------------------- geometry
def _in_plane_spacing(frames: list[Frame]) -> tuple[float, float] | None:
    values = [f.pixel_spacing for f in frames if f.pixel_spacing]
    return Counter(values).most_common(1)[0][0] if values else None


def _normal(orientation: np.ndarray) -> np.ndarray:
    return np.cross(orientation[:3], orientation[3:])


def _median_step(frames: list[Frame]) -> float | None:
    placed = [f for f in frames if f.position is not None and f.orientation is not None]
    if len(placed) < 2:
        return None
    d = np.sort([float(f.position @ _normal(placed[0].orientation)) for f in placed])
    steps = np.diff(d)
    steps = steps[steps > DUPLICATE_MM]
    return float(np.median(steps)) if len(steps) else None


# ------------------------------------------------------------------------------- QC rules
def check_modality(series: Series, allow_non_ct: bool, notes: list[str]) -> None:
    if series.modality == "CT":
        return
    if not allow_non_ct:
        raise DicomError(f"series {series.uid} is modality {series.modality or 'unknown'}, not CT: the models "
                         "are trained on CT (allow_non_ct / --allow-non-ct for research use)")
    notes.append(f"modality {series.modality} accepted for research (allow_non_ct); results are not validated")


def check_frame_attributes(frames: list[Frame]) -> None:
    for frame in frames:
        missing = [name for name, value in (("ImagePositionPatient", frame.position),
                                            ("ImageOrientationPatient", frame.orientation),
                                            ("PixelSpacing", frame.pixel_spacing)) if value is None]
        if missing:
            raise DicomError(f"{frame.where} has no valid {', '.join(missing)}: its place in space is unknown")


def drop_localizers(frames: list[Frame], notes: list[str]) -> list[Frame]:
    kept = [f for f in frames if "LOCALIZER" not in f.image_type]
    if not kept:
        raise DicomError(f"the series holds only localizer (scout) images ({len(frames)}), not a CT volume")
    if len(kept) < len(frames):
        notes.append(f"{len(frames) - len(kept)} localizer image(s) dropped: "
                     + ", ".join(f.where for f in frames if "LOCALIZER" in f.image_type)[:200])
    return kept


def check_orientation(frames: list[Frame]) -> np.ndarray:
    reference = frames[0].orientation
    odd = [f for f in frames if not np.allclose(f.orientation, reference, atol=ORIENTATION_TOLERANCE)]
    if odd:
        kinds = Counter(tuple(np.round(f.orientation, 3)) for f in frames)
        raise DicomError(f"slices have {len(kinds)} different orientations (e.g. {frames[0].where} "
                         f"{_cosines(reference)} and {odd[0].where} {_cosines(odd[0].orientation)}): "
                         "not one volume (stacked scouts or mixed reconstructions)")
    row, col = reference[:3], reference[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-2 or abs(np.linalg.norm(col) - 1) > 1e-2 or abs(row @ col) > 1e-2:
        raise DicomError(f"ImageOrientationPatient {_cosines(reference)} is not two orthogonal unit vectors")
    return reference


def _cosines(orientation: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in orientation) + "]"


def check_sizes(frames: list[Frame]) -> None:
    sizes = Counter((f.rows, f.columns) for f in frames)
    if len(sizes) > 1:
        listed = ", ".join(f"{n} of {c}x{r}" for (r, c), n in sizes.most_common())
        raise DicomError(f"slices have different sizes ({listed} pixels): not one volume")
    spacings = Counter(f.pixel_spacing for f in frames)
    if len(spacings) > 1 and not all(np.allclose(s, frames[0].pixel_spacing, rtol=1e-4) for s in spacings):
        listed = ", ".join(f"{n} of {s[1]:.4g} x {s[0]:.4g} mm" for s, n in spacings.most_common())
        raise DicomError(f"slices have different pixel spacings ({listed}): not one volume")


def check_minimum(frames: list[Frame]) -> None:
    if len(frames) < 2:
        raise DicomError(f"holds {len(frames)} slice: a single image, not a volume (give the folder holding the "
                         "whole series)")


def sort_and_drop_duplicates(frames: list[Frame], normal: np.ndarray, notes: list[str]) -> list[Frame]:
    """Frames along the normal; frames at one position are the same slice sent twice (same
    SOP instance, or same pixels: dropped with a note) or a conflict (refused)."""
    frames = sorted(frames, key=lambda f: float(f.position @ normal))
    kept: list[Frame] = [frames[0]]
    dropped = []
    for frame in frames[1:]:
        previous = kept[-1]
        if abs(float((frame.position - previous.position) @ normal)) > DUPLICATE_MM:
            kept.append(frame)
            continue
        if frame.sop_uid == previous.sop_uid or _same_pixels(previous, frame):
            dropped.append(frame)
            continue
        raise DicomError(f"{previous.where} and {frame.where} lie at the same position "
                         f"({_mm(previous.position)}) with different pixels: two acquisitions mixed in one "
                         "series (e.g. several phases or echoes); export them as separate series")
    if dropped:
        notes.append(f"{len(dropped)} duplicate slice(s) dropped (same position and pixels): "
                     + ", ".join(f.where for f in dropped)[:200])
    return kept


def _mm(position: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in position) + ") mm"


def _same_pixels(a: Frame, b: Frame) -> bool:
    return np.array_equal(_pixels(a), _pixels(b)) and (a.slope, a.intercept) == (b.slope, b.intercept)


def check_spacing(frames: list[Frame], normal: np.ndarray) -> float:
    """Uniform steps along the normal; a larger step is a gap (missing slices)."""
    d = np.array([float(f.position @ normal) for f in frames])
    steps = np.diff(d)
    median = float(np.median(steps))
    tolerance = max(SPACING_FLOOR_MM, SPACING_TOLERANCE * median)
    bad = np.flatnonzero(np.abs(steps - median) > tolerance)
    if len(bad) == 0:
        return float(np.mean(steps))
    i = int(bad[np.argmax(np.abs(steps[bad] - median))])
    step = float(steps[i])
    where = f"between {frames[i].where} and {frames[i + 1].where} (at {d[i]:.1f} and {d[i + 1]:.1f} mm)"
    if step > median:
        missing = round(step / median) - 1
        raise DicomError(f"gap of {step:.1f} mm {where} where the other slices are {median:.3g} mm apart: "
                         f"about {missing} slice(s) missing ({len(bad)} irregular step(s)); "
                         "re-export the complete series")
    raise DicomError(f"irregular slice spacing: {step:.3g} mm {where}, {median:.3g} mm elsewhere "
                     f"({len(bad)} irregular step(s)): not one uniformly spaced volume")


def measure_tilt(frames: list[Frame], normal: np.ndarray) -> tuple[float, np.ndarray]:
    """Angle (degrees) between the slice normal and the line through the slice positions
    (gantry tilt: positions drift in-plane from slice to slice), and the mean step."""
    step = (frames[-1].position - frames[0].position) / (len(frames) - 1)
    along = float(step @ normal)
    drift = step - along * normal
    ratio = float(np.linalg.norm(drift)) / abs(along)
    return (math.degrees(math.atan(ratio)) if ratio > TILT_TOLERANCE else 0.0), step


def check(series: Series, allow_non_ct: bool = False) -> CheckedSeries:
    """Every QC rule in order; DicomError at the first failure."""
    notes: list[str] = []
    check_modality(series, allow_non_ct, notes)
    frames = drop_localizers(series.frames, notes)
    check_frame_attributes(frames)
    check_minimum(frames)
    orientation = check_orientation(frames)
    check_sizes(frames)
    normal = _normal(orientation)
    normal /= np.linalg.norm(normal)
    frames = sort_and_drop_duplicates(frames, normal, notes)
    check_minimum(frames)
    step_mm = check_spacing(frames, normal)
    tilt, step = measure_tilt(frames, normal)
    row, col = orientation[:3], orientation[3:]
    direction = tuple(float(v) for v in np.column_stack([row, col, normal]).reshape(-1))
    spacing = frames[0].pixel_spacing
    if tilt:
        notes.append(f"gantry tilt {tilt:.1f} deg corrected by resampling onto an orthogonal grid (as dcm2niix)")
    return CheckedSeries(series=series, frames=frames, spacing=(spacing[1], spacing[0], step_mm),
                         origin=tuple(float(v) for v in frames[0].position), direction=direction,
                         notes=notes, tilt_deg=tilt, step=step)


# ---------------------------------------------------------------------------------- pixels
_CACHE = threading.local()  # the last multi-frame file decoded, per thread (servers read in several)


def _pixels(frame: Frame) -> np.ndarray:
    import pydicom

    try:
        if frame.index is None:
            return pydicom.dcmread(frame.file).pixel_array
        cached = getattr(_CACHE, "frames", None)
        if cached is None or cached[0] != frame.file:
            cached = _CACHE.frames = (frame.file, pydicom.dcmread(frame.file).pixel_array)
        return cached[1][frame.index]
    except Exception as exc:  # noqa: BLE001 - a decoder missing or a broken file: say which
        raise DicomError(f"pixels of {frame.where} cannot be decoded ({exc})") from None


def check_hu(array: np.ndarray, series: Series, allow_non_ct: bool) -> None:
    """An abdominal CT in HU has air (outside the body, bowel) and soft tissue."""
    if allow_non_ct:
        return
    air = float(np.mean(array <= AIR_HU))
    soft = float(np.mean((array >= SOFT_HU[0]) & (array <= SOFT_HU[1])))
    if air < AIR_MIN_FRACTION or soft < SOFT_MIN_FRACTION:
        raise DicomError(f"values {float(array.min()):.0f}..{float(array.max()):.0f} after rescale: "
                         f"{air:.1%} air (<= {AIR_HU:.0f} HU) and {soft:.1%} soft tissue ({SOFT_HU[0]:.0f}.."
                         f"{SOFT_HU[1]:.0f} HU) -- not an abdominal CT in Hounsfield units (wrong rescale, "
                         "not CT, or a crop without air); allow_non_ct / --allow-non-ct to read it anyway")


def read_pixels(checked: CheckedSeries) -> np.ndarray:
    """(z, y, x) values after RescaleSlope/Intercept: int16 when every value stays an
    integer in range (CT), else float32."""
    stored = np.stack([_pixels(f) for f in checked.frames])
    _CACHE.frames = None
    slopes = np.array([f.slope for f in checked.frames])
    intercepts = np.array([f.intercept for f in checked.frames])
    if np.all(slopes == 1) and np.all(intercepts == np.round(intercepts)):
        values = stored.astype(np.int32) + intercepts.astype(np.int32)[:, None, None]
        if values.min() >= -32768 and values.max() <= 32767:
            return values.astype(np.int16)
    return (stored.astype(np.float32) * slopes[:, None, None].astype(np.float32)
            + intercepts[:, None, None].astype(np.float32))


def to_volume(checked: CheckedSeries, allow_non_ct: bool = False) -> Volume:
    array = read_pixels(checked)
    check_hu(array, checked.series, allow_non_ct)
    volume = Volume(array, spacing=checked.spacing, origin=checked.origin, direction=checked.direction)
    return _untilt(volume, checked) if checked.tilt_deg else volume


def _untilt(volume: Volume, checked: CheckedSeries) -> Volume:
    """Resample a tilted (sheared) stack onto an orthogonal grid with the same axes and
    spacing, covering every acquired voxel; outside the acquired slab is air."""
    import SimpleITK as sitk

    d = np.asarray(checked.direction).reshape(3, 3)
    sx, sy, sz = checked.spacing
    # index -> physical of the acquired (sheared) grid
    shear = np.column_stack([d[:, 0] * sx, d[:, 1] * sy, checked.step])
    p0 = np.asarray(checked.origin)
    nx, ny, nz = volume.size
    corners = np.array([[i, j, k] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)], float)
    local = (shear @ corners.T).T @ d  # corner offsets in the output axes (mm)
    lo, hi = local.min(axis=0), local.max(axis=0)
    size = [int(math.floor((hi[a] - lo[a]) / s + 1e-6)) + 1 for a, s in enumerate((sx, sy, sz))]
    source = sitk.GetImageFromArray(volume.array)  # spacing 1, origin 0: physical = index
    inverse = np.linalg.inv(shear)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple(float(v) for v in inverse.reshape(-1)))
    transform.SetTranslation(tuple(float(v) for v in -inverse @ p0))
    origin = p0 + d @ lo
    reference = sitk.Image(size, source.GetPixelID())
    reference.SetSpacing((sx, sy, sz))
    reference.SetOrigin(tuple(float(v) for v in origin))
    reference.SetDirection(checked.direction)
    air = -1024.0 if np.issubdtype(volume.array.dtype, np.integer) else float(volume.array.min())
    out = sitk.Resample(source, reference, transform, sitk.sitkLinear, air, source.GetPixelID())
    return Volume.from_image(out)
