// mmserve playground, entry module: wires the API key, the tabs and every card. No framework, no build step.

import { $, API_KEY_STORAGE, clearError, showError } from "./shared.js";
import { loadModels } from "./models.js";
import { setupTabs } from "./tabs.js";
import { setupChat } from "./chat.js";
import { setupVision } from "./vision.js";
import { setupAudio } from "./asr.js";
import { setupSpeech, updateVoices } from "./speech.js";
import { refreshCollections, setupCollections } from "./rag.js";
import { pollMetrics } from "./metrics.js";

// Every request goes to this gateway; the model pickers, the voices with them, come from GET /v1/models.
async function refreshModels() {
  await loadModels();
  updateVoices();
}

function showCollections() {
  refreshCollections().catch((err) => showError("rag-error", err));
}

function setupApiKey() {
  const input = $("api-key");
  input.value = sessionStorage.getItem(API_KEY_STORAGE) || "";
  input.addEventListener("change", () => {
    const key = input.value.trim();
    if (key) sessionStorage.setItem(API_KEY_STORAGE, key);
    else sessionStorage.removeItem(API_KEY_STORAGE);
    clearError("chat-error");
    refreshModels();
    if (!$("panel-rag").hidden) showCollections();
  });
}

function main() {
  setupApiKey();
  setupTabs({ "tab-rag": showCollections });
  setupChat();
  setupVision();
  setupAudio();
  setupSpeech();
  setupCollections();
  refreshModels().then(() => document.body.setAttribute("data-ready", "true"));
  pollMetrics();
}

main();
