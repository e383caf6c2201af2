// dlaas page: a job's card list on screen: its header, counts, progress, clock and errors,
// and one card per image with its state, upload bar and predictions.

import { $, cloneTemplate, el } from "./dom.js";
import { duration, otherNames, percent, plural, shortLabel } from "./format.js";
import { counts, jobs } from "./jobs.js";

const STATE_TEXT = {
  uploading: "Uploading",
  queued: "Queued",
  classifying: "Classifying",
  done: "Done",
  failed: "Failed",
  cancelled: "Cancelled",
};

export function setItemState(job, item, state) {
  item.state = state;
  renderItem(item);
  renderJobSummary(job);
}

export function failItem(job, item, message) {
  item.error = message;
  setItemState(job, item, "failed");
}

// Jobs -------------------------------------------------------------------------------------

/** Shows the job first in the list; actions are its buttons' handlers, each given the job. */
export function mountJob(job, actions) {
  const node = cloneTemplate("job-template");
  job.view = {
    node,
    name: $(".job-name", node),
    id: $(".job-id", node),
    counts: $(".job-counts", node),
    elapsed: $(".job-elapsed", node),
    progress: $(".job-progress", node),
    fill: $(".job-progress-fill", node),
    error: $(".job-error", node),
    retry: $(".job-retry", node),
    cancel: $(".job-cancel", node),
    csv: $(".job-csv", node),
    json: $(".job-json", node),
    cards: $(".cards", node),
  };
  job.view.name.textContent = `Job ${job.number}`;
  node.setAttribute("aria-label", `Job ${job.number}`);
  job.view.retry.addEventListener("click", () => actions.retry(job));
  job.view.cancel.addEventListener("click", () => actions.cancel(job));
  job.view.csv.addEventListener("click", () => actions.csv(job));
  job.view.json.addEventListener("click", () => actions.json(job));

  const fragment = document.createDocumentFragment();
  for (const item of job.items) fragment.append(mountItem(item));
  job.view.cards.append(fragment);

  $("#empty").hidden = true;
  $("#jobs").prepend(node);
  renderJobSummary(job);
  startClock();
}

export function renderJobHeader(job) {
  job.view.id.textContent = job.id ? job.id.slice(0, 8) : "";
  job.view.id.title = job.id || "";
}

/** At most one summary redraw per frame, however many results arrive in it. */
export function renderJobSummary(job) {
  if (!job.view || job.summaryPending) return;
  job.summaryPending = true;
  window.requestAnimationFrame(() => {
    job.summaryPending = false;
    drawJobSummary(job);
  });
}

function drawJobSummary(job) {
  const view = job.view;
  const c = counts(job);
  view.node.dataset.status = job.status;
  view.counts.replaceChildren(
    `${plural(c.total, "image")} · `,
    countNode(c.done, "done", "count-done"),
    " · ",
    countNode(c.failed, "failed", "count-failed"),
    c.cancelled ? ` · ${c.cancelled} cancelled` : "",
    ` · ${c.waiting} waiting`,
  );
  view.cancel.hidden = job.status !== "running" || !job.id;
  const finished = ((c.done + c.failed + c.cancelled) / (c.total || 1)) * 100;
  view.fill.style.width = `${finished}%`;
  view.progress.setAttribute("aria-valuenow", String(Math.round(finished)));
  const hasResults = job.items.some((item) => item.result || item.error);
  view.csv.disabled = !hasResults;
  view.json.disabled = !hasResults;
  renderElapsed(job);
}

function countNode(n, word, className) {
  const node = el("span", className);
  node.append(el("b", "", String(n)), ` ${word}`);
  return node;
}

function renderElapsed(job) {
  const end = job.endedAt ?? performance.now();
  const label = job.endedAt === null ? "elapsed" : "took";
  job.view.elapsed.textContent = `${label} ${duration((end - job.startedAt) / 1000)}`;
}

export function showJobError(job, message, retryable = false) {
  job.view.error.textContent = message;
  job.view.error.hidden = false;
  job.view.retry.hidden = !retryable;
}

export function hideJobError(job) {
  job.view.error.hidden = true;
  job.view.retry.hidden = true;
}

let clockTimer = null;

/** Ticks the elapsed time of running jobs; stops when none is running. */
export function startClock() {
  if (clockTimer !== null) return;
  clockTimer = window.setInterval(() => {
    const running = jobs.filter((job) => job.endedAt === null);
    for (const job of running) renderElapsed(job);
    if (!running.length) {
      window.clearInterval(clockTimer);
      clockTimer = null;
    }
  }, 250);
}

// Images -----------------------------------------------------------------------------------

function mountItem(item) {
  const node = cloneTemplate("card-template");
  item.view = {
    node,
    img: $(".thumb img", node),
    stateText: $(".state-text", node),
    filename: $(".filename", node),
    uploadBar: $(".upload-bar span", node),
    preds: $(".preds", node),
    modelUsed: $(".model-used", node),
    error: $(".error", node),
  };
  item.view.filename.textContent = item.name;
  item.view.filename.title = item.name;
  showThumbnail(item);
  renderItem(item);
  return node;
}

/** An object URL shows the image at once, before any byte is uploaded. */
function showThumbnail(item) {
  const img = item.view.img;
  if (!item.file.type.startsWith("image/")) {
    img.hidden = true;
    return;
  }
  img.addEventListener("error", () => {
    img.hidden = true; // not decodable here (TIFF, say): keep the placeholder
  });
  img.src = URL.createObjectURL(item.file);
}

function stateLabel(item) {
  if (item.state === "uploading" && item.progress > 0) {
    return `Uploading ${Math.round(item.progress * 100)}%`;
  }
  return STATE_TEXT[item.state];
}

export function renderItem(item) {
  const view = item.view;
  if (!view) return;
  view.node.dataset.state = item.state;
  renderUploadBar(item);
  renderPredictions(item);
  view.error.hidden = !item.error;
  view.error.textContent = item.error || "";
}

export function renderUploadBar(item) {
  if (!item.view) return;
  item.view.stateText.textContent = stateLabel(item);
  item.view.uploadBar.style.width = `${Math.round(item.progress * 100)}%`;
}

function renderPredictions(item) {
  const view = item.view;
  const predictions = (item.state === "done" && item.result && item.result.predictions) || [];
  const result = item.state === "done" && item.result;
  view.modelUsed.hidden = !(result && result.model);
  if (result && result.model) {
    const version = result.model_version ? ` · version ${result.model_version}` : "";
    view.modelUsed.textContent = `${result.model}${version}`;
  }
  view.preds.hidden = predictions.length === 0;
  if (!predictions.length) return;
  view.preds.replaceChildren(...predictions.map(predictionRow));
}

function predictionRow(prediction) {
  const row = el("li", "pred");
  row.title = prediction.label;
  const label = el("span", "pred-label", shortLabel(prediction.label));
  const others = otherNames(prediction.label);
  if (others) label.append(el("span", "pred-alt", ` · ${others}`));
  const bar = el("span", "pred-bar");
  bar.setAttribute("aria-hidden", "true");
  const fill = el("span");
  fill.style.width = `${Math.max(0.5, prediction.score * 100)}%`;
  bar.append(fill);
  row.append(label, el("span", "pred-score", percent(prediction.score)), bar);
  return row;
}
