// dlaas page: the API key, when the service asks for one.
// The key lives in sessionStorage: this tab only, gone when it closes. Requests send it as
// "Authorization: Bearer"; event streams then go through fetch, since EventSource cannot
// send headers. Without keys on the server, nothing here changes how the page works.

import { FetchEventSource } from "./eventsource.js";

const STORE = "dlaas-api-key";
let key = sessionStorage.getItem(STORE);
let ready = null;

/** The headers that carry the key, for fetch. */
export const headers = () => (key ? { Authorization: `Bearer ${key}` } : {});

async function whoami() {
  const response = await fetch("/v1/whoami", { headers: headers(), cache: "no-store" });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}

/** Show the key form and resolve with what the person enters. */
function ask(message) {
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  const error = document.getElementById("key-error");
  form.hidden = false;
  error.hidden = !message;
  error.textContent = message || "";
  input.focus();
  return new Promise((resolve) => {
    form.addEventListener(
      "submit",
      (event) => {
        event.preventDefault();
        const value = input.value.trim();
        input.value = "";
        form.hidden = true;
        resolve(value);
      },
      { once: true },
    );
  });
}

function showIdentity(me) {
  const box = document.getElementById("identity");
  if (!box || !me.auth_required) return;
  document.getElementById("identity-owner").textContent = `${me.owner} (${me.role})`;
  box.hidden = false;
  document.getElementById("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(STORE);
    window.location.reload();
  });
}

/** Resolves with {auth_required, owner, role} once requests can be made. */
export function whenReady() {
  if (!ready) {
    ready = (async () => {
      let message = "";
      for (;;) {
        const me = await whoami();
        if (!me.auth_required || me.owner) {
          showIdentity(me);
          return me;
        }
        if (key) message = "That key was not accepted. Check it and try again.";
        sessionStorage.removeItem(STORE);
        key = await ask(message);
        if (key) sessionStorage.setItem(STORE, key);
      }
    })();
  }
  return ready;
}

/** Adds the key, when there is one, to a request opened on this XMLHttpRequest. */
export function authorize(xhr) {
  if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
}

/** An event stream that carries the key: fetch-based with one, the browser's without. */
export function eventSource(url) {
  return key ? new FetchEventSource(url, headers()) : new EventSource(url);
}
