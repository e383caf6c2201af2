// dlaas page: a job's results saved as JSON or CSV, built in the page.

import { el } from "./dom.js";
import { counts } from "./jobs.js";

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

export function downloadJSON(job) {
  const body = { job_id: job.id, counts: counts(job), images: resultRows(job) };
  saveFile(`dlaas-${fileStem(job)}.json`, "application/json", JSON.stringify(body, null, 2));
}

export function downloadCSV(job) {
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
