// The Speech tab: text synthesised by POST /v1/audio/speech into a WAV file, played in an <audio> player.

import { $, busy, fillSelect, postJSON } from "./shared.js";
import { modelCard } from "./models.js";

let speechUrl = null;

// The voice picker follows the chosen speech model: its voices, if its model card lists any.
export function updateVoices() {
  const card = modelCard($("tts-model").value);
  fillSelect($("tts-voice"), (card && card.voices) || [], "default voice");
  $("tts-voice").disabled = !(card && card.voices && card.voices.length);
}

export function setupSpeech() {
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
