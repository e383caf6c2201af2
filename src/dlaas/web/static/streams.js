// dlaas page: each running job's result event stream, a few at a time, and the job's end.

import * as auth from "./auth.js";
import { announce } from "./dom.js";
import { duration, parseJSON } from "./format.js";
import { counts, itemById } from "./jobs.js";
import { failItem, renderJobSummary, setItemState, showJobError } from "./jobview.js";

const MAX_JOB_STREAMS = 4; // browsers allow ~6 connections per host; keep room for uploads
const STREAM_RETRIES = 5;

const activeStreams = new Set();
const waitingStreams = [];

/** At most MAX_JOB_STREAMS event streams at once; the rest wait their turn. */
export function requestStream(job) {
  waitingStreams.push(job);
  pumpStreams();
}

function pumpStreams() {
  while (activeStreams.size < MAX_JOB_STREAMS && waitingStreams.length) {
    openStream(waitingStreams.shift());
  }
}

function openStream(job) {
  const source = auth.eventSource(`/v1/jobs/${encodeURIComponent(job.id)}/events`);
  activeStreams.add(job);
  const on = (name, handler) =>
    source.addEventListener(name, (event) => handler(job, parseJSON(event.data) || {}));
  on("classifying", onClassifying);
  on("result", onResult);
  source.addEventListener("end", (event) => {
    closeStream(job, source);
    finishJob(job, (parseJSON(event.data) || {}).status);
  });
  source.addEventListener("open", () => {
    job.retries = 0;
  });
  source.addEventListener("error", () => onStreamError(job, source));
}

function closeStream(job, source) {
  source.close();
  activeStreams.delete(job);
  pumpStreams();
}

/** EventSource reconnects by itself after a network hiccup; a refused stream is retried. */
function onStreamError(job, source) {
  if (source.readyState !== source.CLOSED) return;
  closeStream(job, source);
  if (job.status !== "running") return;
  job.retries += 1;
  if (job.retries > STREAM_RETRIES) {
    job.status = "failed";
    job.endedAt = performance.now();
    renderJobSummary(job);
    showJobError(job, "Lost the connection to this job's results. Reload the page to try again.");
    return;
  }
  window.setTimeout(() => requestStream(job), 1000 * job.retries);
}

function onClassifying(job, data) {
  const item = itemById(job, data.image_id);
  if (item && (item.state === "queued" || item.state === "uploading")) {
    setItemState(job, item, "classifying");
  }
}

function onResult(job, result) {
  const item = itemById(job, result.image_id);
  if (!item || item.state === "done" || item.state === "failed") return;
  item.result = result;
  if (result.status === "done") setItemState(job, item, "done");
  else if (result.status === "cancelled") setItemState(job, item, "cancelled");
  else failItem(job, item, `Could not classify: ${result.error || "unknown error"}`);
}

/** The server's word wins: the end event can arrive before the page's cancel returns. */
export function finishJob(job, status) {
  const c = counts(job);
  const wasCancelled = status === "cancelled" || job.cancelling || c.cancelled > 0;
  job.status = wasCancelled ? "cancelled" : "complete";
  job.endedAt = performance.now();
  renderJobSummary(job);
  const cancelled = c.cancelled ? `, ${c.cancelled} cancelled` : "";
  announce(
    `Job ${job.number} ${job.status}: ${c.done} done, ${c.failed} failed${cancelled}, ` +
      `in ${duration((job.endedAt - job.startedAt) / 1000)}.`,
  );
}
