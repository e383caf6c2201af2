// dlaas page: the API key, when the service asks for one.
// The key lives in sessionStorage: this tab only, gone when it closes. Requests send it as
// "Authorization: Bearer"; event streams then go through fetch, since EventSource cannot
// send headers. Without keys on the server, nothing here changes how the page works.
"use strict";

window.dlaasAuth = (() => {
  const STORE = "dlaas-api-key";
  let key = sessionStorage.getItem(STORE);
  let identity = null;
  let ready = null;

  const headers = () => (key ? { Authorization: `Bearer ${key}` } : {});

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
  function whenReady() {
    if (!ready) {
      ready = (async () => {
        let message = "";
        for (;;) {
          const me = await whoami();
          if (!me.auth_required || me.owner) {
            identity = me;
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

  function authorize(xhr) {
    if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
  }

  /** EventSource's interface over fetch, so the key can travel in a header. */
  class FetchEventSource extends EventTarget {
    constructor(url) {
      super();
      this.CONNECTING = 0;
      this.OPEN = 1;
      this.CLOSED = 2;
      this.readyState = 0;
      this.controller = new AbortController();
      this.run(url);
    }

    async run(url) {
      try {
        const response = await fetch(url, {
          headers: { ...headers(), Accept: "text/event-stream" },
          cache: "no-store",
          signal: this.controller.signal,
        });
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        this.readyState = 1;
        this.dispatchEvent(new Event("open"));
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n?/g, "\n");
          let end = buffer.indexOf("\n\n");
          while (end >= 0) {
            this.dispatchBlock(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
            end = buffer.indexOf("\n\n");
          }
        }
      } catch {
        // a refused or dropped stream: reported below as "error" once closed
      }
      if (this.readyState !== 2) {
        this.readyState = 2;
        this.dispatchEvent(new Event("error"));
      }
    }

    dispatchBlock(block) {
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") name = value;
        else if (field === "data") data.push(value);
      }
      if (data.length) this.dispatchEvent(new MessageEvent(name, { data: data.join("\n") }));
    }

    close() {
      this.readyState = 2;
      this.controller.abort();
    }
  }

  function eventSource(url) {
    return key ? new FetchEventSource(url) : new EventSource(url);
  }

  return {
    whenReady,
    authorize,
    eventSource,
    get role() {
      return identity ? identity.role : null;
    },
  };
})();
