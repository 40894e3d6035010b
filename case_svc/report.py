"""The case job's report: report.json (versioned schema) and report.html (one self-contained page).

report.json follows ``report.schema.json`` next to this file (described for people in
docs/case-report.md); ``validate_report`` checks a report against it. ``render_html`` turns a
report plus the final mask (and optionally a CT on the same grid) into a page a surgeon can
read offline: tables of the facts and PNG pictures embedded as data: URIs (orthogonal slices
with the mask overlaid, and a depth-shaded surface view of the 3D model computed with numpy).

Pictures work in an "LPS view" of the mask: the array's axes permuted and flipped (numpy
views, no copy) so that view axes 0, 1, 2 run inferior->superior, anterior->posterior and
patient right->left. Boxes and centres are found on the original contiguous array (one
ndimage.find_objects pass) and mapped into the view, and only 2D slices or the labelled box
are ever copied, so a 512x512x300 mask stays within a second or two and a few tens of MB.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from pathlib import Path, PurePosixPath

import numpy as np
from medseg.labels import COLORS, NAMES, Label
from medseg.summary import integer_array
from medseg.volumes import Volume, atomic_write
from PIL import Image
from scipy import ndimage

REPORT_SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
SCHEMA: dict = json.loads(SCHEMA_PATH.read_text())

CT_WINDOW = (400.0, 40.0)  # width, level (HU): soft-tissue window
MIN_PIXELS, MAX_PIXELS = 384, 512  # longest side of a picture (small grids are enlarged)
SLICE_ALPHA = 0.45  # mask opacity over the CT (structure outlines are opaque)
SURFACE_LABELS = (Label.KIDNEY, Label.TUMOR, Label.ARTERY, Label.VEIN, Label.URETER)  # fat would hide them
_BACKGROUND_3D = (24, 24, 28)
_UNKNOWN_COLOR = "#808080"


class ReportError(ValueError):
    """A report does not match the schema; the message names every bad field."""


# ---------------------------------------------------------------------------- validation
# A JSON Schema subset, enough for report.schema.json (jsonschema is not a dependency):
# type, enum, const, properties, required, additionalProperties, propertyNames, items,
# minItems, maxItems, minLength, pattern, minimum, maximum, exclusiveMinimum, $ref (#/$defs/...).
SUPPORTED_KEYWORDS = frozenset({
    "$schema", "$id", "$defs", "title", "description", "type", "enum", "const", "properties", "required",
    "additionalProperties", "propertyNames", "items", "minItems", "maxItems", "minLength", "pattern",
    "minimum", "maximum", "exclusiveMinimum", "$ref",
})

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, (list, tuple)),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    # NaN and infinities are not JSON
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate_report(report: dict) -> None:
    """Raise ReportError naming every field of `report` that does not match the schema."""
    errors: list[str] = []
    _check(report, SCHEMA, "", errors)
    if errors:
        raise ReportError(f"report does not match medseg.case-report v{REPORT_SCHEMA_VERSION}: " + "; ".join(errors))


def _equal(a, b) -> bool:
    # True == 1 in Python, but not in JSON
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _describe(value) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return type(value).__name__


def _check(value, schema: dict, path: str, errors: list[str]) -> None:
    where = path or "report"
    if "$ref" in schema:
        schema = SCHEMA["$defs"][schema["$ref"].removeprefix("#/$defs/")]
    if "const" in schema and not _equal(value, schema["const"]):
        errors.append(f"{where}: must be {schema['const']!r}, got {value!r}")
        return
    if "enum" in schema and not any(_equal(value, option) for option in schema["enum"]):
        errors.append(f"{where}: must be one of {schema['enum']}, got {value!r}")
        return
    if "type" in schema:
        types = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
        if not any(_TYPES[t](value) for t in types):
            errors.append(f"{where}: expected {' or '.join(types)}, got {_describe(value)}")
            return
    if isinstance(value, dict):
        _check_object(value, schema, path, errors)
    elif isinstance(value, (list, tuple)):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", math.inf):
            errors.append(f"{where}: expected {schema.get('minItems')}..{schema.get('maxItems')} items, got {len(value)}")
        for i, item in enumerate(value):
            if "items" in schema:
                _check(item, schema["items"], f"{path}[{i}]", errors)
    elif isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{where}: must not be empty")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    elif _TYPES["number"](value):
        if value < schema.get("minimum", -math.inf) or value > schema.get("maximum", math.inf):
            errors.append(f"{where}: {value} is outside {schema.get('minimum', '')}..{schema.get('maximum', '')}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{where}: {value} must be > {schema['exclusiveMinimum']}")


def _check_object(value: dict, schema: dict, path: str, errors: list[str]) -> None:
    prefix = f"{path}." if path else ""
    for key in schema.get("required", []):
        if key not in value:
            errors.append(f"{prefix}{key}: missing")
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if not isinstance(key, str):
            errors.append(f"{path or 'report'}: field name {key!r} is not a string")
            continue
        if "propertyNames" in schema:
            _check(key, schema["propertyNames"], f"{prefix}{key} (name)", errors)
        if key in properties:
            _check(item, properties[key], f"{prefix}{key}", errors)
        elif extra is False:
            errors.append(f"{prefix}{key}: unknown field")
        elif isinstance(extra, dict):
            _check(item, extra, f"{prefix}{key}", errors)


# ---------------------------------------------------------------------------- LPS view
def _lps_axes(mask: Volume) -> tuple[tuple[int, int, int], tuple[bool, bool, bool], tuple[float, float, float]]:
    """For view axes (S, P, L): the array axis each comes from, whether it is flipped, its
    spacing. Oblique directions are snapped to the nearest patient axis (pictures only)."""
    d = np.asarray(mask.direction).reshape(3, 3)  # column i: direction of index axis i (x, y, z)
    physical = [-1, -1, -1]  # index axis -> physical axis (0 L, 1 P, 2 S)
    for flat in np.argsort(-np.abs(d), axis=None):
        p, i = divmod(int(flat), 3)
        if physical[i] < 0 and p not in physical:
            physical[i] = p
    perm, flips, spacing = [], [], []
    for p in (2, 1, 0):  # view axes S, P, L
        i = physical.index(p)
        perm.append(2 - i)  # array axes are (z, y, x) = index axes (2, 1, 0)
        flips.append(bool(d[p, i] < 0))
        spacing.append(mask.spacing[i])
    return tuple(perm), tuple(flips), tuple(spacing)  # type: ignore[return-value]


def _view(array: np.ndarray, perm, flips) -> np.ndarray:
    view = array.transpose(perm)
    return view[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]


def _box_to_view(box, shape, perm, flips) -> tuple[slice, slice, slice]:
    out = []
    for q in range(3):
        s, n = box[perm[q]], shape[perm[q]]
        out.append(slice(n - s.stop, n - s.start) if flips[q] else slice(s.start, s.stop))
    return tuple(out)  # type: ignore[return-value]


def _array_to_view(index, shape, perm, flips) -> list[float]:
    """View index of a (fractional) (z, y, x) array index."""
    return [shape[perm[q]] - 1 - index[perm[q]] if flips[q] else index[perm[q]] for q in range(3)]


def _array_to_mm(mask: Volume, index) -> np.ndarray:
    """LPS mm of a (fractional) (z, y, x) array index."""
    z, y, x = index
    return (mask.index_to_physical_matrix() @ np.array([x, y, z, 1.0]))[:3]


def _focus(array: np.ndarray, boxes) -> tuple[str, np.ndarray]:
    """What the slices go through and its (z, y, x) array index: the centre of the largest
    tumor piece, else of the largest kidney, else the middle of the volume."""
    for value, what in ((Label.TUMOR, "tumor"), (Label.KIDNEY, "kidney")):
        if value <= len(boxes) and boxes[value - 1] is not None:
            box = boxes[value - 1]
            pieces, _ = ndimage.label(array[box] == value)
            sizes = np.bincount(pieces.ravel())[1:]
            centre = ndimage.center_of_mass(pieces == 1 + int(np.argmax(sizes)))
            return what, np.array([c + s.start for c, s in zip(centre, box)])
    return "middle of the volume", (np.array(array.shape) - 1) / 2.0


# ---------------------------------------------------------------------------- pictures
def _rgb(color: str) -> tuple[int, int, int]:
    color = color.lstrip("#")
    return tuple(int(color[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]


def _palette(top: int) -> np.ndarray:
    """(top + 1, 3) uint8 colours by label value; values outside the convention are grey."""
    return np.array([_rgb(COLORS.get(v, _UNKNOWN_COLOR)) for v in range(top + 1)], dtype=np.uint8)


def _resample_indices(n_rows: int, n_cols: int, row_mm: float, col_mm: float):
    """Nearest-neighbour row/column indices giving square pixels: the finer spacing, made
    coarser or finer to keep the longest side within MIN_PIXELS..MAX_PIXELS."""
    extent = max(n_rows * row_mm, n_cols * col_mm)
    pixel = max(min(row_mm, col_mm, extent / MIN_PIXELS), extent / MAX_PIXELS)
    rows = np.minimum(((np.arange(max(1, round(n_rows * row_mm / pixel))) + 0.5) * pixel / row_mm).astype(int), n_rows - 1)
    cols = np.minimum(((np.arange(max(1, round(n_cols * col_mm / pixel))) + 0.5) * pixel / col_mm).astype(int), n_cols - 1)
    return rows[:, None], cols[None, :], pixel


def _slice_picture(labels: np.ndarray, ct: np.ndarray | None, row_mm: float, col_mm: float, palette) -> np.ndarray:
    """RGB of one slice: CT in the soft-tissue window (black without CT), the mask blended
    over it and each structure's outline opaque."""
    rows, cols, _ = _resample_indices(*labels.shape, row_mm, col_mm)
    labels = labels[rows, cols]
    if ct is None:
        base = np.zeros(labels.shape + (3,), dtype=np.float32)
        alpha = 1.0
    else:
        width, level = CT_WINDOW
        gray = np.clip((ct[rows, cols].astype(np.float32) - (level - width / 2)) * (255.0 / width), 0, 255)
        base = np.repeat(gray[..., None], 3, axis=2)
        alpha = SLICE_ALPHA
    colour = palette[labels].astype(np.float32)
    inside = labels > 0
    edge = np.zeros_like(inside)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    weight = np.where(inside & edge, 1.0, np.where(inside, alpha, 0.0)).astype(np.float32)[..., None]
    return (base * (1 - weight) + colour * weight).round().astype(np.uint8)


def _surface_picture(labels: np.ndarray, depth_mm: np.ndarray, row_mm: float, col_mm: float, palette) -> np.ndarray:
    """RGB of a depth-shaded surface: label colour x Lambert shading of the depth map's
    normals (light from the upper left, behind the viewer), darker with depth."""
    rows, cols, pixel = _resample_indices(*labels.shape, row_mm, col_mm)
    labels, depth = labels[rows, cols], depth_mm[rows, cols]
    hit = labels > 0
    far = float(depth[hit].max()) if hit.any() else 0.0
    near = float(depth[hit].min()) if hit.any() else 0.0
    # background pushed behind everything: silhouettes get steep slopes and shade dark
    # smoothing over about a voxel hides the voxel steps of the depth map
    sigma = 1.5 * max(row_mm, col_mm) / pixel
    depth = ndimage.gaussian_filter(np.where(hit, depth, far + 10.0 * pixel).astype(np.float32), sigma)
    slope_r, slope_c = np.gradient(depth, pixel)
    light = np.array([-0.4, -0.5, -1.0]) / math.sqrt(0.16 + 0.25 + 1.0)  # (col, row, depth)
    lambert = (slope_c * light[0] + slope_r * light[1] - light[2]) / np.sqrt(1.0 + slope_c**2 + slope_r**2)
    cue = 1.0 - 0.35 * (depth - near) / max(far - near, 1e-6)
    shade = np.clip((0.25 + 0.75 * np.clip(lambert, 0, 1)) * cue, 0, 1)[..., None]
    picture = palette[labels].astype(np.float32) * shade
    picture[~hit] = _BACKGROUND_3D
    return picture.round().astype(np.uint8)


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG")
    return buffer.getvalue()


def _pictures(mask: Volume, ct: Volume | None) -> tuple[list[tuple[str, str, bytes]], list[int]]:
    """(alt, caption, png) of the axial, coronal and sagittal slices and the anterior and
    posterior surface views, plus the label values present."""
    array = integer_array(mask)
    boxes = ndimage.find_objects(array)
    present = [v + 1 for v, box in enumerate(boxes) if box is not None]
    palette = _palette(len(boxes))
    perm, flips, (sz, sy, sx) = _lps_axes(mask)
    view = _view(array, perm, flips)
    ct_view = None if ct is None else _view(np.asarray(ct.array), perm, flips)

    what, centre = _focus(array, boxes)
    kz, ky, kx = (round(c) for c in _array_to_view(centre, array.shape, perm, flips))
    x, y, z = _array_to_mm(mask, centre)
    where = f"through the {what} centre, LPS ({x:.0f}, {y:.0f}, {z:.0f}) mm"

    def ct_slice(index):
        return None if ct_view is None else ct_view[index]

    pictures = []
    slices = (
        # (name, view index, row mm, col mm, how it is seen)
        ("Axial", (kz, slice(None), slice(None)), sy, sx, "seen from the feet: patient's right on the left, anterior up"),
        ("Coronal", (slice(None, None, -1), ky, slice(None)), sz, sx, "seen from the front: patient's right on the left, superior up"),
        ("Sagittal", (slice(None, None, -1), slice(None), kx), sz, sy, "seen from the patient's left: anterior on the left, superior up"),
    )
    for name, index, row_mm, col_mm, seen in slices:
        rgb = _slice_picture(view[index], ct_slice(index), row_mm, col_mm, palette)
        pictures.append((f"{name} slice", f"{name} slice {where}; {seen}.", _png(rgb)))

    drawn = [v for v in SURFACE_LABELS if v in present]
    if drawn:
        lo = np.min([[s.start for s in boxes[v - 1]] for v in drawn], axis=0)
        hi = np.max([[s.stop for s in boxes[v - 1]] for v in drawn], axis=0)
        box = _box_to_view(tuple(slice(a, b) for a, b in zip(lo, hi)), array.shape, perm, flips)
        sub = view[box]
        lut = np.zeros(len(palette), dtype=bool)
        lut[drawn] = True
        solid = lut[sub]  # the only box-sized temporary
        names = ", ".join(NAMES[v] for v in drawn)
        for name, first_side in (("Anterior", True), ("Posterior", False)):
            ray = solid if first_side else solid[:, ::-1, :]
            first = ray.argmax(axis=1)  # (z, x): first drawn voxel along the ray
            hit = ray.any(axis=1)
            seen = sub if first_side else sub[:, ::-1, :]
            labels = np.where(hit, np.take_along_axis(seen, first[:, None, :], axis=1)[:, 0, :], 0)
            labels, depth = labels[::-1], (first * sy)[::-1]  # superior up
            if not first_side:
                labels, depth = labels[:, ::-1], depth[:, ::-1]  # seen from behind: patient's left on the left
            rgb = _surface_picture(labels, depth, sz, sx, palette)
            caption = (f"3D model, {name.lower()} view ({names}; fat not drawn): "
                       + ("patient's right on the left" if first_side else "patient's left on the left") + ", superior up.")
            pictures.append((f"{name} 3D view", caption, _png(rgb)))
    return pictures, present


# ---------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:0 auto;max-width:1200px;
padding:16px 24px;color:#1d1d1f;background:#fff;line-height:1.4}
h1{margin:0 0 4px;font-size:26px}h2{margin:28px 0 8px;font-size:19px;border-bottom:2px solid #ddd;padding-bottom:3px}
h3{margin:14px 0 6px;font-size:16px}
.meta{color:#555}.warn{color:#8a5a00;font-size:13px}
.state{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600;font-size:14px}
.SUCCEEDED{background:#2e7d32}.FAILED{background:#c62828}.CANCELLED{background:#6d6d6d}
.RUNNING,.QUEUED,.PENDING{background:#1565c0}.SKIPPED{background:#8d6e63}
.error{background:#fdecea;border:1px solid #c62828;padding:8px 12px;border-radius:4px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:14px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.sw{display:inline-block;width:12px;height:12px;border:1px solid #555;margin-right:6px;vertical-align:-1px}
figure{display:inline-block;margin:6px 10px 10px 0;vertical-align:top;max-width:100%}
figure img{max-width:100%;height:auto;border:1px solid #999;image-rendering:auto}
figcaption{font-size:13px;color:#444;max-width:520px}
.legend span{margin-right:16px;white-space:nowrap}
.renal{font-size:18px;font-weight:600}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, (bool, int)):
        return str(value)
    return f"{value:.{digits}f}"


def _point(point, digits: int = 1) -> str:
    return "—" if point is None else "(" + ", ".join(_num(v, digits) for v in point) + ")"


def _shown_path(text: str) -> str:
    """A path as shown in the page: absolute paths keep only their last two parts, so no
    folder of the server's file system is published."""
    unified = text.replace("\\", "/")
    if unified.startswith(("/", "~")) or re.match(r"^[A-Za-z]:/", unified):
        return "…/" + "/".join(PurePosixPath(unified).parts[-2:])
    return text


def _swatch(value: int) -> str:
    return f'<span class="sw" style="background:{_e(COLORS.get(value, _UNKNOWN_COLOR))}"></span>'


def _table(header: list[str], rows: list[list], numeric: tuple[int, ...] = (), mono: tuple[int, ...] = (),
           swatches: list[int] | None = None) -> str:
    """HTML table of plain values (escaped here); columns in `numeric` right-aligned, in
    `mono` monospace; swatches: a label value per row, drawn before the first cell."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for r, row in enumerate(rows):
        cells = []
        for c, cell in enumerate(row):
            css = "n" if c in numeric else "mono" if c in mono else ""
            lead = _swatch(swatches[r]) if swatches is not None and c == 0 else ""
            cells.append(f'<td class="{css}">{lead}{_e(cell)}</td>' if css else f"<td>{lead}{_e(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _renal_text(renal: dict | None) -> str:
    if renal is None:
        return "not computed"
    parts = " ".join(f"{k}{'?' if renal[k] is None else renal[k]}" for k in "RENAL")
    score = renal["score"]
    if score is None:
        return f"{parts} (score not computed)"
    complexity = "low" if score <= 6 else "moderate" if score <= 9 else "high"
    return f"{parts} = {score} ({complexity} complexity)"


def _tumor_section(tumors: list[dict]) -> str:
    if not tumors:
        return "<p>No tumor found.</p>"
    out = []
    for i, t in enumerate(tumors, 1):
        exophytic = t["exophytic_fraction"]
        rows = [
            ["Side", t["side"] or "—"],
            ["Polar location", t["polar_location"] or "—"],
            ["Centre (LPS mm)", _point(t["centre_mm"])],
            ["Largest diameter (mm)", _num(t["max_diameter_mm"])],
            ["Volume (ml)", _num(t["volume_ml"])],
            ["Exophytic part (%)", "—" if exophytic is None else f"{100 * exophytic:.0f}"],
            ["Distance to renal sinus (mm)", _num(t["distance_to_sinus_mm"])],
            ["Distance to artery (mm)", _num(t["distance_to_artery_mm"])],
            ["Distance to vein (mm)", _num(t["distance_to_vein_mm"])],
        ]
        out.append(f"<h3>Tumor {i}</h3>")
        out.append(f'<p class="renal">R.E.N.A.L. nephrometry: {_e(_renal_text(t["renal"]))}</p>')
        out.append(_table(["Fact", "Value"], rows))
        if t["note"]:
            out.append(f"<p>{_e(t['note'])}</p>")
    return "".join(out)


def _repairs_section(report: dict) -> str:
    fat = report["fat"]
    fat_html = (
        "<p>Perirenal fat: not computed.</p>" if fat is None else
        f"<p>Perirenal fat: <b>{_num(fat['volume_ml'])} ml</b> "
        f"({'CT intensities used' if fat['used_ct'] else 'geometric shell, no CT'}). {_e(fat['note'])}</p>"
    )
    rows = []
    for name, repair in (("Vessels", report["repairs"]["vessels"]), ("Ureters", report["repairs"]["ureters"])):
        if repair is None:
            rows.append([name, "—", "—", "—", "not run"])
        else:
            rows.append([name, repair["pieces_before"], repair["pieces_after"], repair["bridges"], repair["note"]])
    return fat_html + _table(["Repair", "Pieces before", "Pieces after", "Bridges", "Note"], rows, numeric=(1, 2, 3))


def render_html(report: dict, mask: Volume, ct: Volume | None = None) -> str:
    """One self-contained HTML page (inline CSS, PNGs as data: URIs, no scripts or links)
    for a report (validated here), its final convention mask and optionally a CT on the mask's grid."""
    validate_report(report)
    if ct is not None and not ct.same_grid(mask):
        raise ValueError("ct must share the mask's grid (size, spacing, origin, direction) to be overlaid")
    pictures, present = _pictures(mask, ct)
    state = report["state"]
    created = report["created"].replace("T", " ")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Case {_e(report['case_id'])}: {_e(state)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Case {_e(report['case_id'])} <span class=\"state {_e(state)}\">{_e(state)}</span></h1>",
        f'<p class="meta">Report created {_e(created)} · schema {_e(report["schema"])} v{_e(report["schema_version"])}</p>',
        '<p class="warn">Automatic segmentation: check every structure against the CT before planning.</p>',
    ]
    if report["error"]:
        parts.append(f'<p class="error"><b>Error:</b> {_e(report["error"])}</p>')

    parts.append("<h2>Tumors</h2>" + _tumor_section(report["tumors"]))

    parts.append("<h2>Pictures</h2>")
    legend = "".join(f"<span>{_swatch(v)}{_e(NAMES.get(v, f'label {v}'))}</span>" for v in present)
    parts.append(f'<p class="legend">{legend or "Empty mask."}</p>')
    for alt, caption, png in pictures:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{_e(caption)}</figcaption></figure>")

    structures = report["structures"]
    parts.append("<h2>Structures</h2>")
    parts.append(_table(
        ["Structure", "Volume (ml)", "Pieces", "Largest diameter (mm)", "Box min (LPS mm)", "Box max (LPS mm)", "Box size (mm)"],
        [[s["name"], _num(s["volume_ml"]), s["pieces"], _num(s["largest_diameter_mm"]), _point(s["bbox_min_mm"]),
          _point(s["bbox_max_mm"]),
          "—" if s["bbox_min_mm"] is None or s["bbox_max_mm"] is None else
          " × ".join(_num(b - a) for a, b in zip(s["bbox_min_mm"], s["bbox_max_mm"]))]
         for s in structures],
        numeric=(1, 2, 3), swatches=[s["value"] for s in structures]))

    parts.append("<h2>Perirenal fat and repairs</h2>" + _repairs_section(report))

    parts.append("<h2>Removed specks</h2>")
    specks = report["removed_specks"]
    parts.append(_table(["Label", "Voxels", "Volume (ml)", "Centre (LPS mm)", "Why"],
                        [[s["label"], s["voxels"], _num(s["volume_ml"], 3), _point(s["centre_mm"]),
                          s.get("reason", "speck")] for s in specks],
                        numeric=(1, 2)) if specks else "<p>None.</p>")

    parts.append("<h2>Skipped tasks</h2>")
    skipped = report["skipped"]
    parts.append(_table(["Task", "Reason"], [[s["task"], s["reason"]] for s in skipped]) if skipped else "<p>None.</p>")

    steps = report["steps"]
    parts.append("<h2>Steps</h2>")
    parts.append(_table(["Step", "State", "Time (s)", "Note"],
                        [[s["name"], s["state"], _num(s["seconds"]), s["note"]] for s in steps]
                        + [["Total", "", _num(sum(s["seconds"] for s in steps)), ""]], numeric=(2,)))

    parts.append("<h2>Inputs</h2>")
    parts.append(_table(["Phase", "Size (voxels)", "Spacing (mm)", "Source", "SHA-256"],
                        [[phase, " × ".join(str(n) for n in i["size"]), " × ".join(_num(s, 2) for s in i["spacing_mm"]),
                          _shown_path(i["source"]), i["sha256"]] for phase, i in report["inputs"].items()],
                        mono=(4,)))

    parts.append("<h2>Models</h2>")
    parts.append(_table(["Task", "Version", "Digest", "Folders"],
                        [[m["task"], m["version"], m["digest"], ", ".join(_shown_path(f) for f in m["folders"])]
                         for m in report["models"]], mono=(2,)) if report["models"] else "<p>None.</p>")

    parts.append("<h2>Outputs</h2>")
    parts.append(_table(["File", "Bytes", "SHA-256"],
                        [[name, o["bytes"], o["sha256"]] for name, o in sorted(report["outputs"].items())],
                        numeric=(1,), mono=(2,)) if report["outputs"] else "<p>None.</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------- files
def write_report(folder: Path, report: dict, mask: Volume, ct: Volume | None = None) -> dict[str, Path]:
    """Validate the report, render the page, then write report.json (sorted keys, indented)
    and report.html atomically into folder. Nothing is written if either step fails."""
    folder = Path(folder)
    page = render_html(report, mask, ct)  # validates the report
    text = json.dumps(report, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n"
    return {
        "report.json": atomic_write(folder / "report.json", lambda tmp: tmp.write_text(text, encoding="utf-8")),
        "report.html": atomic_write(folder / "report.html", lambda tmp: tmp.write_text(page, encoding="utf-8")),
    }
