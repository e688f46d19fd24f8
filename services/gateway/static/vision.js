// The Image tab: an uploaded image, previewed, classified by POST /v1/vision/classifications into scored labels.

import { $, api, busy } from "./shared.js";

let previewUrl = null;

function renderLabels(labels) {
  for (const { label, score } of labels) {
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
}

export function setupVision() {
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
      renderLabels(result.data);
    });
  });
}
