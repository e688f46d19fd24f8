// The Chat card: a conversation streamed from POST /v1/chat/completions over server-sent events.

import { $, clearError, postJSON, showError } from "./shared.js";
import { jsonEvents } from "./sse.js";

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

// The JSON schema box: undefined when empty (free text), else the schema; throws on text that is not JSON.
function schemaFormat() {
  const text = $("chat-schema").value.trim();
  if (!text) return undefined;
  let schema;
  try {
    schema = JSON.parse(text);
  } catch (err) {
    throw new Error(`JSON schema: ${err.message}`);
  }
  return { type: "json_schema", json_schema: { name: "playground", schema, strict: true } };
}

async function sendChat() {
  const input = $("chat-input");
  const text = input.value.trim();
  if (!text || chatAbort) return;
  clearError("chat-error");
  let responseFormat;
  try {
    responseFormat = schemaFormat();
  } catch (err) {
    showError("chat-error", err);
    return;
  }
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
    response_format: responseFormat,
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

export function setupChat() {
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
