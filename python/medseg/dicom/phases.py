"""Contrast phases of a case assigned from the series of one study, by documented rules.

1. Candidates: CT series of the study that are not only localizers (QC refuses the rest
   later anyway). A series named in an override (`--phase portal=UID`) takes that phase
   first, whatever the rules below would say.
2. Non-contrast series are left out: a description saying so (native, non-contrast, plain,
   "nc", "sans"), or no ContrastBolusAgent when other series of the study have one.
3. Description keywords, case-insensitive, name the phase:
   arterial: arterial, art, cta, angio; portal: portal, venous, pv, nephrographic;
   delayed: delayed, excretory, urographic, urogram, late, pyelo.
   Two series matching one phase: the thinner slices, then the later series number.
4. Contrast series still unassigned fill the phases still open in acquisition order
   (AcquisitionTime, then SeriesTime, then series number): the earliest is arterial, then
   portal, then delayed.
The result and the rule that decided each phase are printed, so a wrong guess is visible
and can be overridden.
"""
from __future__ import annotations

import re

from medseg.dicom.errors import DicomError
from medseg.dicom.series import Series, _median_step
from medseg.labels import PHASES

KEYWORDS = {
    "arterial": r"\b(arterial|art|cta|angio\w*)\b",
    "portal": r"\b(portal|venous|pv|nephrographic|nephro)\b",
    "delayed": r"\b(delayed|excretory|urographic|urogram|late|pyelo\w*)\b",
}
NON_CONTRAST = r"\b(native|non[- ]?contrast|plain|nc|sans|without contrast|w/o)\b"


def _is_localizer(series: Series) -> bool:
    return all("LOCALIZER" in f.image_type for f in series.frames)


def _order(series: Series) -> tuple:
    return (series.time or "99", series.number if series.number is not None else 1 << 30)


def assign_phases(series: list[Series], overrides: dict[str, str] | None = None) -> tuple[dict[str, Series], list[str]]:
    """phase -> series, and one line per decision."""
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(PHASES)
    if unknown:
        raise DicomError(f"unknown phase(s) {sorted(unknown)}: use {', '.join(PHASES)}", field="phase")
    by_uid = {s.uid: s for s in series}
    chosen: dict[str, Series] = {}
    lines: list[str] = []
    for phase, uid in overrides.items():
        if uid not in by_uid:
            raise DicomError(f"--phase {phase}={uid}: the study has no such series", field="phase")
        chosen[phase] = by_uid[uid]
        lines.append(f"{phase}: {uid} '{by_uid[uid].description}' (override)")
    taken = {s.uid for s in chosen.values()}
    candidates = []
    for s in series:
        if s.uid in taken:
            continue
        if s.modality != "CT":
            lines.append(f"left out: {s.uid} '{s.description}' (modality {s.modality or '?'})")
        elif _is_localizer(s):
            lines.append(f"left out: {s.uid} '{s.description}' (localizer)")
        else:
            candidates.append(s)
    any_contrast = any(s.contrast for s in candidates)
    contrast = []
    for s in candidates:
        text = s.description.lower()
        if re.search(NON_CONTRAST, text) or (any_contrast and not s.contrast and not _keyword(text)):
            lines.append(f"left out: {s.uid} '{s.description}' (non-contrast)")
            continue
        contrast.append(s)
    for phase in PHASES:
        if phase in chosen:
            continue
        matching = [s for s in contrast if re.search(KEYWORDS[phase], s.description.lower())]
        if matching:
            best = sorted(matching, key=lambda s: (_median_step(s.frames) or 99.0, -(s.number or 0)))[0]
            chosen[phase] = best
            contrast.remove(best)
            lines.append(f"{phase}: {best.uid} '{best.description}' (description)")
    for s in sorted(contrast, key=_order):
        if _keyword(s.description.lower()):
            lines.append(f"left out: {s.uid} '{s.description}' (its phase is taken)")
            continue
        open_phases = [p for p in PHASES if p not in chosen]
        if not open_phases:
            lines.append(f"left out: {s.uid} '{s.description}' (every phase assigned)")
            continue
        chosen[open_phases[0]] = s
        lines.append(f"{open_phases[0]}: {s.uid} '{s.description}' (acquisition order, time {s.time or '?'})")
    if not chosen:
        raise DicomError("the study holds no contrast CT series to assign to a phase:\n"
                         + "\n".join("  " + s.summary() for s in series), field="phase")
    return {p: chosen[p] for p in PHASES if p in chosen}, lines


def _keyword(text: str) -> bool:
    return any(re.search(pattern, text) for pattern in KEYWORDS.values())
