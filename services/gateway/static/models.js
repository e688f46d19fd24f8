// The served models, from GET /v1/models: every model picker of the page is filled from them, by task.

import { $, api, fillSelect, showError } from "./shared.js";

let modelCards = [];

function modelsFor(task) {
  return modelCards.filter((card) => card.task === task).map((card) => card.id);
}

// The model card of one served model (undefined when there is none by that id).
export function modelCard(id) {
  return modelCards.find((c) => c.id === id);
}

// Lists the models and refills every picker; a failure is reported in the chat's alert, never thrown.
export async function loadModels() {
  try {
    const body = await (await api("/v1/models")).json();
    modelCards = body.data || [];
  } catch (err) {
    showError("chat-error", new Error(`could not list models: ${err.message}`));
    modelCards = [];
  }
  fillSelect($("chat-model"), modelsFor("chat"), "no chat model served");
  fillSelect($("rag-model"), modelsFor("chat"), "no chat model served");
  fillSelect($("vision-model"), modelsFor("vision"), "no vision model served");
  fillSelect($("asr-model"), modelsFor("asr"), "no speech recognition model");
  fillSelect($("tts-model"), modelsFor("tts"), "no speech synthesis model");
  fillSelect($("collection-model"), modelsFor("embedding"), "no embedding model");
}
