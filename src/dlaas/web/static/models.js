// dlaas page: the model picker. The served models come from GET /v1/models, the default
// first; each new job is sent with the model picked when its files were added.

import * as auth from "./auth.js";
import { $ } from "./dom.js";

/** Fill the picker once requests can be made; it stays hidden if the list cannot be read. */
export async function loadModels() {
  await auth.whenReady();
  const response = await fetch("/v1/models", { headers: auth.headers(), cache: "no-store" });
  if (!response.ok) return;
  const body = await response.json();
  const select = $("#model-select");
  select.replaceChildren(
    ...body.models.map((model) => {
      const option = document.createElement("option");
      option.value = model.name;
      const version = model.serving_version ? ` v${model.serving_version}` : "";
      const state = model.state === "READY" ? "" : ` (${model.state.toLowerCase()})`;
      option.textContent = `${model.name}${version}${model.default ? " (default)" : ""}${state}`;
      option.disabled = model.state !== "READY";
      return option;
    }),
  );
  select.value = body.default;
  $("#model-picker").hidden = false;
}

/** The picked model's name, or "" before the list has come (the service's default). */
export function pickedModel() {
  const select = $("#model-select");
  return select && !$("#model-picker").hidden ? select.value : "";
}
