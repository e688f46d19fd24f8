// The Collections tab: create collections, add documents (POST /v1/collections…), and ask them over /v1/rag.

import { $, api, busy, fillSelect, postJSON } from "./shared.js";
import { jsonEvents } from "./sse.js";

export async function refreshCollections(selected) {
  const body = await (await api("/v1/collections")).json();
  const select = $("collection-select");
  const keep = selected || select.value;
  const names = (body.data || []).map((c) => c.name);
  fillSelect(select, names, "no collections yet");
  for (const option of select.options) {
    const info = body.data.find((c) => c.name === option.value);
    if (info) option.textContent = `${info.name} (${info.documents} documents, ${info.model})`;
  }
  if (names.includes(keep)) select.value = keep;
}

function renderCitations(citations) {
  const list = $("rag-citations");
  list.replaceChildren();
  for (const citation of citations) {
    const item = document.createElement("li");
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = `[${citation.index}] ${citation.document_id} · chunk ${citation.chunk_id} · score ${citation.score.toFixed(3)}`;
    const text = document.createElement("div");
    text.textContent = citation.text;
    item.append(meta, text);
    list.append(item);
  }
}

export function setupCollections() {
  $("collection-refresh").addEventListener("click", () =>
    busy($("collection-refresh"), "rag-error", () => refreshCollections()),
  );
  $("collection-form").addEventListener("submit", (event) => {
    event.preventDefault();
    busy($("collection-create"), "rag-error", async () => {
      const name = $("collection-name").value.trim();
      const body = { name };
      if ($("collection-model").value) body.model = $("collection-model").value;
      await postJSON("/v1/collections", body);
      $("collection-name").value = "";
      await refreshCollections(name);
      $("documents-status").textContent = `created ${name}`;
    });
  });
  $("documents-form").addEventListener("submit", (event) => {
    event.preventDefault();
    busy($("documents-add"), "rag-error", async () => {
      const collection = $("collection-select").value;
      if (!collection) throw new Error("create or choose a collection first");
      const documents = $("documents-input")
        .value.split("\n")
        .map((line) => line.trim())
        .filter(Boolean)
        .map((text) => ({ text }));
      if (!documents.length) throw new Error("write at least one document");
      const path = `/v1/collections/${encodeURIComponent(collection)}/documents`;
      const result = await (await postJSON(path, { documents })).json();
      $("documents-input").value = "";
      $("documents-status").textContent =
        `added ${result.ids.length} document(s), ${result.chunks} chunk(s) to ${collection}`;
      await refreshCollections(collection);
    });
  });
  $("rag-form").addEventListener("submit", (event) => {
    event.preventDefault();
    busy($("rag-submit"), "rag-error", async () => {
      const collection = $("collection-select").value;
      if (!collection) throw new Error("create or choose a collection first");
      const body = {
        collection,
        query: $("rag-question").value,
        top_k: Number($("rag-top-k").value) || 4,
        model: $("rag-model").value || undefined,
        stream: true,
      };
      const answer = $("rag-answer");
      answer.textContent = "";
      renderCitations([]);
      let retrieved = [];
      const response = await postJSON("/v1/rag", body);
      for await (const payload of jsonEvents(response)) {
        if (payload.object === "rag.citations") retrieved = payload.citations;
        else if (payload.object === "rag.delta") answer.textContent += payload.delta;
        else if (payload.object === "rag.done") {
          answer.textContent = answer.textContent.trim();
          // The passages the answer cites; when it cites none, every passage it was given.
          renderCitations(payload.citations.length ? payload.citations : retrieved);
        }
      }
    });
  });
}
