// dlaas page: new jobs from the files a person adds: the upload, its progress, and what the
// server accepted or refused; a refused upload can be retried.

import * as auth from "./auth.js";
import { cancelJob } from "./cancel.js";
import { announce, hideNotice } from "./dom.js";
import { downloadCSV, downloadJSON } from "./downloads.js";
import { parseJSON, plural } from "./format.js";
import { chunkFiles, createJob } from "./jobs.js";
import {
  failItem,
  hideJobError,
  mountJob,
  renderItem,
  renderJobHeader,
  renderJobSummary,
  renderUploadBar,
  showJobError,
  startClock,
} from "./jobview.js";
import { pickedModel } from "./models.js";
import { finishJob, requestStream } from "./streams.js";

const STATUS_TEXT = {
  0: "Upload failed",
  401: "API key refused",
  400: "Bad request",
  413: "Too large",
  415: "Not a supported image",
  422: "Cannot be processed",
  429: "Service busy",
  503: "Service unavailable",
};

const JOB_ACTIONS = { retry: retryJob, cancel: cancelJob, csv: downloadCSV, json: downloadJSON };

export function addFiles(fileList) {
  const files = Array.from(fileList || []);
  if (!files.length) return;
  hideNotice();
  for (const chunk of chunkFiles(files)) {
    const job = createJob(chunk);
    job.model = pickedModel();
    mountJob(job, JOB_ACTIONS);
    uploadJob(job);
  }
  announce(`Uploading ${plural(files.length, "image")}.`);
}

/** Uploads wait for the API key, when the service asks for one (auth.js). */
function uploadJob(job) {
  auth.whenReady().then(() => sendJob(job));
}

function sendJob(job) {
  const form = new FormData();
  if (job.model) form.append("model", job.model);
  for (const item of job.items) form.append("files", item.file, item.name);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/jobs?partial=true");
  auth.authorize(xhr);
  xhr.upload.addEventListener("progress", (event) => {
    if (event.lengthComputable) showUploadProgress(job, event.loaded / event.total);
  });
  xhr.addEventListener("load", () => {
    const body = parseJSON(xhr.responseText) || {};
    if (xhr.status === 202) acceptJob(job, body);
    else refuseJob(job, xhr.status, body, xhr.getResponseHeader("Retry-After"));
  });
  xhr.addEventListener("error", () => refuseJob(job, 0, {}, null));
  xhr.send(form);
}

/** Files go out in order, so each image's share of the sent bytes gives its own progress. */
function showUploadProgress(job, fraction) {
  const total = job.items.reduce((sum, item) => sum + item.file.size, 0) || 1;
  let sent = fraction * total;
  for (const item of job.items) {
    const size = item.file.size || 1;
    item.progress = Math.max(0, Math.min(1, sent / size));
    sent -= size;
    renderUploadBar(item);
  }
}

function acceptJob(job, body) {
  job.id = body.job_id;
  job.status = "running";
  const rejected = new Map((body.rejected || []).map((r) => [r.index, r]));
  const accepted = job.items.filter((item) => !rejected.has(item.index));
  (body.images || []).forEach((image, i) => {
    const item = accepted[i];
    if (!item) return;
    item.imageId = image.image_id;
    job.byImageId.set(image.image_id, item);
    item.state = "queued";
    renderItem(item);
  });
  for (const [index, refusal] of rejected) {
    failItem(job, job.items[index], refusalMessage(refusal.status, refusal));
  }
  renderJobHeader(job);
  renderJobSummary(job);
  if (accepted.length) requestStream(job);
  else finishJob(job);
}

/** The whole request was refused: a per-file list when the server sent one, else one reason. */
function refuseJob(job, status, body, retryAfter) {
  for (const refusal of Array.isArray(body.rejected) ? body.rejected : []) {
    const item = job.items[refusal.index];
    if (item) failItem(job, item, refusalMessage(refusal.status, refusal));
  }
  const message = refusalMessage(status, body, retryAfter);
  // The job shows the full reason once; each card says briefly why it has no result.
  const short = `Not uploaded: ${refusalTitle(status)}`;
  for (const item of job.items) {
    if (item.state !== "failed") failItem(job, item, short);
  }
  job.status = "failed";
  job.endedAt = performance.now();
  showJobError(job, message, [0, 429, 503].includes(status));
  renderJobSummary(job);
  announce(`Upload refused. ${message}`);
}

function refusalTitle(status) {
  const title = STATUS_TEXT[status] || `Error ${status}`;
  return status ? `${title} (${status})` : title;
}

function refusalMessage(status, body, retryAfter) {
  let detail = body && body.detail ? String(body.detail) : "";
  if (status === 0) detail = "the server could not be reached; check the connection and retry";
  if (status === 429 && retryAfter) detail += ` (retry after ${retryAfter} s)`;
  return detail ? `${refusalTitle(status)}: ${detail}` : refusalTitle(status);
}

function retryJob(job) {
  job.status = "uploading";
  job.startedAt = performance.now();
  job.endedAt = null;
  for (const item of job.items) {
    item.state = "uploading";
    item.error = null;
    item.progress = 0;
    renderItem(item);
  }
  hideJobError(job);
  renderJobSummary(job);
  startClock();
  uploadJob(job);
}
