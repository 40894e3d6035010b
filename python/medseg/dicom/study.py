"""A case from a DICOM study: local (folder, zip, DICOMDIR) or pulled from a PACS; phases
assigned (medseg.dicom.phases), each phase read and checked, written as NIfTI for upload;
afterwards the case mask as a DICOM-SEG on its phase's series, stored back to the PACS."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from medseg.dicom import DicomRead, list_series, read_dicom
from medseg.dicom.errors import DicomError
from medseg.dicom.phases import assign_phases
from medseg.dicom.web import PASSWORD_ENV, TOKEN_ENV, PacsAuth, pull_study, store
from medseg.volumes import write_volume


@dataclass
class StudyCase:
    """What a case job needs from a study: phase -> local NIfTI, and the reads behind them."""

    files: dict[str, Path]
    reads: dict[str, DicomRead]
    lines: list[str] = field(default_factory=list)
    study_uid: str = ""

    def seg_source(self) -> tuple[str, DicomRead]:
        """The phase whose grid the case mask is on (portal, else arterial, else delayed,
        as case_svc's combine step chooses) and its read."""
        for phase in ("portal", "arterial", "delayed"):
            if phase in self.reads:
                return phase, self.reads[phase]
        raise DicomError("no phase was read")


def pacs_auth(user: str | None = None, bearer: bool = False, environ=os.environ) -> PacsAuth:
    """Credentials from the environment: --pacs-user USER with MEDSEG_PACS_PASSWORD, or
    --pacs-bearer with MEDSEG_PACS_TOKEN."""
    if user and bearer:
        raise DicomError("give --pacs-user or --pacs-bearer, not both")
    if user:
        if PASSWORD_ENV not in environ:
            raise DicomError(f"--pacs-user needs the password in the environment variable {PASSWORD_ENV}")
        return PacsAuth("basic", user, environ[PASSWORD_ENV])
    if bearer:
        if TOKEN_ENV not in environ:
            raise DicomError(f"--pacs-bearer needs the token in the environment variable {TOKEN_ENV}")
        return PacsAuth("bearer", "", environ[TOKEN_ENV])
    return PacsAuth()


@contextmanager
def study_case(source: str | Path | None = None, *, pacs: str = "", study_uid: str = "",
               auth: PacsAuth = PacsAuth(), overrides: dict[str, str] | None = None,
               allow_non_ct: bool = False, on_note: Callable[[str], None] | None = None) -> Iterator[StudyCase]:
    """Phases of a local study (source) or of a PACS study (pacs + study_uid), as NIfTI files
    valid inside the `with`."""
    with tempfile.TemporaryDirectory(prefix="medseg-study-") as tmp:
        tmp = Path(tmp)
        if pacs:
            if not study_uid:
                raise DicomError("--pacs needs --study STUDY_UID", field="study_uid")
            pull_study(pacs, study_uid, tmp / "study", auth)
            source = tmp / "study"
        if source is None:
            raise DicomError("no study given")
        series = list_series(source)
        if study_uid:
            series = [s for s in series if s.study_uid == study_uid]
        studies = {s.study_uid for s in series}
        if len(studies) > 1:
            raise DicomError(f"holds {len(studies)} studies; choose one with --study UID: {', '.join(sorted(studies))}",
                             field="study_uid")
        assignment, lines = assign_phases(series, overrides)
        files, reads = {}, {}
        for phase, chosen in assignment.items():
            read = read_dicom(source, series_uid=chosen.uid, allow_non_ct=allow_non_ct)
            for note in read.notes:
                if on_note:
                    on_note(f"{phase}: {note}")
            reads[phase] = read
            files[phase] = write_volume(read.volume, tmp / f"{phase}.nii.gz")
        yield StudyCase(files=files, reads=reads, lines=lines, study_uid=next(iter(studies), study_uid))


def store_seg(pacs: str, seg_path: Path, case: StudyCase, auth: PacsAuth = PacsAuth()) -> list[str]:
    """STOW-RS of the SEG into the study it references."""
    return store(pacs, [seg_path], auth, study_uid=case.study_uid or None)
