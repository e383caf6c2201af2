// dlaas page: text and number formatting, with no DOM and no state.

export function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

export function percent(score) {
  const value = score * 100;
  if (value < 0.1) return "<0.1%";
  return `${value < 10 ? value.toFixed(1) : Math.round(value)}%`;
}

export function duration(seconds) {
  if (!Number.isFinite(seconds)) return "–";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${String(Math.floor(seconds % 60)).padStart(2, "0")} s`;
}

export function shortLabel(label) {
  return String(label).split(",")[0].trim();
}

export function otherNames(label) {
  return String(label).split(",").slice(1).map((s) => s.trim()).filter(Boolean).join(", ");
}

export function parseJSON(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/** A finite number, or null for anything else (missing keys included). */
export function number(value) {
  if (value === null || value === undefined || value === "") return null;
  const n = Number(value);
  return Number.isFinite(n) ? n : null;
}
