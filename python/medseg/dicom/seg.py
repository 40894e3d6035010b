"""Masks as DICOM-SEG (highdicom), referencing the series they were computed from.

One segment per structure (label value) with its SNOMED CT concept, the algorithm that made
it (name, version), and references to the source series: StudyInstanceUID, patient and study
attributes and FrameOfReferenceUID copied by highdicom from the source images, and every
frame's source SOP instance. Frames follow the source's own frames (one per slice, in the
order QC sorted them), so position and orientation come from the source and no axis can flip
(TotalSegmentator 2.18 fixed an anterior/posterior flip in its SEG export; the tests check the
SEG's own geometry against the mask's).

A mask computed from a NIfTI has no source series: its SEG references a series made here from
the NIfTI's geometry (new Study/Series/Frame of Reference UIDs), so a PACS files it as a new
study; that is the documented behaviour for NIfTI inputs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.dicom.errors import DicomError
from medseg.volumes import Volume, atomic_write

ALGORITHM_NAME = "medseg"
PRIVATE_SCHEME = "99MEDSEG"  # local code scheme for structures without a SNOMED CT concept here


def _codes():
    from pydicom.sr.coding import Code
    from pydicom.sr.codedict import codes

    sct = codes.SCT
    anatomy, abnormal, tissue = sct.AnatomicalStructure, sct.MorphologicallyAbnormalStructure, sct.Tissue
    exact = {
        "kidney": (anatomy, sct.Kidney), "kidney_left": (anatomy, sct.Kidney), "kidney_right": (anatomy, sct.Kidney),
        "tumor": (abnormal, sct.Neoplasm), "artery": (anatomy, sct.Artery), "vein": (anatomy, sct.Vein),
        "ureter": (anatomy, sct.Ureter), "fat": (tissue, sct.AdiposeTissue), "spleen": (anatomy, sct.Spleen),
        "liver": (anatomy, sct.Liver), "aorta": (anatomy, sct.Aorta),
        "inferior_vena_cava": (anatomy, sct.InferiorVenaCava),
        "urinary_bladder": (anatomy, Code("89837001", "SCT", "Urinary bladder")),
    }
    prefixes = {"vertebrae_": (anatomy, sct.Vertebra), "iliac_artery": (anatomy, sct.IliacArtery),
                "iliac_vena": (anatomy, Code("46027005", "SCT", "Common iliac vein"))}
    return exact, prefixes, Code


def concept(name: str):
    """(segmented property category, segmented property type) of a structure name."""
    exact, prefixes, code = _codes()
    if name in exact:
        return exact[name]
    for prefix, pair in prefixes.items():
        if name.startswith(prefix):
            return pair
    from pydicom.sr.codedict import codes

    return codes.SCT.AnatomicalStructure, code(name[:16] or "structure", PRIVATE_SCHEME, name or "structure")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("medseg")
    except Exception:  # noqa: BLE001 - running from a checkout without metadata
        return "0"


def source_images(read) -> tuple[list, list[int] | None]:
    """The source datasets in frame order for highdicom, and for an enhanced multi-frame
    source the order of QC's frames among the file's frames."""
    if read.resampled:
        raise DicomError("the series was resampled to correct its gantry tilt: a DICOM-SEG would not align "
                         "with its frames; write NIfTI (-o NAME.nii.gz) instead")
    headers = {Path(h.filename).resolve() if getattr(h, "filename", None) else None: h for h in read.series.headers}
    frames = read.checked.frames
    if read.series.enhanced:
        if len({f.file for f in frames}) != 1:
            raise DicomError("a DICOM-SEG of a series spread over several multi-frame files is not supported")
        return [read.series.headers[0]], [f.index for f in frames]
    datasets = []
    for frame in frames:
        ds = headers.get(Path(frame.file).resolve())
        if ds is None:  # the files were in a temporary folder (zip): match by SOP instance
            ds = next(h for h in read.series.headers if str(h.SOPInstanceUID) == frame.sop_uid)
        datasets.append(ds)
    return datasets, None


def nifti_source(grid: Volume, description: str = "medseg source (from NIfTI)") -> list:
    """Source datasets standing in for a NIfTI input, on `grid`'s geometry (new UIDs; see
    the module docstring). Only their attributes are referenced, so their pixels are air."""
    from medseg.dicom.write import series_datasets

    air = grid.with_array(np.full(grid.array.shape, -1024, dtype=np.int16))
    return series_datasets(air, description=description)


def segmentation(mask: Volume, datasets: list, frame_order: list[int] | None = None, *,
                 algorithm: str = "", series_description: str = "medseg segmentation", series_number: int = 900):
    """A highdicom Segmentation of `mask` (on the source's grid, z = datasets' order)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    values = [int(v) for v in np.unique(mask.array) if v]
    if not values:
        raise DicomError("the mask is empty: a DICOM-SEG needs at least one segment")
    names = mask.labels or {}
    lut = np.zeros(int(mask.array.max()) + 1, dtype=np.uint16)
    descriptions = []
    version = _version()
    for number, value in enumerate(values, start=1):
        lut[value] = number
        name = names.get(value, f"label_{value}")
        category, kind = concept(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name=algorithm or ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence, version=version),
            tracking_uid=generate_uid(), tracking_id=f"medseg label {value}"))
    pixels = lut[mask.array]
    if frame_order is not None:  # enhanced source: back to the file's frame order
        reordered = np.zeros_like(pixels)
        reordered[frame_order] = pixels
        pixels = reordered
    if pixels.shape[0] != (len(datasets) if frame_order is None else int(datasets[0].NumberOfFrames)):
        raise DicomError(f"the mask has {pixels.shape[0]} slices, the source series {len(datasets)}")
    return hd.seg.Segmentation(
        source_images=datasets, pixel_array=pixels.astype(np.uint16 if len(values) > 255 else np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=series_number, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer="medseg", manufacturer_model_name=algorithm or ALGORITHM_NAME,
        software_versions=version, device_serial_number="0", series_description=series_description,
        omit_empty_frames=False)


def write_seg(mask: Volume, path: str | Path, read=None, algorithm: str = "") -> Path:
    """Write `mask` as DICOM-SEG at path, referencing `read` (the medseg.dicom.DicomRead of
    its source series), or with no read (a NIfTI input) a series made on the mask's grid."""
    if read is not None:
        datasets, order = source_images(read)
        if not mask.same_grid(read.volume, tol=1e-3):
            raise DicomError("the mask is not on the source series' grid")
    else:
        datasets, order = nifti_source(mask), None
    seg = segmentation(mask, datasets, order, algorithm=algorithm)
    return atomic_write(path, lambda tmp: seg.save_as(tmp))


def read_seg(path: str | Path, read) -> Volume:
    """A SEG written for `read`'s series, back as a mask on that series' grid (label values
    from the segments' tracking ids, names from their labels)."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    numbers = list(seg.segment_numbers)
    values, names = {}, {}
    for number in numbers:
        description = seg.get_segment_description(number)
        tracking = description.tracking_id or ""
        value = int(tracking.rsplit(" ", 1)[-1]) if tracking.startswith("medseg label ") else number
        values[number], names[value] = value, description.segment_label
    if read.series.enhanced:
        planes = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=str(read.series.headers[0].SOPInstanceUID),
            source_frame_numbers=[f.index + 1 for f in read.checked.frames], combine_segments=True)
    else:
        planes = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[f.sop_uid for f in read.checked.frames], combine_segments=True)
    lut = np.zeros(max(numbers) + 1, dtype=np.uint16)
    for number, value in values.items():
        lut[number] = value
    array = lut[planes].astype(np.uint8 if max(values.values()) <= 255 else np.uint16)
    return read.volume.with_array(array, labels={0: "background", **names})
