// dlaas page: the scaling panel's live numbers, from the stats event stream.

import * as auth from "./auth.js";
import { plotHistory } from "./charts.js";
import { $ } from "./dom.js";
import { duration, number, parseJSON } from "./format.js";

const STATS_URL = "/v1/stats/events?interval_s=1";
const HISTORY_KEEP_S = 600;

const MODE_TEXT = {
  elastic: "Elastic: workers follow the backlog",
  fixed: "Fixed pool of workers",
  external: "Workers are managed elsewhere",
};

const samples = []; // built here when the server sends no history (no controller)
let retryTimer = null;

export function connectStats() {
  const source = auth.eventSource(STATS_URL);
  source.addEventListener("open", () => setLive("live", "Live"));
  source.addEventListener("stats", (event) => {
    const stats = parseJSON(event.data);
    if (stats) onStats(stats);
  });
  source.addEventListener("error", () => {
    if (source.readyState === source.CLOSED) {
      setLive("down", "Offline, retrying");
      window.clearTimeout(retryTimer);
      retryTimer = window.setTimeout(connectStats, 5000);
    } else {
      setLive("connecting", "Reconnecting");
    }
  });
}

export function setLive(state, text) {
  $("#live").dataset.state = state;
  $("#live-text").textContent = text;
}

function onStats(stats) {
  const { points, clockOffsetS } = historyFrom(stats);
  renderFacts(stats);
  plotHistory(points, clockOffsetS);
}

/**
 * The controller's history when there is one, else samples of each snapshot; with the
 * server clock minus this clock, in seconds.
 */
function historyFrom(stats) {
  const nowS = Date.now() / 1000;
  const history = (Array.isArray(stats.history) ? stats.history : [])
    .map(normalizePoint)
    .filter(Boolean);
  if (history.length) {
    const serverNowS = number(stats.updated_at) ?? history[history.length - 1].time;
    return { points: history, clockOffsetS: serverNowS - nowS };
  }
  const sample = normalizePoint({ time: nowS, ...(stats.queue || {}), ...(stats.workers || {}) });
  samples.push(sample);
  while (samples.length && samples[0].time < nowS - HISTORY_KEEP_S) {
    samples.shift();
  }
  return { points: samples, clockOffsetS: 0 };
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
