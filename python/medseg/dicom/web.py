"""A PACS over DICOMweb (dicomweb-client): a study pulled with QIDO-RS + WADO-RS into a local
folder, DICOM-SEG stored back with STOW-RS into the same study.

Credentials: basic (user + password) or bearer (token), given as a PacsAuth whose repr hides
the secret; the CLI reads the secret from the environment (MEDSEG_PACS_PASSWORD or
MEDSEG_PACS_TOKEN), never from its arguments, so it shows in no process list or log.
Messages quote the URL without any user:password@ part.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from medseg.dicom.errors import DicomError
from medseg.dicom.series import NON_IMAGE_MODALITIES

PASSWORD_ENV = "MEDSEG_PACS_PASSWORD"
TOKEN_ENV = "MEDSEG_PACS_TOKEN"


@dataclass(frozen=True)
class PacsAuth:
    """kind: "" (none), "basic" (user + secret = password) or "bearer" (secret = token)."""

    kind: str = ""
    user: str = ""
    secret: str = field(default="", repr=False)

    def __repr__(self) -> str:
        return f"PacsAuth(kind={self.kind!r}, user={self.user!r}, secret=<hidden>)"


def shown_url(url: str) -> str:
    """The URL without credentials, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _client(url: str, auth: PacsAuth, timeout: float):
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    parts = urlsplit(url)
    if parts.username:  # credentials in the URL: moved to the session, out of every URL
        auth = PacsAuth("basic", parts.username, parts.password or "")
        url = shown_url(url)
    if auth.kind == "basic":
        session.auth = (auth.user, auth.secret)
    elif auth.kind == "bearer":
        session.headers["Authorization"] = f"Bearer {auth.secret}"
    elif auth.kind:
        raise DicomError(f"unknown PACS authentication '{auth.kind}' (basic or bearer)")
    return DICOMwebClient(url=url, session=session, timeout=timeout)


def _pacs_error(exc: Exception, url: str, what: str) -> DicomError:
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        hint = {401: " (authentication failed: check --pacs-user and MEDSEG_PACS_PASSWORD, or --pacs-bearer and MEDSEG_PACS_TOKEN)",
                403: " (not allowed for these credentials)", 404: " (not found)"}.get(status, "")
        return DicomError(f"PACS {shown_url(url)} answered HTTP {status} to {what}{hint}")
    if isinstance(exc, requests.RequestException):
        return DicomError(f"PACS {shown_url(url)} cannot be reached for {what} ({exc.__class__.__name__})")
    return DicomError(f"PACS {shown_url(url)}: {what} failed ({exc.__class__.__name__})")


def _value(item: dict, tag: str, default: str = "") -> str:
    values = item.get(tag, {}).get("Value") or [default]
    return str(values[0])


def pull_study(url: str, study_uid: str, folder: str | Path, auth: PacsAuth = PacsAuth(),
               timeout: float = 60.0) -> list[Path]:
    """Every image series of the study (QIDO-RS to list, WADO-RS to retrieve) written as
    Part 10 files under folder/<series UID>/; returns the series folders."""
    folder = Path(folder)
    client = _client(url, auth, timeout)
    try:
        found = client.search_for_series(study_instance_uid=study_uid, get_remaining=True)
    except Exception as exc:  # noqa: BLE001 - every transport failure named the same way
        raise _pacs_error(exc, url, f"the search for study {study_uid}") from None
    if not found:
        raise DicomError(f"PACS {shown_url(url)} has no study {study_uid}", field="study_uid")
    written = []
    for item in found:
        series_uid = _value(item, "0020000E")
        if _value(item, "00080060") in NON_IMAGE_MODALITIES:
            continue  # earlier SEGs, reports
        try:
            instances = client.retrieve_series(study_uid, series_uid)
        except Exception as exc:  # noqa: BLE001
            raise _pacs_error(exc, url, f"the retrieval of series {series_uid}") from None
        target = folder / series_uid.replace("/", "_")
        target.mkdir(parents=True, exist_ok=True)
        for i, ds in enumerate(instances):
            ds.save_as(target / f"{i:05d}.dcm", enforce_file_format=True)
        written.append(target)
    return written


def store(url: str, paths: list[str | Path], auth: PacsAuth = PacsAuth(), study_uid: str | None = None,
          timeout: float = 60.0) -> list[str]:
    """STOW-RS of Part 10 files (into study_uid when given); returns the stored SOP
    Instance UIDs. A PACS that refuses an instance is an error, not a warning."""
    import pydicom

    client = _client(url, auth, timeout)
    datasets = [pydicom.dcmread(p) for p in paths]
    try:
        reply = client.store_instances(datasets, study_instance_uid=study_uid)
    except Exception as exc:  # noqa: BLE001
        raise _pacs_error(exc, url, "the store (STOW-RS)") from None
    failed = reply.get("FailedSOPSequence") if reply is not None else None
    if failed:
        reasons = ", ".join(str(item.get("FailureReason", "?")) for item in failed)
        raise DicomError(f"PACS {shown_url(url)} refused {len(failed)} instance(s) (failure reasons {reasons})")
    return [str(ds.SOPInstanceUID) for ds in datasets]


def series_of_study(url: str, study_uid: str, auth: PacsAuth = PacsAuth(), timeout: float = 60.0) -> list[dict]:
    """QIDO-RS series of a study as (uid, modality, description) dicts."""
    client = _client(url, auth, timeout)
    try:
        found = client.search_for_series(study_instance_uid=study_uid, get_remaining=True)
    except Exception as exc:  # noqa: BLE001
        raise _pacs_error(exc, url, f"the search for study {study_uid}") from None
    return [{"uid": _value(i, "0020000E"), "modality": _value(i, "00080060"),
             "description": _value(i, "0008103E")} for i in found]


def parse_url(url: str) -> tuple[str, str, str]:
    """(DICOMweb root, study UID, series UID or "") of .../studies/UID[/series/UID]."""
    parts = urlsplit(url)
    segments = parts.path.rstrip("/").split("/")
    if "studies" not in segments:
        raise DicomError(f"'{shown_url(url)}' names no study: expected <DICOMweb root>/studies/<UID>[/series/<UID>]")
    i = len(segments) - 1 - segments[::-1].index("studies")
    rest = segments[i + 1:]
    if not rest or not rest[0] or (len(rest) > 1 and (rest[1] != "series" or len(rest) != 3)):
        raise DicomError(f"'{shown_url(url)}': expected <DICOMweb root>/studies/<UID>[/series/<UID>]")
    root = urlunsplit((parts.scheme, parts.netloc, "/".join(segments[:i]), "", ""))
    return root, rest[0], rest[2] if len(rest) == 3 else ""


def read_url(url: str, auth: PacsAuth = PacsAuth(), series_uid=(), allow_non_ct: bool = False):
    """A series straight from a PACS: .../studies/UID/series/UID, or .../studies/UID with
    the series chosen as for a folder (series_uid, or the only one). Returns the DicomRead,
    with `pacs` = (root, study UID) so a SEG can be stored back."""
    import tempfile

    from medseg.dicom import read_dicom

    root, study_uid, series = parse_url(url)
    with tempfile.TemporaryDirectory(prefix="medseg-pacs-") as tmp:
        if series:
            client = _client(root, auth, 60.0)
            try:
                instances = client.retrieve_series(study_uid, series)
            except Exception as exc:  # noqa: BLE001
                raise _pacs_error(exc, root, f"the retrieval of series {series}") from None
            for i, ds in enumerate(instances):
                ds.save_as(Path(tmp) / f"{i:05d}.dcm", enforce_file_format=True)
        else:
            pull_study(root, study_uid, tmp, auth)
        read = read_dicom(tmp, series_uid=series or series_uid, allow_non_ct=allow_non_ct)
    read.pacs = (root, study_uid)
    return read
