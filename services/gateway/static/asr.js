// The Transcribe tab: POST /v1/audio/transcriptions of an uploaded file, or of the microphone as 16-bit WAV.

import { $, api, busy, clearError, showError } from "./shared.js";

const RECORD_SAMPLE_RATE = 16000; // what Whisper listens at; the server resamples anything else too

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

export function setupAudio() {
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
