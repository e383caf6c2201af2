// dlaas page: the Cancel button of a running job.

import * as auth from "./auth.js";
import { announce } from "./dom.js";
import { parseJSON } from "./format.js";
import { renderJobSummary, showJobError } from "./jobview.js";

/** POST /v1/jobs/{id}/cancel: images not classified yet never are; their results say so. */
export function cancelJob(job) {
  if (!job.id || job.status !== "running") return;
  job.view.cancel.disabled = true;
  job.view.cancel.textContent = "Cancelling…";
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `/v1/jobs/${encodeURIComponent(job.id)}/cancel`);
  auth.authorize(xhr);
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
