"""DICOMweb authentication as a PACS sees it (issue 13 item 6): a small HTTP server on
loopback records what arrives and answers QIDO-RS like a PACS that requires credentials.
Orthanc (tests/integration/test_pacs.py) covers basic authentication end to end; bearer
tokens need an authorization plugin there, so the header is checked here."""
from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medseg.dicom import DicomError
from medseg.dicom.web import PacsAuth, parse_url, pull_study, shown_url

TOKEN, PASSWORD = "tok-123", "pw-456"


@pytest.fixture(scope="module")
def pacs():
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            header = self.headers.get("Authorization", "")
            seen.append((self.path, header))
            allowed = {f"Bearer {TOKEN}", "Basic " + base64.b64encode(f"u:{PASSWORD}".encode()).decode()}
            if header not in allowed:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="pacs"')
                self.end_headers()
                return
            body = json.dumps([]).encode()  # an authorized search that finds nothing
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web", seen
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("auth", [PacsAuth("bearer", "", TOKEN), PacsAuth("basic", "u", PASSWORD)])
def test_credentials_reach_the_pacs(pacs, auth, tmp_path):
    url, seen = pacs
    with pytest.raises(DicomError, match="has no study 1.2.3") as err:  # authorized: the study is simply absent
        pull_study(url, "1.2.3", tmp_path, auth)
    assert "/dicom-web/studies/1.2.3/series" in seen[-1][0] or "StudyInstanceUID=1.2.3" in seen[-1][0]
    assert auth.secret not in str(err.value)


def test_a_wrong_token_is_a_401_naming_what_to_check_not_the_secret(pacs, tmp_path):
    url, _ = pacs
    with pytest.raises(DicomError, match="HTTP 401 .*authentication failed") as err:
        pull_study(url, "1.2.3", tmp_path, PacsAuth("bearer", "", "wrong-token"))
    assert "wrong-token" not in str(err.value)


def test_credentials_in_the_url_are_used_and_never_shown(pacs, tmp_path):
    url, seen = pacs
    with_user = url.replace("http://", f"http://u:{PASSWORD}@")
    with pytest.raises(DicomError, match="has no study") as err:
        pull_study(with_user, "1.2.3", tmp_path)
    assert seen[-1][1].startswith("Basic ")
    assert PASSWORD not in str(err.value) and shown_url(with_user) == url
    assert repr(PacsAuth("basic", "u", PASSWORD)).count(PASSWORD) == 0


def test_dicomweb_urls_name_study_and_series():
    assert parse_url("https://pacs/dicom-web/studies/1.2/series/3.4") == ("https://pacs/dicom-web", "1.2", "3.4")
    assert parse_url("https://pacs/dicom-web/studies/1.2") == ("https://pacs/dicom-web", "1.2", "")
    for bad in ("https://pacs/dicom-web", "https://pacs/dicom-web/studies/1.2/instances/5"):
        with pytest.raises(DicomError, match="expected <DICOMweb root>/studies/<UID>"):
            parse_url(bad)
