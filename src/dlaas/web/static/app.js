// dlaas page: upload images, follow each job's Server-Sent Events, chart the scaling.
// Plain JavaScript, no dependencies; every request goes to this origin.
"use strict";

(() => {
  // Settings -------------------------------------------------------------------------------

  const MAX_JOB_STREAMS = 4; // browsers allow ~6 connections per host; keep room for uploads
  const JOB_MAX_FILES = 500; // a bigger drop becomes several jobs
  const JOB_MAX_BYTES = 256 * 1024 * 1024;
  const STREAM_RETRIES = 5;
  const STATS_URL = "/v1/stats/events?interval_s=1";
  const HISTORY_KEEP_S = 600;

  const STATE_TEXT = {
    uploading: "Uploading",
    queued: "Queued",
    classifying: "Classifying",
    done: "Done",
    failed: "Failed",
    cancelled: "Cancelled",
  };

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

  const MODE_TEXT = {
    elastic: "Elastic: workers follow the backlog",
    fixed: "Fixed pool of workers",
    external: "Workers are managed elsewhere",
  };

  // Small helpers --------------------------------------------------------------------------

  const $ = (selector, root = document) => root.querySelector(selector);

  function cloneTemplate(id) {
    return document.getElementById(id).content.firstElementChild.cloneNode(true);
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function announce(text) {
    const region = $("#announcer");
    region.textContent = "";
    // A fresh text node after a tick makes screen readers read repeated messages too.
    window.setTimeout(() => {
      region.textContent = text;
    }, 50);
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  function percent(score) {
    const value = score * 100;
    if (value < 0.1) return "<0.1%";
    return `${value < 10 ? value.toFixed(1) : Math.round(value)}%`;
  }

  function duration(seconds) {
    if (!Number.isFinite(seconds)) return "–";
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    const minutes = Math.floor(seconds / 60);
    return `${minutes} min ${String(Math.floor(seconds % 60)).padStart(2, "0")} s`;
  }

  function shortLabel(label) {
    return String(label).split(",")[0].trim();
  }

  function otherNames(label) {
    return String(label).split(",").slice(1).map((s) => s.trim()).filter(Boolean).join(", ");
  }

  function parseJSON(text) {
    try {
      return JSON.parse(text);
    } catch {
      return null;
    }
  }

  /** A finite number, or null for anything else (missing keys included). */
  function number(value) {
    if (value === null || value === undefined || value === "") return null;
    const n = Number(value);
    return Number.isFinite(n) ? n : null;
  }

  // Jobs and images ------------------------------------------------------------------------

  let jobCounter = 0;
  const jobs = [];

  /** One upload request: its images, their states and results, and its view. */
  function createJob(files) {
    jobCounter += 1;
    const job = {
      number: jobCounter,
      id: null,
      status: "uploading", // uploading | running | complete | failed
      startedAt: performance.now(),
      endedAt: null,
      retries: 0,
      byImageId: new Map(),
      summaryPending: false,
      cancelling: false,
      items: files.map((file, index) => ({
        index,
        file,
        name: file.name || `image ${index + 1}`,
        imageId: null,
        state: "uploading",
        progress: 0,
        result: null,
        error: null,
        view: null,
      })),
      view: null,
    };
    jobs.push(job);
    return job;
  }

  function counts(job) {
    const c = { total: job.items.length, done: 0, failed: 0, cancelled: 0, waiting: 0 };
    for (const item of job.items) {
      if (item.state === "done") c.done += 1;
      else if (item.state === "failed") c.failed += 1;
      else if (item.state === "cancelled") c.cancelled += 1;
      else c.waiting += 1;
    }
    return c;
  }

  function setItemState(job, item, state) {
    item.state = state;
    renderItem(item);
    renderJobSummary(job);
  }

  function failItem(job, item, message) {
    item.error = message;
    setItemState(job, item, "failed");
  }

  function itemById(job, imageId) {
    return job.byImageId.get(imageId) || null;
  }

  // Adding files ---------------------------------------------------------------------------

  /** Split a big selection into jobs the server takes in one request. */
  function chunkFiles(files) {
    const chunks = [];
    let current = [];
    let bytes = 0;
    for (const file of files) {
      if (current.length && (current.length >= JOB_MAX_FILES || bytes + file.size > JOB_MAX_BYTES)) {
        chunks.push(current);
        current = [];
        bytes = 0;
      }
      current.push(file);
      bytes += file.size;
    }
    if (current.length) chunks.push(current);
    return chunks;
  }

  function addFiles(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    hideNotice();
    for (const chunk of chunkFiles(files)) {
      const job = createJob(chunk);
      mountJob(job);
      uploadJob(job);
    }
    announce(`Uploading ${plural(files.length, "image")}.`);
  }

  // Upload ---------------------------------------------------------------------------------

  /** Uploads wait for the API key, when the service asks for one (auth.js). */
  function uploadJob(job) {
    window.dlaasAuth.whenReady().then(() => sendJob(job));
  }

  function sendJob(job) {
    const form = new FormData();
    for (const item of job.items) form.append("files", item.file, item.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/jobs?partial=true");
    window.dlaasAuth.authorize(xhr);
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

  // Result streams -------------------------------------------------------------------------

  const activeStreams = new Set();
  const waitingStreams = [];

  /** At most MAX_JOB_STREAMS event streams at once; the rest wait their turn. */
  function requestStream(job) {
    waitingStreams.push(job);
    pumpStreams();
  }

  function pumpStreams() {
    while (activeStreams.size < MAX_JOB_STREAMS && waitingStreams.length) {
      openStream(waitingStreams.shift());
    }
  }

  function openStream(job) {
    const source = window.dlaasAuth.eventSource(`/v1/jobs/${encodeURIComponent(job.id)}/events`);
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

  /** The server's word wins: the end event can arrive before the page's DELETE returns. */
  function finishJob(job, status) {
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

  /** DELETE /v1/jobs/{id}: images not classified yet never are; their results say so. */
  function cancelJob(job) {
    if (!job.id || job.status !== "running") return;
    job.view.cancel.disabled = true;
    job.view.cancel.textContent = "Cancelling…";
    const xhr = new XMLHttpRequest();
    xhr.open("DELETE", `/v1/jobs/${encodeURIComponent(job.id)}`);
    window.dlaasAuth.authorize(xhr);
    xhr.addEventListener("load", () => {
      if (xhr.status === 202) {
        job.cancelling = true;
        announce(`Job ${job.number}: cancelling.`);
      } else if (xhr.status !== 409) {
        // 409: it finished first, and its end event follows.
        job.view.cancel.disabled = false;
        job.view.cancel.textContent = "Cancel";
        const body = parseJSON(xhr.responseText) || {};
        showJobError(job, `Could not cancel: ${body.detail || `HTTP ${xhr.status}`}`);
      }
      renderJobSummary(job);
    });
    xhr.addEventListener("error", () => {
      job.view.cancel.disabled = false;
      job.view.cancel.textContent = "Cancel";
      showJobError(job, "Could not reach the service to cancel; try again.");
    });
    xhr.send();
  }

  // Rendering: jobs ------------------------------------------------------------------------

  function mountJob(job) {
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
    job.view.retry.addEventListener("click", () => retryJob(job));
    job.view.cancel.addEventListener("click", () => cancelJob(job));
    job.view.csv.addEventListener("click", () => downloadCSV(job));
    job.view.json.addEventListener("click", () => downloadJSON(job));

    const fragment = document.createDocumentFragment();
    for (const item of job.items) fragment.append(mountItem(item));
    job.view.cards.append(fragment);

    $("#empty").hidden = true;
    $("#jobs").prepend(node);
    renderJobSummary(job);
    startClock();
  }

  function renderJobHeader(job) {
    job.view.id.textContent = job.id ? job.id.slice(0, 8) : "";
    job.view.id.title = job.id || "";
  }

  /** At most one summary redraw per frame, however many results arrive in it. */
  function renderJobSummary(job) {
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

  function showJobError(job, message, retryable = false) {
    job.view.error.textContent = message;
    job.view.error.hidden = false;
    job.view.retry.hidden = !retryable;
  }

  function hideJobError(job) {
    job.view.error.hidden = true;
    job.view.retry.hidden = true;
  }

  let clockTimer = null;

  /** Ticks the elapsed time of running jobs; stops when none is running. */
  function startClock() {
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

  // Rendering: images ----------------------------------------------------------------------

  function mountItem(item) {
    const node = cloneTemplate("card-template");
    item.view = {
      node,
      img: $(".thumb img", node),
      stateText: $(".state-text", node),
      filename: $(".filename", node),
      uploadBar: $(".upload-bar span", node),
      preds: $(".preds", node),
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

  function renderItem(item) {
    const view = item.view;
    if (!view) return;
    view.node.dataset.state = item.state;
    renderUploadBar(item);
    renderPredictions(item);
    view.error.hidden = !item.error;
    view.error.textContent = item.error || "";
  }

  function renderUploadBar(item) {
    if (!item.view) return;
    item.view.stateText.textContent = stateLabel(item);
    item.view.uploadBar.style.width = `${Math.round(item.progress * 100)}%`;
  }

  function renderPredictions(item) {
    const view = item.view;
    const predictions = (item.state === "done" && item.result && item.result.predictions) || [];
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

  // Downloads ------------------------------------------------------------------------------

  function resultRows(job) {
    return job.items.map((item) => {
      const r = item.result || {};
      return {
        job_id: job.id,
        image_id: item.imageId,
        filename: item.name,
        status: item.state === "done" || item.state === "failed" ? item.state : "pending",
        predictions: r.predictions || [],
        error: item.error,
        model: r.model || null,
        worker_id: r.worker_id || null,
        timings_ms: r.timings_ms || null,
      };
    });
  }

  function downloadJSON(job) {
    const body = { job_id: job.id, counts: counts(job), images: resultRows(job) };
    saveFile(`dlaas-${fileStem(job)}.json`, "application/json", JSON.stringify(body, null, 2));
  }

  function downloadCSV(job) {
    const header = ["job_id", "image_id", "filename", "status"];
    for (let k = 1; k <= 5; k += 1) header.push(`label_${k}`, `score_${k}`);
    header.push("error", "worker_id", "model");
    const lines = [header.join(",")];
    for (const row of resultRows(job)) {
      const cells = [row.job_id, row.image_id, row.filename, row.status];
      for (let k = 0; k < 5; k += 1) {
        const p = row.predictions[k];
        cells.push(p ? p.label : "", p ? p.score.toFixed(6) : "");
      }
      cells.push(row.error, row.worker_id, row.model);
      lines.push(cells.map(csvCell).join(","));
    }
    saveFile(`dlaas-${fileStem(job)}.csv`, "text/csv", `${lines.join("\r\n")}\r\n`);
  }

  /** Quote as RFC 4180; a leading = + - @ is defused so spreadsheets never run a filename. */
  function csvCell(value) {
    let text = value === null || value === undefined ? "" : String(value);
    if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`;
    return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
  }

  function fileStem(job) {
    return job.id ? job.id.slice(0, 8) : `job-${job.number}`;
  }

  function saveFile(name, type, text) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const link = el("a");
    link.href = url;
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    window.setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }

  // Notices --------------------------------------------------------------------------------

  function showNotice(text) {
    const notice = $("#notice");
    notice.textContent = text;
    notice.hidden = false;
  }

  function hideNotice() {
    $("#notice").hidden = true;
  }

  // Scaling: the stats stream --------------------------------------------------------------

  const scaling = {
    points: [], // [{time, visible, in_flight, running, starting, desired}], server clock
    samples: [], // built here when the server sends no history (no controller)
    clockOffsetS: 0, // server clock minus this clock
    windowS: 120,
    last: null,
    retryTimer: null,
  };

  function connectStats() {
    const source = window.dlaasAuth.eventSource(STATS_URL);
    source.addEventListener("open", () => setLive("live", "Live"));
    source.addEventListener("stats", (event) => {
      const stats = parseJSON(event.data);
      if (stats) onStats(stats);
    });
    source.addEventListener("error", () => {
      if (source.readyState === source.CLOSED) {
        setLive("down", "Offline, retrying");
        window.clearTimeout(scaling.retryTimer);
        scaling.retryTimer = window.setTimeout(connectStats, 5000);
      } else {
        setLive("connecting", "Reconnecting");
      }
    });
  }

  function setLive(state, text) {
    $("#live").dataset.state = state;
    $("#live-text").textContent = text;
  }

  function onStats(stats) {
    scaling.last = stats;
    scaling.points = historyFrom(stats);
    renderFacts(stats);
    drawCharts();
  }

  /** The controller's history when there is one, else samples of each snapshot. */
  function historyFrom(stats) {
    const nowS = Date.now() / 1000;
    const history = (Array.isArray(stats.history) ? stats.history : [])
      .map(normalizePoint)
      .filter(Boolean);
    if (history.length) {
      const serverNowS = number(stats.updated_at) ?? history[history.length - 1].time;
      scaling.clockOffsetS = serverNowS - nowS;
      return history;
    }
    scaling.clockOffsetS = 0;
    const sample = normalizePoint({ time: nowS, ...(stats.queue || {}), ...(stats.workers || {}) });
    scaling.samples.push(sample);
    while (scaling.samples.length && scaling.samples[0].time < nowS - HISTORY_KEEP_S) {
      scaling.samples.shift();
    }
    return scaling.samples;
  }

  function normalizePoint(raw) {
    if (!raw || typeof raw !== "object") return null;
    let time = number(raw.time ?? raw.t ?? raw.time_s);
    if (time === null) return null;
    if (time > 1e12) time /= 1000; // milliseconds
    return {
      time,
      visible: number(raw.visible),
      in_flight: number(raw.in_flight),
      running: number(raw.running),
      starting: number(raw.starting),
      desired: number(raw.desired),
    };
  }

  function renderFacts(stats) {
    const queue = stats.queue || {};
    const workers = stats.workers || {};
    const policy = stats.policy || {};
    const show = (id, value) => {
      $(id).textContent = value === null || value === undefined ? "–" : String(value);
    };
    show("#v-visible", number(queue.visible));
    show("#v-in-flight", number(queue.in_flight));
    show("#v-running", number(workers.running));
    show("#v-starting", number(workers.starting));
    show("#v-desired", number(workers.desired));
    show("#v-dead", number(queue.dead_lettered));
    const oldest = number(queue.oldest_age_s);
    show("#v-oldest", oldest === null ? null : duration(oldest));
    show("#v-max", number(policy.max_workers));
    $("#mode").textContent = MODE_TEXT[stats.mode] || "Scaling status";
  }

  // Scaling: the charts --------------------------------------------------------------------

  const CHARTS = [
    {
      canvas: "#chart-queue",
      name: "Queue",
      minMax: 4,
      series: [
        { key: "visible", label: "backlog", color: "--c-backlog", kind: "area" },
        { key: "in_flight", label: "in flight", color: "--c-inflight", kind: "line" },
      ],
    },
    {
      canvas: "#chart-workers",
      name: "Workers",
      minMax: 2,
      series: [
        { key: "running", label: "running", color: "--c-running", kind: "step-area" },
        {
          key: "starting",
          label: "starting",
          color: "--c-starting",
          kind: "step-area",
          stackOn: "running",
        },
        { key: "desired", label: "desired", color: "--c-desired", kind: "step-line" },
      ],
    },
  ];

  function drawCharts() {
    const nowS = Date.now() / 1000 + scaling.clockOffsetS;
    const fromS = nowS - scaling.windowS;
    // Keep the last point before the window so lines enter from the left edge.
    const firstInside = scaling.points.findIndex((p) => p.time >= fromS);
    const start = firstInside === -1 ? scaling.points.length - 1 : Math.max(0, firstInside - 1);
    const points = scaling.points.slice(Math.max(0, start));
    const colors = themeColors();
    for (const chart of CHARTS) drawChart(chart, points, fromS, nowS, colors);
  }

  function themeColors() {
    const style = getComputedStyle(document.documentElement);
    const read = (name) => style.getPropertyValue(name).trim();
    const names = ["--c-backlog", "--c-inflight", "--c-running", "--c-starting", "--c-desired"];
    const colors = Object.fromEntries(names.map((name) => [name, read(name)]));
    colors.grid = read("--c-grid");
    colors.axis = read("--c-axis");
    colors.font = read("--font");
    return colors;
  }

  /** A canvas sized for the screen's pixel ratio; drawing uses CSS pixels. */
  function prepareCanvas(canvas) {
    const rect = canvas.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(rect.width * ratio));
    const height = Math.max(1, Math.round(rect.height * ratio));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, rect.width, rect.height);
    return { ctx, width: rect.width, height: rect.height };
  }

  function drawChart(chart, points, fromS, nowS, colors) {
    const canvas = $(chart.canvas);
    const { ctx, width, height } = prepareCanvas(canvas);
    const box = { left: 34, right: width - 8, top: 8, bottom: height - 20 };
    const visible = points.filter((p) => p.time >= fromS);
    const peak = seriesPeak(chart, points);
    const yMax = niceCeiling(Math.max(chart.minMax, peak));
    const x = (t) => box.left + ((t - fromS) / (nowS - fromS)) * (box.right - box.left);
    const y = (v) => box.bottom - (v / yMax) * (box.bottom - box.top);

    drawGrid(ctx, box, yMax, y, colors);
    drawTimeAxis(ctx, box, fromS, nowS, x, colors);
    ctx.save();
    ctx.beginPath();
    ctx.rect(box.left, box.top - 2, box.right - box.left, box.bottom - box.top + 4);
    ctx.clip();
    for (const series of chart.series) drawSeries(ctx, series, points, x, y, nowS, colors);
    ctx.restore();

    canvas.dataset.points = String(visible.length);
    canvas.dataset.peak = String(peak);
    canvas.setAttribute("aria-label", chartSummary(chart, points));
  }

  function seriesPeak(chart, points) {
    let peak = 0;
    for (const p of points) {
      for (const series of chart.series) peak = Math.max(peak, stackedValue(series, p) ?? 0);
    }
    return peak;
  }

  function stackedValue(series, point) {
    const value = point[series.key];
    if (value === null) return null;
    return series.stackOn ? value + (point[series.stackOn] ?? 0) : value;
  }

  /** 1, 2, 5 x 10^n: gives round tick labels. */
  function niceCeiling(value) {
    const magnitude = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 4, 5, 10]) {
      if (step * magnitude >= value) return step * magnitude;
    }
    return 10 * magnitude;
  }

  function drawGrid(ctx, box, yMax, y, colors) {
    ctx.font = `11px ${colors.font}`;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    ctx.lineWidth = 1;
    for (const value of [0, yMax / 2, yMax]) {
      const py = Math.round(y(value)) + 0.5;
      ctx.strokeStyle = colors.grid;
      ctx.beginPath();
      ctx.moveTo(box.left, py);
      ctx.lineTo(box.right, py);
      ctx.stroke();
      ctx.fillStyle = colors.axis;
      const label = Number.isInteger(value) ? String(value) : value.toFixed(1);
      ctx.fillText(label, box.left - 6, py);
    }
  }

  function drawTimeAxis(ctx, box, fromS, nowS, x, colors) {
    const spanS = nowS - fromS;
    const stepS = spanS <= 120 ? 30 : spanS <= 300 ? 60 : 120;
    ctx.fillStyle = colors.axis;
    ctx.textBaseline = "top";
    for (let ago = 0; ago <= spanS + 0.001; ago += stepS) {
      const px = x(nowS - ago);
      ctx.textAlign = ago === 0 ? "right" : px - box.left < 16 ? "left" : "center";
      const text = ago === 0 ? "now" : ago % 60 ? `−${ago}s` : `−${ago / 60}m`;
      ctx.fillText(text, px, box.bottom + 6);
    }
  }

  function drawSeries(ctx, series, points, x, y, nowS, colors) {
    const path = seriesPath(series, points, x, y, nowS);
    if (path.length < 1) return;
    const color = colors[series.color];
    const step = series.kind.startsWith("step");
    if (series.kind.endsWith("area")) {
      const base = series.stackOn
        ? seriesPath({ key: series.stackOn, kind: series.kind }, points, x, y, nowS)
        : null;
      fillArea(ctx, path, base, y(0), color, step ? 0.85 : 0.16);
    }
    ctx.strokeStyle = color;
    ctx.lineWidth = series.kind === "step-line" ? 1.5 : 2;
    ctx.setLineDash(series.kind === "step-line" ? [5, 4] : []);
    if (series.kind !== "step-area" || !series.stackOn) strokePath(ctx, path);
    ctx.setLineDash([]);
  }

  /** Screen points for one series; steps hold each value until the next point. */
  function seriesPath(series, points, x, y, nowS) {
    const path = [];
    const step = series.kind.startsWith("step");
    for (const p of points) {
      const value = stackedValue(series, p);
      if (value === null) continue;
      const px = x(p.time);
      if (step && path.length) path.push([px, path[path.length - 1][1]]);
      path.push([px, y(value)]);
    }
    if (path.length) path.push([x(nowS), path[path.length - 1][1]]); // hold to "now"
    return path;
  }

  function strokePath(ctx, path) {
    ctx.beginPath();
    path.forEach(([px, py], i) => (i ? ctx.lineTo(px, py) : ctx.moveTo(px, py)));
    ctx.stroke();
  }

  function fillArea(ctx, path, base, zeroY, color, alpha) {
    ctx.beginPath();
    path.forEach(([px, py], i) => (i ? ctx.lineTo(px, py) : ctx.moveTo(px, py)));
    if (base && base.length) {
      for (let i = base.length - 1; i >= 0; i -= 1) ctx.lineTo(base[i][0], base[i][1]);
    } else {
      ctx.lineTo(path[path.length - 1][0], zeroY);
      ctx.lineTo(path[0][0], zeroY);
    }
    ctx.closePath();
    ctx.globalAlpha = alpha;
    ctx.fillStyle = color;
    ctx.fill();
    ctx.globalAlpha = 1;
  }

  function chartSummary(chart, points) {
    const last = points[points.length - 1];
    if (!last) return `${chart.name} chart: no data yet`;
    const parts = chart.series.map((s) => `${s.label} ${last[s.key] ?? "unknown"}`);
    return `${chart.name} chart over the last ${scaling.windowS / 60} minutes; now ${parts.join(", ")}`;
  }

  function setWindow(button) {
    scaling.windowS = Number(button.dataset.windowS);
    for (const b of document.querySelectorAll("[data-window-s]")) {
      b.setAttribute("aria-pressed", String(b === button));
    }
    drawCharts();
  }

  // Wiring ---------------------------------------------------------------------------------

  function hasFiles(event) {
    return Array.from(event.dataTransfer?.types || []).includes("Files");
  }

  /** Drops anywhere on the page count, so a near miss never opens the image in the tab. */
  function wireDragAndDrop() {
    const zone = $("#dropzone");
    let depth = 0;
    const highlight = (on) => {
      zone.dataset.over = String(on);
    };
    document.addEventListener("dragenter", (event) => {
      if (!hasFiles(event)) return;
      depth += 1;
      highlight(true);
    });
    document.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (!depth) highlight(false);
    });
    document.addEventListener("dragover", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
    });
    document.addEventListener("drop", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      depth = 0;
      highlight(false);
      addFiles(event.dataTransfer.files);
    });
  }

  function wirePicker() {
    const input = $("#file-input");
    input.addEventListener("change", () => {
      addFiles(input.files);
      input.value = ""; // picking the same files again is a new job
    });
  }

  function wirePaste() {
    document.addEventListener("paste", (event) => {
      const files = event.clipboardData?.files;
      if (files && files.length) {
        event.preventDefault();
        addFiles(files);
      }
    });
  }

  function wireCharts() {
    for (const button of document.querySelectorAll("[data-window-s]")) {
      button.addEventListener("click", () => setWindow(button));
    }
    new ResizeObserver(() => drawCharts()).observe($(".scaling"));
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", drawCharts);
  }

  function main() {
    if (!("EventSource" in window)) {
      showNotice("This browser cannot receive live results (no EventSource). Use a current browser.");
      return;
    }
    wirePicker();
    wireDragAndDrop();
    wirePaste();
    wireCharts();
    drawCharts();
    // The scaling stats are for admin keys; without keys on the server everyone is admin.
    window.dlaasAuth.whenReady().then((me) => {
      if (me.role === "admin") connectStats();
      else {
        setLive("down", "Admin only");
        $("#mode").textContent = "Scaling stats are shown to admin keys.";
      }
    });
  }

  main();
})();
