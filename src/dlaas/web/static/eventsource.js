// dlaas page: EventSource's interface over fetch, so an API key can travel in a header
// (EventSource itself cannot send headers).

/** Server-Sent Events read with fetch; dispatches "open", named events and "error". */
export class FetchEventSource extends EventTarget {
  constructor(url, headers = {}) {
    super();
    this.CONNECTING = 0;
    this.OPEN = 1;
    this.CLOSED = 2;
    this.readyState = 0;
    this.controller = new AbortController();
    this.run(url, headers);
  }

  async run(url, headers) {
    try {
      const response = await fetch(url, {
        headers: { ...headers, Accept: "text/event-stream" },
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
