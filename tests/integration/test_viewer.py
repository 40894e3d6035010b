"""The browser viewer (viewer/, issue 16) in headless Chromium against the real stack.

The bundle is built by the fixture (`npm ci` when the lock file changed, then `npm run build`:
buf + protoc-gen-es stubs, tsc, esbuild), the page is opened through the gateway's /viewer/
route, and every service call it makes goes through Envoy's gRPC-Web filter. A 64^3 phantom
case is started from the page itself (the three phases uploaded by the browser), followed
live, then opened: the checks read the rendered canvases back as screenshots.

Chromium renders WebGL2 without a GPU through ANGLE + SwiftShader. Screenshots go to the
test's tmp folder (printed); MEDSEG_VIEWER_DOCS=1 also writes the README's ones under
docs/viewer/. Without chromium, chromedriver, node or selenium the tests skip locally and
fail under CI=true."""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from medseg.case_jobs import CaseClient, state_name
from medseg.labels import COLORS, PHASES, Label
from medseg.phantom import make_phantom
from medseg.volumes import read_volume
from tests import tools

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
VIEWER_DIR = REPO / "viewer"
DOCS_DIR = REPO / "docs" / "viewer"
SIZE = (64, 64, 64)
CROSSHAIR = (0, 255, 0)  # the 2D view's crosshair colour (caseview.ts)
BACK_3D = (33, 41, 51)  # the 3D view's background, 0.13/0.16/0.2 of 255 (caseview.ts)
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1200",
                  "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--force-device-scale-factor=1")


def rgb(label: Label) -> np.ndarray:
    value = COLORS[int(label)].lstrip("#")
    return np.array([int(value[i:i + 2], 16) for i in (0, 2, 4)])


def _run(args: list[str], timeout: float) -> None:
    result = subprocess.run(args, cwd=VIEWER_DIR, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def bundle() -> Path:
    """viewer/dist built from the committed lock file, as `make viewer` does."""
    for name in ("node", "npm"):
        if shutil.which(name) is None:
            tools.missing(f"'{name}' not on PATH (Node.js 20 + npm build the viewer)")
    lock, installed = VIEWER_DIR / "package-lock.json", VIEWER_DIR / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        _run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], timeout=300)
    _run(["npm", "run", "-s", "build"], timeout=300)
    assert (VIEWER_DIR / "dist" / "index.html").is_file() and (VIEWER_DIR / "dist" / "viewer.js").is_file()
    return VIEWER_DIR / "dist"


@pytest.fixture(scope="module")
def case_stack(stack):
    for needed in ("case", "nnunet", "smoothing", "postprocess"):
        if needed not in stack.services:
            if tools.in_ci():
                pytest.fail(f"{needed} not started in this session")
            pytest.skip(f"{needed} not started in this session (MEDSEG_TEST_SERVICES)")
    return stack


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("viewer-screenshots")
    print(f"\nviewer screenshots: {folder}")
    return folder


def keep(shots: Path, name: str, png: bytes) -> None:
    (shots / name).write_bytes(png)
    if os.environ.get("MEDSEG_VIEWER_DOCS") == "1":
        DOCS_DIR.mkdir(parents=True, exist_ok=True)
        (DOCS_DIR / name).write_bytes(png)


@pytest.fixture(scope="module")
def browser(bundle, case_stack):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        tools.missing("the selenium package (requirements-dev.txt)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
    if not chromium or not driver_path:
        tools.missing("Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def shot(browser, element_id: str) -> np.ndarray:
    return image(browser.find_element("id", element_id).screenshot_as_png)


def settled(browser, element_id: str, check, what: str, timeout: float = 10.0) -> np.ndarray:
    """The element's picture once `check(picture)` holds (a loaded CI machine may draw a frame
    late); fails with `what` after `timeout`."""
    def ready():
        picture = shot(browser, element_id)
        return [picture] if check(picture) else None

    return wait_for(ready, timeout, what, poll=0.3)[0]


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def image(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def near(pixels: np.ndarray, colour, tolerance: int = 16) -> np.ndarray:
    return np.all(np.abs(pixels - np.asarray(colour)) <= tolerance, axis=-1)


def crosshair_centres(picture: np.ndarray) -> list[tuple[int, int]]:
    """Where the crosshair's lines cross in each tile: green with green 5 px away on all four
    sides (a line alone, a few px wide, has green on two)."""
    green = near(picture, CROSSHAIR, 40)
    h, w = green.shape
    cross = np.zeros_like(green)
    d = 5
    cross[d:h - d, d:w - d] = (green[d:h - d, d:w - d] & green[:h - 2 * d, d:w - d] & green[2 * d:, d:w - d]
                               & green[d:h - d, :w - 2 * d] & green[d:h - d, 2 * d:])
    ys, xs = np.nonzero(cross)
    clusters: list[list[tuple[int, int]]] = []
    for y, x in sorted(zip(ys.tolist(), xs.tolist()), key=lambda p: p[1]):
        if clusters and abs(x - clusters[-1][-1][1]) <= 10:
            clusters[-1].append((y, x))
        else:
            clusters.append([(y, x)])
    return [(round(np.mean([p[0] for p in c])), round(np.mean([p[1] for p in c]))) for c in clusters]


def around(picture: np.ndarray, centre: tuple[int, int], radius: int = 12) -> np.ndarray:
    """The pixels on the diagonals 5..radius px from a crosshair centre, but the crosshair's."""
    y, x = centre
    points = [(y + sy * k, x + sx * k) for k in range(5, radius + 1) for sy in (-1, 1) for sx in (-1, 1)]
    pixels = np.array([picture[p] for p in points if 0 <= p[0] < picture.shape[0] and 0 <= p[1] < picture.shape[1]])
    return pixels[~near(pixels, CROSSHAIR, 40)]


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory) -> dict[str, Path]:
    case = make_phantom(size=SIZE, spacing=(3.0, 3.0, 3.0), seed=1234)
    files = case.write(tmp_path_factory.mktemp("viewer-phantom"))
    return {phase: files[phase] for phase in PHASES}


def test_page_lists_the_jobs_through_grpc_web(browser, case_stack):
    browser.get(case_stack.viewer_url)
    wait_for(lambda: "job(s)" in browser.find_element("id", "status").text, 30, "the job list")
    rows = {row.get_attribute("data-job-id") for row in browser.find_elements("css selector", "#jobs tbody tr")}
    with CaseClient(case_stack.gateway) as client:
        listed = {job.job_id for job in itertools.islice(client.list(), 50)}
    assert rows == listed
    assert console_errors(browser) == []


@pytest.fixture(scope="module")
def viewer_job(browser, case_stack, phantom_files, shots):
    """A case job started from the page: the three phases uploaded by the browser
    (UploadVolume over gRPC-Web), SubmitCase, then followed in the list (WatchCase)."""
    browser.get(case_stack.viewer_url)
    wait_for(lambda: "job(s)" in browser.find_element("id", "status").text, 30, "the job list")
    name = f"viewer test {uuid.uuid4().hex[:8]}"
    for phase, path in phantom_files.items():
        browser.find_element("id", f"file-{phase}").send_keys(str(path))
    browser.find_element("id", "display-name").send_keys(name)
    browser.find_element("id", "submit").click()
    row = wait_for(lambda: next((r for r in browser.find_elements("css selector", "#jobs tbody tr")
                                 if r.find_element("css selector", "th").text == name), None), 120, "the new job's row")
    job_id = row.get_attribute("data-job-id")
    seen = []
    def finished():
        state = row.get_attribute("data-state")
        value = float(row.find_element("css selector", "progress").get_attribute("value") or 0)
        if not seen or seen[-1] != (state, value):
            seen.append((state, value))
        return state in ("SUCCEEDED", "FAILED", "CANCELLED") and state
    state = wait_for(finished, 300, f"job {job_id} to end in the page", poll=0.1)
    keep(shots, "jobs.png", browser.get_screenshot_as_png())
    assert state == "SUCCEEDED", seen
    assert row.find_element("css selector", ".pct").text == "100 %"
    with CaseClient(case_stack.gateway) as client:
        job = client.get(job_id)
    assert state_name(job.state) == "SUCCEEDED" and job.display_name == name
    return job, seen


def test_upload_from_the_page_starts_a_job_followed_live(viewer_job, phantom_files):
    job, seen = viewer_job
    # The browser uploaded exactly the files' bytes (the job's inputs are those digests).
    digests = {i.phase: i.sha256 for i in job.inputs}
    assert digests == {p: hashlib.sha256(f.read_bytes()).hexdigest() for p, f in phantom_files.items()}
    assert {i.source for i in job.inputs} == {"upload"}
    # The row moved while the job ran: states or fractions between submit and the end, with
    # no reload (WatchCase events update it).
    assert len(seen) >= 3, seen
    assert any(0 < value < 1 for _state, value in seen) or any(s == "RUNNING" for s, _ in seen), seen


@pytest.fixture(scope="module")
def opened_case(browser, case_stack, viewer_job):
    job, _ = viewer_job
    # The list, the upload and the live progress logged no error; only this page's from here on.
    assert console_errors(browser) == []
    browser.get(f"{case_stack.viewer_url}?case={job.job_id}")
    wait_for(lambda: browser.find_element("id", "case").get_attribute("data-ready") == "true"
             if browser.find_elements("id", "case") else False, 60, "the case to load")
    time.sleep(0.5)  # a frame after the last draw
    return job


def test_report_numbers_equal_report_json(browser, opened_case, data_root, shots):
    job = opened_case
    report = json.loads((data_root / "cases" / job.job_id / "report.json").read_text())
    rows = {r.get_attribute("data-structure"): r for r in browser.find_elements("css selector", "#report-structures tbody tr")}
    assert set(rows) == {s["name"] for s in report["structures"]}
    checked = 0
    for s in report["structures"]:
        for field, digits in (("volume_ml", 2), ("pieces", 0), ("largest_diameter_mm", 1)):
            cell = rows[s["name"]].find_element("css selector", f'td[data-field="{field}"]')
            assert float(cell.get_attribute("data-value")) == s[field], (s["name"], field)
            assert cell.text == f"{s[field]:.{digits}f}" or abs(float(cell.text) - s[field]) <= 0.5 * 10 ** -digits
            checked += 1
    tumors = browser.find_elements("css selector", "table.tumor")
    assert len(tumors) == len(report["tumors"]) >= 1
    for table, tumor in zip(tumors, report["tumors"]):
        for field in ("volume_ml", "max_diameter_mm", "exophytic_fraction", "distance_to_artery_mm"):
            cell = table.find_element("css selector", f'td[data-field="{field}"]')
            assert float(cell.get_attribute("data-value")) == tumor[field], field
            checked += 1
        assert float(table.find_element("css selector", 'td[data-field="renal_score"]').get_attribute("data-value")) \
            == tumor["renal"]["score"]
        assert tumor["side"] in table.text
    print(f"\n{checked} report numbers equal report.json")
    keep(shots, "report.png", browser.find_element("id", "report").screenshot_as_png)


def test_2d_view_shows_the_mask_in_the_convention_colours(browser, opened_case, data_root, shots):
    from selenium.webdriver.common.keys import Keys

    job = opened_case
    mask = read_volume(data_root / "cases" / job.job_id / "mask.nii.gz")
    # Opacity to full with the keyboard: the overlay pixels are then the label colour itself.
    slider = browser.find_element("id", "opacity")
    slider.send_keys(Keys.END)
    assert slider.get_attribute("value") == "1"
    # The page opened on the tumor (first finding): the crosshair is on a tumor voxel.
    location = browser.find_element("id", "location")
    assert location.get_attribute("data-label") == "tumor"
    x, y, z = (int(v) for v in location.get_attribute("data-voxel").split(","))
    assert mask.array[z, y, x] == Label.TUMOR, "the page's voxel is not tumor in mask.nii.gz"
    tumor = rgb(Label.TUMOR)

    def tumor_at_crosshairs(picture) -> bool:
        centres = crosshair_centres(picture)
        return len(centres) == 3 and all(near(around(picture, c), tumor).mean() > 0.8 for c in centres)

    try:
        picture = settled(browser, "view2d", tumor_at_crosshairs, "the tumor colour at the crosshair in 3 tiles")
    finally:
        keep(shots, "view2d.png", browser.find_element("id", "view2d").screenshot_as_png)
    centres = crosshair_centres(picture)
    # Every structure shown has its colour somewhere in the slices.
    for label in (Label.KIDNEY, Label.TUMOR):
        assert near(picture, rgb(label), 10).sum() > 50, label.name

    # Tab to the tumor's "slices" checkbox and toggle it with the space bar: the tumor colour
    # goes from the picture, and comes back.
    browser.find_element("id", "show3d-kidney").send_keys("")  # focus
    browser.switch_to.active_element.send_keys(Keys.TAB)
    active = browser.switch_to.active_element
    assert active.get_attribute("id") == "show2d-tumor" and active.get_attribute("aria-label") == "Show tumor in the slices"
    active.send_keys(Keys.SPACE)
    assert not active.is_selected()
    settled(browser, "view2d", lambda hidden: all(near(around(hidden, c), tumor).mean() < 0.2 for c in centres)
            and near(hidden, tumor, 10).sum() < 0.05 * near(picture, tumor, 10).sum(), "the tumor to go from the slices")
    active.send_keys(Keys.SPACE)
    assert active.is_selected()
    settled(browser, "view2d", tumor_at_crosshairs, "the tumor back in the slices")


def test_each_phase_is_shown(browser, opened_case):
    """The phase radio group, by keyboard: another phase replaces the CT under the mask."""
    from selenium.webdriver.common.keys import Keys

    before = image(browser.find_element("id", "view2d").screenshot_as_png)
    portal = browser.find_element("id", "phase-portal")
    assert portal.is_selected()
    portal.send_keys(Keys.ARROW_RIGHT)  # moves the choice to the next phase, as radios do
    arterial = browser.find_element("id", "phase-arterial")
    assert arterial.is_selected()
    wait_for(lambda: "Arterial phase shown" in browser.find_element("id", "status").text, 30, "the arterial phase")
    after = settled(browser, "view2d", lambda p: np.any(np.abs(p - before) > 8, axis=-1).mean() > 0.02,
                    "the slices to change with the phase (over 2% of the pixels)")
    # The mask stays on top: the tumor colour is still at the crosshair.
    for centre in crosshair_centres(after):
        assert near(around(after, centre), rgb(Label.TUMOR)).mean() > 0.8
    arterial.send_keys(Keys.ARROW_LEFT)
    wait_for(lambda: "Portal venous phase shown" in browser.find_element("id", "status").text, 30, "the portal phase")


def test_findings_jump_to_their_box(browser, opened_case):
    from selenium.webdriver.common.keys import Keys

    canvas = browser.find_element("id", "view2d")
    location = browser.find_element("id", "location")
    start = location.get_attribute("data-voxel")
    # Move the crosshair away with the keyboard, then jump back with the finding's button.
    canvas.send_keys(*([Keys.ARROW_RIGHT] * 12))
    moved = wait_for(lambda: location.get_attribute("data-voxel") != start and location.get_attribute("data-voxel"), 5,
                     "the crosshair to move")
    assert location.get_attribute("data-label") != "tumor" or moved != start
    button = browser.find_element("css selector", '#findings button[data-label="tumor"]')
    button.click()
    wait_for(lambda: location.get_attribute("data-voxel") == start, 5, "the jump to the tumor's box")
    assert location.get_attribute("data-label") == "tumor" and button.get_attribute("aria-pressed") == "true"


def test_3d_view_shows_the_meshes_and_hides_one(browser, opened_case, shots):
    png = browser.find_element("id", "view3d").screenshot_as_png
    keep(shots, "view3d.png", png)
    picture = settled(browser, "view3d", lambda p: (~near(p, BACK_3D, 6)).mean() > 0.03, "meshes in the 3D view")
    drawn = ~near(picture, BACK_3D, 6)
    assert drawn.mean() > 0.03, f"only {drawn.mean():.1%} of the 3D view differs from the background"
    # The vein's blue and the artery's red are there (shaded, so loosely).
    blue = (picture[..., 2] > picture[..., 0] + 60) & (picture[..., 2] > picture[..., 1] + 40)
    red = (picture[..., 0] > picture[..., 1] + 80) & (picture[..., 0] > picture[..., 2] + 80)
    assert blue.sum() > 100 and red.sum() > 100, (blue.sum(), red.sum())
    browser.find_element("id", "show3d-vein").click()

    def vein_gone(hidden) -> bool:
        changed = np.any(np.abs(hidden - picture) > 24, axis=-1).mean()
        blue_after = ((hidden[..., 2] > hidden[..., 0] + 60) & (hidden[..., 2] > hidden[..., 1] + 40)).sum()
        return changed > 0.005 and blue_after < 0.1 * blue.sum()

    settled(browser, "view3d", vein_gone, "the vein to go from the 3D view (its blue under 10%)")
    browser.find_element("id", "show3d-vein").click()
    settled(browser, "view3d", lambda p: np.any(np.abs(p - picture) > 24, axis=-1).mean() < 0.001,
            "the vein back in 3D")
    keep(shots, "case.png", browser.get_screenshot_as_png())


def test_downloads_are_the_jobs_outputs(browser, opened_case, case_stack):
    job = opened_case
    links = {a.text: a.get_attribute("href") for a in browser.find_elements("css selector", "#downloads a")}
    expected = {o.name for o in job.result.outputs if not o.name.startswith("work/")}
    assert set(links) == expected
    assert not any(name.endswith(".dcm") for name in links) or "DICOM-SEG" in browser.find_element("id", "downloads").text
    for output in job.result.outputs:
        if output.name in ("mask.nii.gz", "meshes/model.glb", "report.json"):
            body = urllib.request.urlopen(links[output.name], timeout=30).read()
            assert hashlib.sha256(body).hexdigest() == output.sha256, output.name


def test_no_console_errors_and_nothing_from_elsewhere(browser, opened_case, case_stack):
    assert console_errors(browser) == []
    # Everything the page loaded (bundle, calls, volumes, meshes, report) came from the gateway:
    # no CDN, no other host.
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    origin = case_stack.viewer_url.split("/viewer/")[0]
    assert urls and all(url.startswith(origin + "/") for url in urls), [u for u in urls if not u.startswith(origin)]
    assert any("/medseg.cases.v1.CaseService/GetCase" in url for url in urls)


def test_case_files_only_by_job_and_listed_name(case_stack, opened_case):
    """The viewer's file server hands out what GetCase lists, nothing else, and never names
    a server path."""
    import urllib.error

    job = opened_case
    base = case_stack.viewer_url
    for path, code in ((f"cases/{job.job_id}/outputs/..%2F..%2Fcases.db", 404),
                       (f"cases/{job.job_id}/outputs/work%2F..%2F..%2F..%2Fetc%2Fpasswd", 404),
                       (f"cases/..%2F{job.job_id}/outputs/mask.nii.gz", 400),
                       ("cases/0123456789abcdef/outputs/mask.nii.gz", 404),
                       (f"cases/{job.job_id}/phases/secret", 404),
                       ("..%2Fserver.py", 404), ("server.py", 404)):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + path, timeout=10)
        assert err.value.code == code, path
        body = err.value.read().decode()
        assert str(case_stack.data_root) not in body and "/work" not in body and "error" in json.loads(body)
    portal = urllib.request.urlopen(f"{base}cases/{job.job_id}/phases/portal", timeout=10).read()
    assert hashlib.sha256(portal).hexdigest() == next(i.sha256 for i in job.inputs if i.phase == "portal")


def test_a_bad_upload_is_refused_with_its_reason(browser, case_stack, tmp_path):
    """Not a NIfTI volume: UploadVolume's INVALID_ARGUMENT comes back through gRPC-Web to the
    page (code and reason, no server path), and no job is made."""
    bad = tmp_path / "not-a-volume.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file\n" * 64)
    browser.get(case_stack.viewer_url)
    wait_for(lambda: "job(s)" in browser.find_element("id", "status").text, 30, "the job list")
    rows = len(browser.find_elements("css selector", "#jobs tbody tr"))
    browser.find_element("id", "file-portal").send_keys(str(bad))
    browser.find_element("id", "submit").click()
    status = browser.find_element("id", "status")
    wait_for(lambda: "could not start the job" in status.text, 30, "the refusal")
    assert "InvalidArgument" in status.text and "error" in status.get_attribute("class"), status.text
    assert str(case_stack.data_root) not in status.text
    assert len(browser.find_elements("css selector", "#jobs tbody tr")) == rows
    assert console_errors(browser) == []
