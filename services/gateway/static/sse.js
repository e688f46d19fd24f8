// Server-sent event streams of the API (chat and RAG): the `data:` payloads, and OpenAI-style JSON events.

// Server-sent events, parsed as they arrive: yields the payload of every `data:` field (joined by
// newlines when an event has several), event by event, until the body ends.
async function* sseData(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let data = [];
  const lines = function* (final) {
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      yield buffer.slice(0, newline).replace(/\r$/, "");
      buffer = buffer.slice(newline + 1);
    }
    if (final && buffer) {
      yield buffer;
      buffer = "";
      yield "";
    }
  };
  for (;;) {
    const { value, done } = await reader.read();
    buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
    for (const line of lines(done)) {
      if (line === "") {
        if (data.length) yield data.join("\n");
        data = [];
      } else if (line.startsWith("data:")) {
        data.push(line.slice(5).replace(/^ /, ""));
      } // comments (":") and other fields (event, id, retry) are not used by this API
    }
    if (done) {
      if (data.length) yield data.join("\n");
      return;
    }
  }
}

// JSON events of an OpenAI-style stream, ending at `[DONE]`; an error event becomes an exception.
export async function* jsonEvents(response) {
  for await (const data of sseData(response)) {
    if (data === "[DONE]") return;
    const payload = JSON.parse(data);
    if (payload && payload.error) throw new Error(payload.error.message || "the stream failed");
    yield payload;
  }
}
