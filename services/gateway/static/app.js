// mmserve playground: plain JavaScript, no framework, no build step. Every request goes to this gateway.
"use strict";

const $ = (id) => document.getElementById(id);

const METRICS_INTERVAL_MS = 2000;
const METRICS_RETRY_MS = 30000; // after a 404 or a failure: the gateway may simply not expose /metrics
const RECORD_SAMPLE_RATE = 16000; // what Whisper listens at; the server resamples anything else too

// ---------------------------------------------------------------------------------------------------
// HTTP helpers: errors come in OpenAI's shape, {"error": {"message", "type", "param", "code"}}.

async function errorFrom(response) {
  let message = `${response.status} ${response.statusText || "error"}`;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) {
    // not JSON: keep the status line
  }
  const error = new Error(message);
  error.status = response.status;
  return error;
}

// Servers started with API keys want `Authorization: Bearer <key>` on /v1 (and perhaps /metrics).
// The key lives in this tab's session storage only.
const API_KEY_STORAGE = "mmserve.apiKey";

function withAuth(headers = {}) {
  const key = sessionStorage.getItem(API_KEY_STORAGE);
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: withAuth(options.headers) });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new Error(`could not reach the server (${err.message})`);
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

function postJSON(path, body, options = {}) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    ...options,
  });
}

function showError(id, err) {
  const el = $(id);
  el.textContent = err && err.message ? err.message : String(err);
  el.hidden = false;
}

function clearError(id) {
  const el = $(id);
  el.textContent = "";
  el.hidden = true;
}

// Disables a submit button while `work` runs, and reports its error in the section's alert.
async function busy(button, errorId, work) {
  clearError(errorId);
  button.disabled = true;
  try {
    await work();
  } catch (err) {
    if (err.name !== "AbortError") showError(errorId, err);
  } finally {
    button.disabled = false;
  }
}

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
async function* jsonEvents(response) {
  for await (const data of sseData(response)) {
    if (data === "[DONE]") return;
    const payload = JSON.parse(data);
    if (payload && payload.error) throw new Error(payload.error.message || "the stream failed");
    yield payload;
  }
}

// ---------------------------------------------------------------------------------------------------
// Models: every select is filled from GET /v1/models, by task.

let modelCards = [];

function fillSelect(select, values, emptyText) {
  select.replaceChildren();
  for (const value of values) select.append(new Option(value, value));
  if (!values.length) select.append(new Option(emptyText, ""));
  select.disabled = !values.length;
}

function modelsFor(task) {
  return modelCards.filter((card) => card.task === task).map((card) => card.id);
}

async function loadModels() {
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
  updateVoices();
}

function updateVoices() {
  const card = modelCards.find((c) => c.id === $("tts-model").value);
  fillSelect($("tts-voice"), (card && card.voices) || [], "default voice");
  $("tts-voice").disabled = !(card && card.voices && card.voices.length);
}

// ---------------------------------------------------------------------------------------------------
// Tabs

function selectTab(tab) {
  for (const other of document.querySelectorAll('[role="tab"]')) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    other.tabIndex = selected ? 0 : -1;
    $(other.getAttribute("aria-controls")).hidden = !selected;
  }
  if (tab.id === "tab-rag") refreshCollections().catch((err) => showError("rag-error", err));
}

function setupTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  for (const tab of tabs) {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      const next = tabs[(tabs.indexOf(tab) + step + tabs.length) % tabs.length];
      selectTab(next);
      next.focus();
    });
  }
}

// ---------------------------------------------------------------------------------------------------
// Chat, streamed

const conversation = [];
let chatAbort = null;

function addBubble(role, text) {
  const bubble = document.createElement("div");
  bubble.className = `msg ${role}`;
  bubble.textContent = text;
  $("chat-log").append(bubble);
  bubble.scrollIntoView({ block: "end" });
  return bubble;
}

async function sendChat() {
  const input = $("chat-input");
  const text = input.value.trim();
  if (!text || chatAbort) return;
  clearError("chat-error");
  input.value = "";
  conversation.push({ role: "user", content: text });
  addBubble("user", text);
  const bubble = addBubble("assistant", "");
  bubble.classList.add("streaming");
  const body = {
    model: $("chat-model").value || undefined,
    messages: conversation,
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: Number($("chat-max-tokens").value) || undefined,
    temperature: Number($("chat-temperature").value),
  };
  chatAbort = new AbortController();
  $("chat-send").disabled = true;
  $("chat-stop").disabled = false;
  const started = performance.now();
  let answer = "";
  try {
    const response = await postJSON("/v1/chat/completions", body, { signal: chatAbort.signal });
    for await (const chunk of jsonEvents(response)) {
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        answer += delta.content;
        bubble.textContent = answer;
        bubble.scrollIntoView({ block: "end" });
      }
      if (chunk.usage) {
        const seconds = (performance.now() - started) / 1000;
        const { prompt_tokens: prompt, completion_tokens: completion } = chunk.usage;
        $("chat-usage").textContent =
          `${prompt} prompt + ${completion} completion tokens in ${seconds.toFixed(1)} s ` +
          `(${(completion / seconds).toFixed(1)} tokens/s)`;
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") showError("chat-error", err);
  } finally {
    bubble.classList.remove("streaming");
    if (answer) conversation.push({ role: "assistant", content: answer });
    else if (!bubble.textContent) bubble.remove();
    if (!answer) conversation.pop(); // nothing came back: forget the unanswered question
    chatAbort = null;
    $("chat-send").disabled = false;
    $("chat-stop").disabled = true;
  }
}

function setupChat() {
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sendChat();
  });
  $("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendChat();
    }
  });
  $("chat-stop").addEventListener("click", () => chatAbort && chatAbort.abort());
  $("chat-clear").addEventListener("click", () => {
    if (chatAbort) chatAbort.abort();
    conversation.length = 0;
    $("chat-log").replaceChildren();
    $("chat-usage").textContent = "";
    clearError("chat-error");
  });
}

// ---------------------------------------------------------------------------------------------------
// Vision: image → labels

let previewUrl = null;

function setupVision() {
  $("image-file").addEventListener("change", () => {
    const file = $("image-file").files[0];
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = file ? URL.createObjectURL(file) : null;
    $("image-preview").hidden = !file;
    if (file) $("image-preview").src = previewUrl;
    $("vision-results").replaceChildren();
  });
  $("vision-form").addEventListener("submit", (event) => {
    event.preventDefault();
    busy($("vision-submit"), "vision-error", async () => {
      const file = $("image-file").files[0];
      if (!file) throw new Error("choose an image first");
      const form = new FormData();
      form.append("file", file);
      form.append("top_k", $("vision-top-k").value || "5");
      if ($("vision-model").value) form.append("model", $("vision-model").value);
      $("vision-results").replaceChildren();
      const result = await (await api("/v1/vision/classifications", { method: "POST", body: form })).json();
      for (const { label, score } of result.data) {
        const item = document.createElement("li");
        const name = document.createElement("span");
        name.className = "label";
        name.textContent = label;
        const value = document.createElement("span");
        value.className = "score";
        value.textContent = `${(score * 100).toFixed(1)} %`;
        const bar = document.createElement("span");
        bar.className = "bar";
        const fill = document.createElement("span");
        fill.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
        bar.append(fill);
        item.append(name, value, bar);
        $("vision-results").append(item);
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------------
// Speech recognition: an uploaded file, or the microphone encoded as 16-bit PCM WAV in the browser

async function transcribe(blob, filename) {
  const form = new FormData();
  form.append("file", blob, filename);
  if ($("asr-model").value) form.append("model", $("asr-model").value);
  const language = $("asr-language").value.trim();
  if (language) form.append("language", language);
  form.append("response_format", "json");
  $("asr-transcript").textContent = "…";
  try {
    const result = await (await api("/v1/audio/transcriptions", { method: "POST", body: form })).json();
    $("asr-transcript").textContent = result.text.trim();
  } catch (err) {
    $("asr-transcript").textContent = "";
    throw err;
  }
}

// An AudioBuffer as a mono 16-bit PCM WAV file.
function encodeWav(buffer) {
  const samples = buffer.getChannelData(0);
  const rate = buffer.sampleRate;
  const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const ascii = (offset, text) => {
    for (let i = 0; i < text.length; i++) view.setUint8(offset + i, text.charCodeAt(i));
  };
  ascii(0, "RIFF");
  view.setUint32(4, 36 + samples.length * 2, true);
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  view.setUint32(16, 16, true); // fmt chunk size
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, rate * 2, true); // bytes per second
  view.setUint16(32, 2, true); // block align
  view.setUint16(34, 16, true); // bits per sample
  ascii(36, "data");
  view.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return new Blob([view], { type: "audio/wav" });
}

// Whatever MediaRecorder produced (WebM/Opus in Chromium, Ogg in Firefox) → mono 16 kHz WAV.
async function recordingToWav(blob) {
  const context = new AudioContext();
  let decoded;
  try {
    decoded = await context.decodeAudioData(await blob.arrayBuffer());
  } finally {
    context.close();
  }
  const frames = Math.max(1, Math.ceil(decoded.duration * RECORD_SAMPLE_RATE));
  const offline = new OfflineAudioContext(1, frames, RECORD_SAMPLE_RATE);
  const source = offline.createBufferSource();
  source.buffer = decoded;
  source.connect(offline.destination); // down-mixes to mono and resamples
  source.start();
  return encodeWav(await offline.startRendering());
}

let recorder = null;
let recordingUrl = null;

async function startRecording() {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.addEventListener("dataavailable", (event) => event.data.size && chunks.push(event.data));
  recorder.addEventListener("stop", () => {
    for (const track of stream.getTracks()) track.stop();
    recorder = null;
    setRecording(false);
    $("mic-status").textContent = "encoding…";
    busy($("asr-submit"), "asr-error", async () => {
      const wav = await recordingToWav(new Blob(chunks, { type: chunks[0] ? chunks[0].type : "" }));
      if (recordingUrl) URL.revokeObjectURL(recordingUrl);
      recordingUrl = URL.createObjectURL(wav);
      $("asr-audio").src = recordingUrl;
      $("asr-audio").hidden = false;
      $("mic-status").textContent = `recorded ${(wav.size / 1024).toFixed(0)} KiB of WAV; transcribing…`;
      await transcribe(wav, "recording.wav");
    }).finally(() => {
      $("mic-status").textContent = "";
    });
  });
  recorder.start();
  setRecording(true);
  $("mic-status").textContent = "recording… press Stop when done";
}

function setRecording(on) {
  const button = $("mic-record");
  button.setAttribute("aria-pressed", String(on));
  button.textContent = on ? "■ Stop" : "● Record";
}

function setupAudio() {
  $("asr-form").addEventListener("submit", (event) => {
    event.preventDefault();
    busy($("asr-submit"), "asr-error", async () => {
      const file = $("audio-file").files[0];
      if (!file) throw new Error("choose an audio file first (or record one)");
      await transcribe(file, file.name);
    });
  });
  const button = $("mic-record");
  if (!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia && window.MediaRecorder)) {
    button.disabled = true;
    $("mic-status").textContent = "no microphone access here: upload a file instead";
    return;
  }
  button.addEventListener("click", async () => {
    clearError("asr-error");
    if (recorder) {
      recorder.stop();
      return;
    }
    try {
      await startRecording();
    } catch (err) {
      $("mic-status").textContent = "";
      showError("asr-error", new Error(`microphone: ${err.message || err.name}`));
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Speech synthesis → an <audio> player

let speechUrl = null;

function setupSpeech() {
  $("tts-model").addEventListener("change", updateVoices);
  $("tts-form").addEventListener("submit", (event) => {
    event.preventDefault();
    busy($("tts-submit"), "tts-error", async () => {
      const body = {
        model: $("tts-model").value || undefined,
        input: $("tts-input").value,
        voice: $("tts-voice").value || undefined,
        response_format: "wav",
        speed: Number($("tts-speed").value) || 1,
      };
      const audio = await (await postJSON("/v1/audio/speech", body)).blob();
      if (speechUrl) URL.revokeObjectURL(speechUrl);
      speechUrl = URL.createObjectURL(new Blob([audio], { type: "audio/wav" }));
      const player = $("tts-audio");
      player.src = speechUrl;
      player.hidden = false;
      $("tts-download").href = speechUrl;
      $("tts-download").hidden = false;
      player.play().catch(() => {}); // autoplay may be refused: the controls are there
    });
  });
}

// ---------------------------------------------------------------------------------------------------
// Collections and RAG

async function refreshCollections(selected) {
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

function setupCollections() {
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

// ---------------------------------------------------------------------------------------------------
// Live statistics from GET /metrics (Prometheus text exposition format)

const SAMPLE = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;

// {name: [{labels, value}]} for the sample lines of a Prometheus text page.
function parsePrometheus(text) {
  const samples = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = SAMPLE.exec(line);
    if (!match) continue;
    const labels = {};
    for (const [, key, value] of (match[2] || "").matchAll(/([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[key] = value.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    }
    (samples[match[1]] ||= []).push({ labels, value: Number(match[3]) });
  }
  return samples;
}

function perModel(samples, name) {
  const byModel = {};
  for (const { labels, value } of samples[name] || []) {
    if (!Number.isFinite(value)) continue;
    const model = labels.model_name || "";
    byModel[model] = (byModel[model] || 0) + value;
  }
  return byModel;
}

const sum = (values) => Object.values(values).reduce((a, b) => a + b, 0);
let lastTokens = null; // {total, at}

function showStats(running, tokensPerSecond, detail) {
  $("stats").classList.remove("unavailable");
  $("stat-batch").textContent = String(running);
  $("stat-tps").textContent = tokensPerSecond === null ? "–" : tokensPerSecond.toFixed(1);
  $("stat-note").textContent = "live";
  $("stats").title = detail;
}

function showStatsUnavailable() {
  lastTokens = null;
  $("stats").classList.add("unavailable");
  $("stats").title = "";
  $("stat-note").textContent = "metrics unavailable";
}

async function pollMetrics() {
  let delay = METRICS_INTERVAL_MS;
  try {
    const response = await fetch("/metrics", { headers: withAuth({ Accept: "text/plain" }) });
    if (!response.ok) throw new Error(`GET /metrics: ${response.status}`);
    const samples = parsePrometheus(await response.text());
    const running = perModel(samples, "mmserve:num_requests_running");
    const tokens = perModel(samples, "mmserve:generation_tokens_total");
    const now = performance.now();
    const total = sum(tokens);
    let rate = null;
    if (lastTokens) {
      const seconds = (now - lastTokens.at) / 1000;
      // A counter that went down was reset (a restarted server): count from zero.
      const delta = total >= lastTokens.total ? total - lastTokens.total : total;
      rate = seconds > 0 ? delta / seconds : 0;
    }
    lastTokens = { total, at: now };
    const detail = Object.keys({ ...running, ...tokens })
      .map((model) => `${model || "(all)"}: ${running[model] || 0} running, ${tokens[model] || 0} tokens generated`)
      .join("\n");
    showStats(sum(running), rate, detail);
  } catch (_) {
    showStatsUnavailable();
    delay = METRICS_RETRY_MS;
  }
  setTimeout(pollMetrics, delay);
}

// ---------------------------------------------------------------------------------------------------

function setupApiKey() {
  const input = $("api-key");
  input.value = sessionStorage.getItem(API_KEY_STORAGE) || "";
  input.addEventListener("change", () => {
    const key = input.value.trim();
    if (key) sessionStorage.setItem(API_KEY_STORAGE, key);
    else sessionStorage.removeItem(API_KEY_STORAGE);
    clearError("chat-error");
    loadModels();
    if (!$("panel-rag").hidden) refreshCollections().catch((err) => showError("rag-error", err));
  });
}

function main() {
  setupApiKey();
  setupTabs();
  setupChat();
  setupVision();
  setupAudio();
  setupSpeech();
  setupCollections();
  loadModels().then(() => document.body.setAttribute("data-ready", "true"));
  pollMetrics();
}

main();
