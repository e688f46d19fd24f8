// Live engine statistics in the top bar (batch size, tokens/s), polled from GET /metrics (Prometheus text).

import { $, withAuth } from "./shared.js";

const METRICS_INTERVAL_MS = 2000;
const METRICS_RETRY_MS = 30000; // after a 404 or a failure: the gateway may simply not expose /metrics

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

export async function pollMetrics() {
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
