// The medseg viewer: case jobs (list, live progress, start one from NIfTI files) and one
// case opened (CaseView). Every service call goes through the gateway's gRPC-Web filter.
import { create } from "@bufbuild/protobuf";
import { errorText, cases, uploadVolume } from "./api";
import { CaseView } from "./caseview";
import { type CaseJob, CaseState, type PhaseInput, PhaseInputSchema } from "./gen/medseg/cases/v1/cases_pb";

const status = document.getElementById("status")!;
const jobsBody = document.querySelector<HTMLElement>("#jobs tbody")!;
const caseSlot = document.getElementById("case-slot")!;
const jobs = new Map<string, CaseJob>();
const watching = new Set<string>();
// Each watch holds one HTTP/1.1 connection, and a browser has about six per origin.
const MAX_WATCHES = 3;
const FINAL = new Set([CaseState.SUCCEEDED, CaseState.FAILED, CaseState.CANCELLED]);
let opened: CaseView | null = null;

function say(text: string, error = false): void {
  status.textContent = text;
  status.classList.toggle("error", error);
}

function stateName(state: CaseState): string {
  return CaseState[state] ?? String(state);
}

function when(job: CaseJob): string {
  return job.createTime ? new Date(Number(job.createTime.seconds) * 1000).toLocaleString() : "";
}

function renderJob(job: CaseJob): void {
  jobs.set(job.jobId, job);
  let row = jobsBody.querySelector<HTMLTableRowElement>(`tr[data-job-id="${CSS.escape(job.jobId)}"]`);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.jobId = job.jobId;
    row.innerHTML = `<th scope="row" class="name"></th><td class="state"></td><td class="progress"><progress max="1"></progress> <span class="pct"></span> <span class="step"></span></td><td class="when"></td><td class="open"></td>`;
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Open";
    button.addEventListener("click", () => void openCase(job.jobId));
    row.querySelector(".open")!.append(button);
    jobsBody.append(row);
  }
  const name = job.displayName || job.jobId;
  const fraction = job.state === CaseState.SUCCEEDED ? 1 : job.progress?.fraction ?? 0;
  row.dataset.state = stateName(job.state);
  row.querySelector(".name")!.textContent = name;
  row.querySelector(".state")!.textContent = stateName(job.state) + (job.error?.message ? `: ${job.error.step} ${job.error.code}` : "");
  const bar = row.querySelector("progress")!;
  bar.value = fraction;
  bar.setAttribute("aria-label", `progress of ${name}`);
  row.querySelector(".pct")!.textContent = `${Math.round(fraction * 100)} %`;
  row.querySelector(".step")!.textContent = FINAL.has(job.state) ? "" : job.progress?.step ?? "";
  row.querySelector(".when")!.textContent = when(job);
  const button = row.querySelector<HTMLButtonElement>(".open button")!;
  button.disabled = job.state !== CaseState.SUCCEEDED;
  button.setAttribute("aria-label", `Open case ${name}`);
  if (!FINAL.has(job.state)) void watch(job.jobId);
}

/** Follows a job (WatchCase) until it has ended, updating its row as events come. */
async function watch(jobId: string): Promise<void> {
  if (watching.has(jobId) || watching.size >= MAX_WATCHES) return;
  watching.add(jobId);
  try {
    for await (const message of cases.watchCase({ jobId })) {
      if (message.payload.case === "snapshot") {
        renderJob(message.payload.value);
      } else if (message.payload.case === "event") {
        const event = message.payload.value;
        const job = jobs.get(jobId);
        if (!job) continue;
        job.state = event.state;
        if (job.progress) {
          job.progress.fraction = event.fraction || job.progress.fraction;
          job.progress.step = event.step || job.progress.step;
        }
        renderJob(job);
      }
    }
  } catch (err) {
    say(`watching job ${jobId} stopped: ${errorText(err)}`, true);
  } finally {
    watching.delete(jobId);
  }
  // Room for another unfinished job.
  for (const job of jobs.values()) if (!FINAL.has(job.state)) void watch(job.jobId);
}

async function refresh(): Promise<void> {
  const reply = await cases.listCases({ pageSize: 50 });
  // Newest first, as ListCases answers.
  for (const job of [...reply.jobs].reverse()) renderJob(job);
  const order = reply.jobs.map((j) => j.jobId);
  const rows = [...jobsBody.querySelectorAll<HTMLTableRowElement>("tr")];
  rows.sort((a, b) => order.indexOf(a.dataset.jobId!) - order.indexOf(b.dataset.jobId!));
  jobsBody.append(...rows);
  say(`${reply.jobs.length} job(s)`);
}

async function openCase(jobId: string): Promise<void> {
  try {
    const { job } = await cases.getCase({ jobId });
    if (!job) throw new Error("no job in the answer");
    if (job.state !== CaseState.SUCCEEDED) {
      say(`job ${jobId} is ${stateName(job.state)}: only a finished job can be opened`, true);
      return;
    }
    const view = new CaseView(job, (text) => say(text));
    opened = view;
    caseSlot.replaceChildren(view.root);
    history.replaceState(null, "", `?case=${encodeURIComponent(jobId)}`);
    await view.open();
    if (opened === view) view.root.querySelector<HTMLElement>("h2")?.scrollIntoView();
  } catch (err) {
    say(`could not open case ${jobId}: ${errorText(err)}`, true);
  }
}

// --- start a job -----------------------------------------------------------------------

const form = document.getElementById("submit-form") as HTMLFormElement;
form.addEventListener("submit", (event) => {
  event.preventDefault();
  void submit();
});

function requestId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function submit(): Promise<void> {
  const button = form.querySelector<HTMLButtonElement>("button[type=submit]")!;
  button.disabled = true;
  try {
    const phases: Record<string, PhaseInput> = {};
    for (const phase of ["arterial", "portal", "delayed"]) {
      const file = (form.elements.namedItem(phase) as HTMLInputElement).files?.[0];
      if (!file) continue;
      say(`uploading the ${phase} phase (${(file.size / 1048576).toFixed(1)} MiB)…`);
      const reply = await uploadVolume(file);
      phases[phase] = create(PhaseInputSchema, { source: { case: "sha256", value: reply.sha256 } });
    }
    if (!Object.keys(phases).length) {
      say("choose at least one phase file (the portal venous phase for most tasks)", true);
      return;
    }
    const displayName = (form.elements.namedItem("display_name") as HTMLInputElement).value.trim();
    const { job } = await cases.submitCase({ ...phases, displayName, requestId: requestId() });
    if (!job) throw new Error("no job in the answer");
    renderJob(job);
    jobsBody.prepend(jobsBody.querySelector(`tr[data-job-id="${CSS.escape(job.jobId)}"]`)!);
    say(`job ${job.jobId} submitted`);
    form.reset();
  } catch (err) {
    say(`could not start the job: ${errorText(err)}`, true);
  } finally {
    button.disabled = false;
  }
}

document.getElementById("refresh")!.addEventListener("click", () => void refresh().catch((err) => say(`could not list the jobs: ${errorText(err)}`, true)));

// Jobs submitted elsewhere appear without a reload; running ones are followed by WatchCase.
const LIST_EVERY_MS = 15000;

async function main(): Promise<void> {
  try {
    await refresh();
  } catch (err) {
    say(`could not list the jobs: ${errorText(err)}`, true);
  }
  setInterval(() => void cases.listCases({ pageSize: 50 }).then((reply) => {
    for (const job of [...reply.jobs].reverse()) {
      if (!jobs.has(job.jobId)) {
        renderJob(job);
        jobsBody.prepend(jobsBody.querySelector(`tr[data-job-id="${CSS.escape(job.jobId)}"]`)!);
      } else if (!watching.has(job.jobId)) {
        renderJob(job);
      }
    }
  }).catch(() => { /* the next round or the Refresh button says more */ }), LIST_EVERY_MS);
  const wanted = new URLSearchParams(window.location.search).get("case");
  if (wanted) await openCase(wanted);
}

void main();
