// The recording page: wires a TranscribeClient to the page's controls and transcript.
import { TranscribeClient } from "./transcribe.js";

const root = document.getElementById("recorder");
const $ = (id) => document.getElementById(id);
const button = $("record-button");
const stateLabel = $("record-state");
const finals = $("finals");
const stable = $("partial-stable");
const unstable = $("partial-unstable");
const errorBox = $("record-error");
const notice = $("record-notice");
const sessionLink = $("session-link");
const levelBar = $("level-bar");
const elapsed = $("elapsed");
const lag = $("lag");

const LABELS = {
  idle: "Ready",
  connecting: "Connecting…",
  recording: "Recording",
  reconnecting: "Connection lost — reconnecting…",
  stopping: "Finishing the transcript…",
  finished: "Finished",
  failed: "Stopped",
};

let client = null;
let startedAt = 0;
let clock = null;

function formatTime(seconds) {
  const s = Math.floor(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}

function showState(state, detail = {}) {
  root.dataset.state = state;
  let label = LABELS[state] || state;
  if (state === "reconnecting") label += ` (attempt ${detail.attempt})`;
  stateLabel.textContent = label;
  button.textContent = state === "recording" || state === "reconnecting" || state === "connecting" ? "Stop" : "Start recording";
  button.classList.toggle("button-danger", button.textContent === "Stop");
  button.disabled = state === "stopping";
  $("language").disabled = $("title").disabled = !["idle", "finished", "failed"].includes(state);
  if (state === "failed" && detail.reason) showError(detail.reason);
  if (["finished", "failed"].includes(state)) {
    clearInterval(clock);
    levelBar.style.width = "0";
    unstable.textContent = "";
    stable.textContent = "";
  }
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

function addFinal(final) {
  const span = document.createElement("span");
  span.className = "final";
  span.dataset.seq = final.seq;
  span.title = `${final.start.toFixed(1)}–${final.end.toFixed(1)} s`;
  span.textContent = final.text + " ";
  finals.append(span);
  stable.textContent = "";
  unstable.textContent = "";
}

function reset() {
  finals.replaceChildren();
  stable.textContent = unstable.textContent = "";
  lag.textContent = "–";
  elapsed.textContent = "0:00";
  showError("");
  notice.hidden = true;
  sessionLink.hidden = true;
  delete root.dataset.session;
}

async function start() {
  reset();
  const language = $("language").value || null;
  client = new TranscribeClient({
    url: root.dataset.wsUrl,
    workletUrl: root.dataset.workletUrl,
    language,
    title: $("title").value.trim(),
    capture: root.dataset.capture || "auto",
  });
  window.transcribeClient = client; // for the browser console and end-to-end tests
  client.addEventListener("state", (e) => showState(e.detail.state, e.detail));
  client.addEventListener("level", (e) => {
    if (!["recording", "reconnecting", "connecting"].includes(client.state)) return;
    levelBar.style.width = `${Math.min(100, Math.round(Math.sqrt(e.detail.level) * 180))}%`;
  });
  client.addEventListener("ready", (e) => {
    root.dataset.session = e.detail.session;
    root.dataset.format = client.format;
    sessionLink.href = root.dataset.detailUrl.replace("00000000-0000-0000-0000-000000000000", e.detail.session);
    sessionLink.hidden = false;
    if (e.detail.resumed) notice.textContent = "Reconnected: the transcript continues where it left off.";
    notice.hidden = !e.detail.resumed;
  });
  client.addEventListener("partial", (e) => {
    stable.textContent = e.detail.stable ? e.detail.stable + " " : "";
    unstable.textContent = e.detail.unstable;
  });
  client.addEventListener("final", (e) => addFinal(e.detail));
  client.addEventListener("status", (e) => {
    lag.textContent = `${(e.detail.lag_ms / 1000).toFixed(1)} s`;
  });
  client.addEventListener("error", (e) => showError(e.detail.message));
  startedAt = performance.now();
  clock = setInterval(() => (elapsed.textContent = formatTime((performance.now() - startedAt) / 1000)), 250);
  try {
    await client.start();
  } catch (error) {
    clearInterval(clock);
  }
}

button.addEventListener("click", () => {
  if (client && ["connecting", "recording", "reconnecting"].includes(client.state)) client.stop();
  else start();
});
showState("idle");
