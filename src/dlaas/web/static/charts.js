// dlaas page: the scaling panel's two canvas charts (queue and workers) over a time window.
// Colours come from style.css's custom properties, so both themes stay in one place.

import { $ } from "./dom.js";

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

const view = {
  points: [], // [{time, visible, in_flight, running, starting, desired}], server clock
  clockOffsetS: 0, // server clock minus this clock
  windowS: 120,
};

/** New points to chart (server clock), and how far the server clock is ahead of this one. */
export function plotHistory(points, clockOffsetS) {
  view.points = points;
  view.clockOffsetS = clockOffsetS;
  drawCharts();
}

/** Shows the time window of a [data-window-s] button and marks it pressed. */
export function setWindow(button) {
  view.windowS = Number(button.dataset.windowS);
  for (const b of document.querySelectorAll("[data-window-s]")) {
    b.setAttribute("aria-pressed", String(b === button));
  }
  drawCharts();
}

export function drawCharts() {
  const nowS = Date.now() / 1000 + view.clockOffsetS;
  const fromS = nowS - view.windowS;
  // Keep the last point before the window so lines enter from the left edge.
  const firstInside = view.points.findIndex((p) => p.time >= fromS);
  const start = firstInside === -1 ? view.points.length - 1 : Math.max(0, firstInside - 1);
  const points = view.points.slice(Math.max(0, start));
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
  return `${chart.name} chart over the last ${view.windowS / 60} minutes; now ${parts.join(", ")}`;
}
