// dlaas page: upload images, follow each job's Server-Sent Events, chart the scaling.
// Plain JavaScript modules, no dependencies and no build step; every request goes to this
// origin. This entry module wires the page's inputs to the modules that do the work.

import * as auth from "./auth.js";
import { drawCharts, setWindow } from "./charts.js";
import { $, showNotice } from "./dom.js";
import { loadModels } from "./models.js";
import { connectStats, setLive } from "./stats.js";
import { addFiles } from "./upload.js";

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
  loadModels();
  // The scaling stats are for admin keys; without keys on the server everyone is admin.
  auth.whenReady().then((me) => {
    if (me.role === "admin") connectStats();
    else {
      setLive("down", "Admin only");
      $("#mode").textContent = "Scaling stats are shown to admin keys.";
    }
  });
}

main();
