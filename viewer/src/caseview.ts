// One finished case: the CT phases with the mask (2D, axial/coronal/sagittal), the 3D models,
// the findings with their boxes, the report and the downloads.
import { MULTIPLANAR_TYPE, NVImage, NVMesh, Niivue, SHOW_RENDER } from "@niivue/niivue";
import type { CaseJob } from "./gen/medseg/cases/v1/cases_pb";
import type { LabelMeasurement } from "./gen/medseg/postprocess/v1/postprocess_pb";
import { LABELS, STRUCTURES, labelByName, type LabelInfo } from "./labels";
import { parseObj } from "./obj";

const PHASE_NAMES: Record<string, string> = { arterial: "Arterial", portal: "Portal venous", delayed: "Delayed" };
const PHASE_ORDER = ["portal", "arterial", "delayed"];
const BOX_COLOR: [number, number, number] = [0, 255, 255];
const BACK_3D: [number, number, number, number] = [0.13, 0.16, 0.2, 1];
// Soft-tissue window (level 40 HU, width 400 HU).
const WINDOW = { min: -160, max: 240 };

export interface Finding {
  label: LabelInfo;
  piece: number; // 1 = the label's largest piece
  volumeMl: number;
  diameterMm: number;
  minIndex: number[];
  maxIndex: number[];
  centreMm: [number, number, number]; // LPS, as the contract gives boxes
}

function el<K extends keyof HTMLElementTagNameMap>(tag: K, props: Partial<HTMLElementTagNameMap[K]> = {},
  ...children: (Node | string)[]): HTMLElementTagNameMap[K] {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function fixed(value: number | null | undefined, digits: number): string {
  return value === null || value === undefined || Number.isNaN(value) ? "—" : value.toFixed(digits);
}

/** A number cell of the report: formatted text, the exact value in data-value. */
function num(value: number | null | undefined, digits: number, field: string): HTMLTableCellElement {
  const cell = el("td", { textContent: fixed(value, digits), className: "num" });
  cell.dataset.field = field;
  if (value !== null && value !== undefined) cell.dataset.value = String(value);
  return cell;
}

// A piece under this share of its structure's largest piece is a finding (a fragment, not
// the second kidney or ureter of a pair).
const FRAGMENT_SHARE = 0.1;

/** Small findings, from Measure's per-component boxes: every tumor piece, and every piece of
 * another structure much smaller than that structure's largest piece. */
export function findings(structures: LabelMeasurement[]): Finding[] {
  const found: Finding[] = [];
  for (const s of structures) {
    const label = LABELS.get(s.value) ?? labelByName(s.name);
    if (!label) continue;
    const largest = Math.max(0, ...s.components.map((c) => c.volumeMl));
    s.components.forEach((c, i) => {
      if (label.name !== "tumor" && c.volumeMl >= FRAGMENT_SHARE * largest) return;
      const box = c.bbox;
      if (!box || box.minMm.length !== 3 || box.maxMm.length !== 3) return;
      found.push({
        label, piece: i + 1, volumeMl: c.volumeMl, diameterMm: c.largestDiameterMm,
        minIndex: [...box.minIndex], maxIndex: [...box.maxIndex],
        centreMm: [0, 1, 2].map((a) => (box.minMm[a] + box.maxMm[a]) / 2) as [number, number, number],
      });
    });
  }
  return found;
}

function labelColormap(visible: Set<number>) {
  const values = [...LABELS.keys()].sort((a, b) => a - b);
  return {
    R: values.map((v) => LABELS.get(v)!.rgb[0]),
    G: values.map((v) => LABELS.get(v)!.rgb[1]),
    B: values.map((v) => LABELS.get(v)!.rgb[2]),
    A: values.map((v) => (v !== 0 && visible.has(v) ? 255 : 0)),
    I: values,
    labels: values.map((v) => LABELS.get(v)!.name),
  };
}

const BOX_COLORMAP = { R: [0, BOX_COLOR[0]], G: [0, BOX_COLOR[1]], B: [0, BOX_COLOR[2]], A: [0, 255], I: [0, 1], labels: ["", "box"] };

/** A volume on the mask's grid with the walls of each finding's box, one voxel outside it. */
function boxesVolume(mask: NVImage, found: Finding[]): NVImage {
  const boxes = mask.clone();
  boxes.zeroImage();
  const dims = mask.hdr!.dims;
  const [nx, ny, nz] = [dims[1], dims[2], dims[3]];
  const img = boxes.img!;
  for (const f of found) {
    const lo = f.minIndex.map((v) => v - 1);
    const hi = f.maxIndex.map((v) => v + 1);
    for (let z = Math.max(lo[2], 0); z <= Math.min(hi[2], nz - 1); z++) {
      for (let y = Math.max(lo[1], 0); y <= Math.min(hi[1], ny - 1); y++) {
        for (let x = Math.max(lo[0], 0); x <= Math.min(hi[0], nx - 1); x++) {
          const walls = Number(x === lo[0] || x === hi[0]) + Number(y === lo[1] || y === hi[1]) + Number(z === lo[2] || z === hi[2]);
          if (walls >= 1) img[x + nx * (y + ny * z)] = 1;
        }
      }
    }
  }
  boxes.name = "boxes";
  boxes.setColormapLabel(BOX_COLORMAP);
  return boxes;
}

/** The voxel (i, j, k) of a NIfTI file at a world (RAS mm) point: its affine inverted. */
export function fileVoxel(affine: number[][], mm: ArrayLike<number>): number[] {
  const [a, b, c] = [0, 1, 2].map((r) => affine[r].slice(0, 3));
  const rhs = [0, 1, 2].map((r) => mm[r] - affine[r][3]);
  const det = (m: number[][]) => m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
    - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
  const m = [a, b, c];
  const d = det(m);
  return [0, 1, 2].map((col) => Math.round(det(m.map((row, r) => row.map((v, k) => (k === col ? rhs[r] : v)))) / d));
}

export class CaseView {
  readonly root: HTMLElement;
  private nv2d!: Niivue;
  private nv3d!: Niivue;
  private visible2d = new Set<number>();
  private meshes = new Map<string, NVMesh>();
  private found: Finding[] = [];
  private phase = "";
  private opacity = 0.6;
  private location!: HTMLElement;

  constructor(private job: CaseJob, private say: (text: string) => void) {
    this.root = el("section", { id: "case", className: "case" });
    this.root.setAttribute("aria-labelledby", "case-title");
  }

  private url(kind: "outputs" | "phases", name: string): string {
    return `cases/${encodeURIComponent(this.job.jobId)}/${kind}/${name.split("/").map(encodeURIComponent).join("/")}`;
  }

  private output(name: string) {
    return this.job.result?.outputs.find((o) => o.name === name);
  }

  async open(): Promise<void> {
    const job = this.job;
    const phases = PHASE_ORDER.filter((p) => job.inputs.some((i) => i.phase === p && /\.nii(\.gz)?$/.test(i.path)));
    const present = new Set((job.result?.structures ?? []).map((s) => s.value));
    const structures = STRUCTURES.filter((l) => present.has(l.value));
    this.visible2d = new Set(structures.map((l) => l.value));
    this.found = findings(job.result?.structures ?? []);
    this.phase = phases[0] ?? "";

    const canvas2d = el("canvas", { id: "view2d", tabIndex: 0 });
    canvas2d.setAttribute("role", "img");
    canvas2d.setAttribute("aria-label", "CT slices (axial, coronal, sagittal) with the mask; arrow keys and Page Up/Down move the crosshair");
    // Not a tab stop: the buttons above it turn and zoom it from the keyboard.
    const canvas3d = el("canvas", { id: "view3d" });
    canvas3d.setAttribute("role", "img");
    canvas3d.setAttribute("aria-label", "3D models of the structures; drag to orbit, wheel to zoom (or the view buttons)");
    this.location = el("p", { id: "location", className: "location" });
    this.location.setAttribute("aria-live", "polite");

    this.root.replaceChildren(
      el("h2", { id: "case-title" }, `Case ${job.displayName || job.jobId}`, el("small", { className: "job-id" }, ` job ${job.jobId}`)),
      el("div", { className: "case-grid" },
        el("div", { className: "images" },
          this.controls2d(phases, structures),
          el("div", { className: "canvas-box wide" }, canvas2d),
          this.location,
          el("h3", {}, "3D models"),
          this.controls3d(),
          el("div", { className: "canvas-box" }, canvas3d)),
        el("div", { className: "side" },
          this.findingsPanel(),
          el("section", { id: "report", className: "report" }, el("h3", {}, "Report"), el("p", {}, "loading the report…")),
          this.downloadsPanel())));

    this.say(`opening case ${job.jobId}…`);
    await Promise.all([this.start2d(canvas2d), this.start3d(canvas3d), this.loadReport()]);
    canvas2d.addEventListener("keydown", (e) => this.onKey(e));
    this.root.dataset.ready = "true";
    this.say(`case ${job.displayName || job.jobId} loaded`);
  }

  // --- 2D -----------------------------------------------------------------------------

  private controls2d(phases: string[], structures: LabelInfo[]): HTMLElement {
    const phaseSet = el("fieldset", { className: "phases" }, el("legend", {}, "Phase"));
    for (const p of phases) {
      const input = el("input", { type: "radio", name: "phase", value: p, id: `phase-${p}`, checked: p === this.phase });
      input.addEventListener("change", () => void this.showPhase(p));
      phaseSet.append(el("label", { htmlFor: input.id }, input, ` ${PHASE_NAMES[p]}`));
    }
    if (!phases.length) phaseSet.append(el("p", {}, "no NIfTI phase to show"));

    const opacity = el("input", { type: "range", id: "opacity", min: "0", max: "1", step: "0.05", value: String(this.opacity) });
    opacity.addEventListener("input", () => this.setOpacity(Number(opacity.value)));
    const boxes = el("input", { type: "checkbox", id: "show-boxes", checked: true });
    boxes.addEventListener("change", () => this.setBoxes(boxes.checked));

    const table = el("table", { id: "structures", className: "structures" },
      el("caption", {}, "Structures"),
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Structure"), el("th", { scope: "col" }, "Slices"), el("th", { scope: "col" }, "3D"))));
    const body = el("tbody");
    for (const l of structures) {
      const in2d = el("input", { type: "checkbox", id: `show2d-${l.name}`, checked: true });
      in2d.setAttribute("aria-label", `Show ${l.name} in the slices`);
      in2d.addEventListener("change", () => this.setVisible2d(l.value, in2d.checked));
      const in3d = el("input", { type: "checkbox", id: `show3d-${l.name}`, checked: true });
      in3d.setAttribute("aria-label", `Show ${l.name} in 3D`);
      in3d.addEventListener("change", () => this.setVisible3d(l.name, in3d.checked));
      const swatch = el("span", { className: "swatch" });
      swatch.style.background = l.color;
      const row = el("tr", {}, el("th", { scope: "row" }, swatch, ` ${l.name}`), el("td", {}, in2d), el("td", {}, in3d));
      row.dataset.label = l.name;
      body.append(row);
    }
    table.append(body);
    return el("div", { className: "controls" }, phaseSet,
      el("label", { htmlFor: "opacity" }, "Mask opacity ", opacity),
      el("label", { htmlFor: "show-boxes" }, boxes, " Boxes around findings"),
      table);
  }

  private async start2d(canvas: HTMLCanvasElement): Promise<void> {
    this.nv2d = new Niivue({
      backColor: [0, 0, 0, 1], crosshairColor: [0, 1, 0, 1], crosshairWidth: 1, show3Dcrosshair: false,
      multiplanarShowRender: SHOW_RENDER.NEVER, multiplanarLayout: MULTIPLANAR_TYPE.ROW,
      isRadiologicalConvention: true, // the patient's right on the screen's left, as CT is read
      dragAndDropEnabled: false, isColorbar: false, loadingText: "", logLevel: "error",
    });
    await this.nv2d.attachToCanvas(canvas, false);
    this.nv2d.setSliceType(this.nv2d.sliceTypeMultiplanar);
    this.nv2d.onLocationChange = (data) => this.onLocation(data as { mm: ArrayLike<number>; values: { name: string; value: number }[] });
    if (!this.phase || !this.output("mask.nii.gz")) {
      this.location.textContent = "no CT phase or mask to show";
      return;
    }
    await this.nv2d.loadVolumes([
      { url: this.url("phases", this.phase), name: `${this.phase}.nii.gz`, colormap: "gray", cal_min: WINDOW.min, cal_max: WINDOW.max },
      { url: this.url("outputs", "mask.nii.gz"), name: "mask.nii.gz", opacity: this.opacity },
    ]);
    const mask = this.nv2d.volumes[1];
    mask.setColormapLabel(labelColormap(this.visible2d));
    if (this.found.length) this.nv2d.addVolume(boxesVolume(mask, this.found));
    this.nv2d.setOpacity(1, this.opacity);
    this.nv2d.updateGLVolume();
    const first = this.found.find((f) => f.label.name === "tumor") ?? this.found[0];
    if (first) this.jumpTo(first);
  }

  private async showPhase(phase: string): Promise<void> {
    if (phase === this.phase) return;
    this.phase = phase;
    this.say(`loading the ${PHASE_NAMES[phase]} phase…`);
    const ct = await NVImage.loadFromUrl({ url: this.url("phases", phase), name: `${phase}.nii.gz`, colormap: "gray",
      cal_min: WINDOW.min, cal_max: WINDOW.max });
    const old = this.nv2d.volumes[0];
    this.nv2d.addVolume(ct);
    this.nv2d.setVolume(ct, 0);
    this.nv2d.removeVolume(old);
    this.nv2d.updateGLVolume();
    this.say(`${PHASE_NAMES[phase]} phase shown`);
  }

  private setOpacity(value: number): void {
    this.opacity = value;
    if (this.nv2d.volumes.length > 1) this.nv2d.setOpacity(1, value);
  }

  private setBoxes(show: boolean): void {
    if (this.nv2d.volumes.length > 2) this.nv2d.setOpacity(2, show ? 1 : 0);
  }

  private setVisible2d(value: number, show: boolean): void {
    if (show) this.visible2d.add(value); else this.visible2d.delete(value);
    const mask = this.nv2d.volumes[1];
    if (!mask) return;
    mask.setColormapLabel(labelColormap(this.visible2d));
    this.nv2d.updateGLVolume();
  }

  private onLocation(data: { mm: ArrayLike<number>; values: { name: string; value: number }[] }): void {
    const mask = data.values.find((v) => v.name === "mask.nii.gz");
    const ct = data.values[0];
    if (!mask || !ct || !this.nv2d.volumes[1]?.hdr) return;
    const label = LABELS.get(Math.round(mask.value));
    // The mask file's own voxel indices (as the contract's boxes and any NIfTI reader count
    // them), not NiiVue's reoriented ones.
    const vox = fileVoxel(this.nv2d.volumes[1].hdr.affine as number[][], data.mm);
    this.location.dataset.voxel = vox.join(",");
    this.location.dataset.label = label?.name ?? "";
    this.location.textContent = `voxel ${vox.join(", ")} · ${Math.round(ct.value)} HU · ${label && label.value ? label.name : "no structure"}`;
  }

  private onKey(e: KeyboardEvent): void {
    const moves: Record<string, [number, number, number]> = {
      ArrowLeft: [-1, 0, 0], ArrowRight: [1, 0, 0], ArrowDown: [0, -1, 0], ArrowUp: [0, 1, 0],
      PageDown: [0, 0, -1], PageUp: [0, 0, 1],
    };
    const move = moves[e.key];
    if (!move || !this.nv2d.volumes.length) return;
    e.preventDefault();
    this.nv2d.moveCrosshairInVox(...move);
    this.nv2d.drawScene();
  }

  jumpTo(f: Finding): void {
    const [x, y, z] = f.centreMm;
    // Boxes come in LPS mm; NiiVue's world is RAS.
    this.nv2d.scene.crosshairPos = this.nv2d.mm2frac([-x, -y, z]);
    this.nv2d.drawScene();
    this.nv2d.createOnLocationChange();
  }

  // --- 3D -----------------------------------------------------------------------------

  private controls3d(): HTMLElement {
    const views: [string, number, number][] = [["Front", 180, 0], ["Back", 0, 0], ["Left", 90, 0], ["Right", 270, 0], ["Top", 180, 90]];
    const bar = el("div", { className: "view-buttons", role: "group" });
    bar.setAttribute("aria-label", "3D view direction");
    for (const [name, azimuth, elevation] of views) {
      const button = el("button", { type: "button", textContent: name });
      button.addEventListener("click", () => this.nv3d.setRenderAzimuthElevation(azimuth, elevation));
      bar.append(button);
    }
    for (const [name, factor] of [["Zoom in", 1.25], ["Zoom out", 0.8]] as const) {
      const button = el("button", { type: "button", textContent: name });
      button.addEventListener("click", () => {
        this.nv3d.scene.volScaleMultiplier = Math.min(Math.max(this.nv3d.scene.volScaleMultiplier * factor, 0.3), 6);
        this.nv3d.drawScene();
      });
      bar.append(button);
    }
    return bar;
  }

  private async start3d(canvas: HTMLCanvasElement): Promise<void> {
    this.nv3d = new Niivue({ backColor: BACK_3D, show3Dcrosshair: false, dragAndDropEnabled: false, isColorbar: false,
      loadingText: "", logLevel: "error" });
    await this.nv3d.attachToCanvas(canvas, false);
    this.nv3d.setSliceType(this.nv3d.sliceTypeRender);
    if (!this.output("meshes/model.obj")) return;
    const reply = await fetch(this.url("outputs", "meshes/model.obj"));
    if (!reply.ok) throw new Error(`meshes/model.obj: HTTP ${reply.status}`);
    for (const part of parseObj(await reply.text())) {
      const label = labelByName(part.name);
      const rgba = new Uint8Array([...(label?.rgb ?? [200, 200, 200]), 255]);
      // Fat wraps the kidneys: translucent, so what it surrounds stays visible.
      const opacity = part.name === "fat" ? 0.35 : 1;
      const mesh = new NVMesh(part.points, part.triangles, part.name, rgba, opacity, true, this.nv3d.gl);
      this.nv3d.addMesh(mesh);
      this.meshes.set(part.name, mesh);
    }
    this.nv3d.setRenderAzimuthElevation(180, 0);
  }

  private setVisible3d(name: string, show: boolean): void {
    const mesh = this.meshes.get(name);
    if (!mesh) return;
    // NiiVue types the id as a number; its meshes carry string ids, which it matches.
    this.nv3d.setMeshProperty(mesh.id as unknown as number, "visible", show);
    this.nv3d.drawScene();
  }

  // --- findings, report, downloads ------------------------------------------------------

  private findingsPanel(): HTMLElement {
    const list = el("ol", { id: "findings" });
    for (const f of this.found) {
      const button = el("button", { type: "button",
        textContent: `${f.label.name} piece ${f.piece}: ${fixed(f.volumeMl, 2)} ml, ${fixed(f.diameterMm, 1)} mm` });
      button.dataset.label = f.label.name;
      button.dataset.piece = String(f.piece);
      button.setAttribute("aria-pressed", "false");
      button.addEventListener("click", () => {
        list.querySelectorAll("button").forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
        this.jumpTo(f);
      });
      const swatch = el("span", { className: "swatch" });
      swatch.style.background = f.label.color;
      list.append(el("li", {}, swatch, button));
    }
    return el("section", { className: "findings" }, el("h3", {}, "Findings"),
      this.found.length ? list : el("p", {}, "no small findings (tumors or extra pieces)"));
  }

  private async loadReport(): Promise<void> {
    const section = this.root.querySelector<HTMLElement>("#report")!;
    if (!this.output("report.json")) {
      section.replaceChildren(el("h3", {}, "Report"), el("p", {}, "this job has no report"));
      return;
    }
    const reply = await fetch(this.url("outputs", "report.json"));
    if (!reply.ok) throw new Error(`report.json: HTTP ${reply.status}`);
    const report = await reply.json();
    const parts: HTMLElement[] = [el("h3", {}, "Report")];

    const structures = el("table", { id: "report-structures" },
      el("caption", {}, "Structures"),
      el("thead", {}, el("tr", {}, ...["Structure", "Volume (ml)", "Pieces", "Largest diameter (mm)"].map((t) => el("th", { scope: "col", textContent: t })))));
    const body = el("tbody");
    for (const s of report.structures ?? []) {
      const row = el("tr", {}, el("th", { scope: "row", textContent: s.name }),
        num(s.volume_ml, 2, "volume_ml"), num(s.pieces, 0, "pieces"), num(s.largest_diameter_mm, 1, "largest_diameter_mm"));
      row.dataset.structure = s.name;
      body.append(row);
    }
    structures.append(body);
    parts.push(structures);

    (report.tumors ?? []).forEach((t: Record<string, any>, i: number) => {
      const renal = t.renal ?? {};
      const rows: [string, HTMLTableCellElement][] = [
        ["Side", el("td", { textContent: t.side ?? "—" })],
        ["Polar location", el("td", { textContent: t.polar_location || "—" })],
        ["Volume (ml)", num(t.volume_ml, 2, "volume_ml")],
        ["Largest diameter (mm)", num(t.max_diameter_mm, 1, "max_diameter_mm")],
        ["Exophytic fraction", num(t.exophytic_fraction, 2, "exophytic_fraction")],
        ["Distance to artery (mm)", num(t.distance_to_artery_mm, 1, "distance_to_artery_mm")],
        ["Distance to vein (mm)", num(t.distance_to_vein_mm, 1, "distance_to_vein_mm")],
        ["Distance to sinus (mm)", num(t.distance_to_sinus_mm, 1, "distance_to_sinus_mm")],
        ["R.E.N.A.L. score", num(renal.score, 0, "renal_score")],
        ["R E N A L", el("td", { textContent: ["R", "E", "N", "A", "L"].map((k) => `${k}${renal[k] ?? "?"}`).join(" ") })],
      ];
      const table = el("table", { className: "tumor" }, el("caption", {}, `Tumor ${i + 1}`),
        el("tbody", {}, ...rows.map(([name, cell]) => el("tr", {}, el("th", { scope: "row", textContent: name }), cell))));
      table.dataset.tumor = String(i);
      parts.push(table);
    });
    if (report.fat) {
      const fat = el("p", { id: "report-fat" }, "Perirenal fat: ", el("span", { className: "num", textContent: fixed(report.fat.volume_ml, 1) }), " ml");
      (fat.querySelector("span") as HTMLElement).dataset.value = String(report.fat.volume_ml);
      parts.push(fat);
    }
    for (const s of report.skipped ?? []) parts.push(el("p", { className: "skipped", textContent: `skipped ${s.task}: ${s.reason}` }));
    if ((report.removed_specks ?? []).length) {
      parts.push(el("p", { textContent: `${report.removed_specks.length} speck(s) removed` }));
    }
    section.replaceChildren(...parts);
  }

  private downloadsPanel(): HTMLElement {
    const groups: [string, (name: string) => boolean][] = [
      ["Masks (NIfTI)", (n) => n.endsWith(".nii.gz") || n.endsWith(".nii")],
      ["Meshes (OBJ, MTL, GLB)", (n) => n.startsWith("meshes/")],
      ["DICOM-SEG", (n) => n.endsWith(".dcm")],
      ["Report", (n) => n.startsWith("report.")],
    ];
    const outputs = (this.job.result?.outputs ?? []).filter((o) => !o.name.startsWith("work/"));
    const section = el("section", { id: "downloads", className: "downloads" }, el("h3", {}, "Downloads"));
    for (const [title, test] of groups) {
      const items = outputs.filter((o) => test(o.name));
      if (!items.length) continue;
      section.append(el("h4", {}, title), el("ul", {}, ...items.map((o) => {
        const link = el("a", { href: this.url("outputs", o.name), textContent: o.name });
        link.setAttribute("download", o.name.split("/").pop()!);
        return el("li", {}, link, ` (${(Number(o.bytes) / 1024).toFixed(1)} KiB)`);
      })));
    }
    return section;
  }
}
