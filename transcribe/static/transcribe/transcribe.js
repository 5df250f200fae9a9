// A browser client for django-transcribe's stt.v1 WebSocket protocol: microphone in, text out.
//
//   import { TranscribeClient } from "/static/transcribe/transcribe.js";
//   const client = new TranscribeClient({ url: "/ws/transcribe/", language: "en" });
//   client.addEventListener("partial", (e) => show(e.detail.stable, e.detail.unstable));
//   client.addEventListener("final", (e) => append(e.detail.text));
//   await client.start();            // asks for the microphone, connects, streams
//   const closed = await client.stop(); // the server's `closed` event: {session, text, duration}
//
// Events (CustomEvent, the message in `detail`): the server's ready, partial, final, status,
// speech_started, utterance_end, error and closed; and the client's own:
//   state  {state, reason?}   idle → connecting → recording ⇄ reconnecting → stopping → finished | failed
//   level  {level}            RMS of the last ~100 ms of microphone input, 0..1
//
// Audio: an AudioWorklet turns the microphone into 16 kHz PCM (no decoding on the server). Where
// AudioWorklet is missing, MediaRecorder sends WebM/Opus (or Ogg/Opus) instead.
// Drops: the client reconnects with backoff and resumes the session (start{session}); the server
// answers with the finals it stored and the audio offset they cover, and the client re-sends the
// PCM it kept from that offset, so no word is lost or repeated. (With MediaRecorder the audio
// spoken while the socket was down cannot be re-sent: a compressed stream cannot restart mid-way.)
//
// Pages on another origin (the server's TRANSCRIBE["TICKET_ORIGINS"]) have no session cookie of the
// server's: pass `ticket`, a function that asks your own backend for a fresh ticket (your backend
// gets it from the server's `tickets/` view with its API token). It is called before every connect
// and reconnect, since tickets expire within a minute; a plain string works for one connection.
//
//   new TranscribeClient({
//     url: "wss://stt.example.com/ws/transcribe/",
//     ticket: async () => (await (await fetch("/stt-ticket/", { method: "POST" })).json()).ticket,
//   });

const SAMPLE_RATE = 16000;
const RETRY_DELAYS_MS = [500, 1000, 2000, 4000, 8000];

// Close codes after which reconnecting cannot help, and what to tell the user.
const FATAL_CLOSES = {
  4400: "The server rejected a message from this page (protocol violation).",
  4401: "You are not logged in any more. Log in and try again.",
  4403: "This session belongs to another user.",
  4408: "The connection was idle for too long.",
  4409: "This session was resumed in another window or tab.",
  4413: "An audio frame was too large for the server.",
  4429: "The server is at capacity. Try again in a minute.",
  4500: "The server could not transcribe (engine unavailable).",
};

export class TranscribeError extends Error {}

/** A readable message for a getUserMedia failure. */
export function microphoneErrorMessage(error) {
  switch (error && error.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Microphone access was denied. Allow it in your browser's site settings, then try again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone was found. Connect one and try again.";
    case "NotReadableError":
      return "The microphone is in use by another program or could not be opened.";
    default:
      return `Could not open the microphone: ${error && error.message ? error.message : error}`;
  }
}

function socketUrl(url) {
  const absolute = new URL(url, window.location.href);
  if (absolute.protocol === "http:") absolute.protocol = "ws:";
  if (absolute.protocol === "https:") absolute.protocol = "wss:";
  return absolute.href;
}

function mediaRecorderFormat() {
  if (typeof MediaRecorder === "undefined") return null;
  if (MediaRecorder.isTypeSupported("audio/webm;codecs=opus")) return { mimeType: "audio/webm;codecs=opus", format: "webm" };
  if (MediaRecorder.isTypeSupported("audio/ogg;codecs=opus")) return { mimeType: "audio/ogg;codecs=opus", format: "ogg" };
  return null;
}

export class TranscribeClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} [options.url] WebSocket path or URL of the stt.v1 endpoint.
   * @param {string|null} [options.language] "en", ..., or null to let a multilingual model detect it.
   * @param {string} [options.title] Title of the saved session.
   * @param {"auto"|"worklet"|"mediarecorder"} [options.capture] How to capture audio.
   * @param {string} [options.workletUrl] URL of pcm-worklet.js (defaults to beside this module).
   * @param {number} [options.maxRetries] Reconnect attempts after a drop before giving up.
   * @param {number} [options.keepSeconds] Most audio kept for re-sending after a drop.
   * @param {string|function(): Promise<string>} [options.ticket] A ticket from the server's
   *   `tickets/` view, or an async function returning a fresh one (called before every connect).
   */
  constructor(options = {}) {
    super();
    this.url = socketUrl(options.url || "/ws/transcribe/");
    this.language = options.language === undefined ? "en" : options.language;
    this.title = options.title || "";
    this.capture = options.capture || "auto";
    this.workletUrl = options.workletUrl || new URL("pcm-worklet.js", import.meta.url).href;
    this.maxRetries = options.maxRetries ?? 8;
    // Below the server's MAX_AUDIO_BURST (120 s by default), so a resume's re-send is not a flood.
    this.keepSeconds = options.keepSeconds ?? 100;
    this.ticket = options.ticket || null;

    this.state = "idle";
    this.session = null; // id of the saved session, from the first `ready`
    this.format = null; // "pcm_s16le", "webm" or "ogg"
    this.finals = []; // every final once, in order
    this.lastSeq = 0;
    this.limits = {};

    this._socket = null;
    this._streaming = false; // `ready` received on the current socket: audio may flow
    this._attempt = 0;
    this._retryTimer = null;
    this._stopping = false;
    this._closedDetail = null;
    this._stopWaiters = [];

    // PCM capture: chunks kept from `_covered` (end of the last final, in samples) on.
    this._captured = 0; // samples captured since the session began
    this._covered = 0;
    this._kept = []; // [{start, data: Int16Array}]

    this._stream = null;
    this._context = null;
    this._worklet = null;
    this._recorder = null;
    this._recorderGeneration = 0;
    this._pendingBlobs = [];
    this._captureStopped = false;
    this._sendChain = Promise.resolve();
    this._levelTimer = null;
  }

  // -- public API ----------------------------------------------------------------------------

  /** Ask for the microphone (or use `stream`), connect and start streaming. */
  async start(stream = null) {
    if (this.state !== "idle") throw new TranscribeError(`start() in state ${this.state}`);
    this._setState("connecting");
    try {
      this._stream = stream || (await this._openMicrophone());
      await this._startCapture();
    } catch (error) {
      this._fail(error instanceof TranscribeError ? error.message : microphoneErrorMessage(error));
      throw error;
    }
    this._connect();
  }

  /** Stop recording; resolves with the server's `closed` detail once every final has arrived. */
  stop() {
    if (this.state === "finished" || this.state === "failed") return Promise.resolve(this._closedDetail);
    const done = new Promise((resolve) => this._stopWaiters.push(resolve));
    if (!this._stopping) {
      this._stopping = true;
      this._setState("stopping");
      this._stopCapture().then(() => this._sendStopWhenStreaming());
    }
    return done;
  }

  // -- microphone and capture ----------------------------------------------------------------

  async _openMicrophone() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new TranscribeError("This browser cannot record audio here (a secure https:// page is needed).");
    }
    // The browser's voice processing is made for calls, not for a recognizer: with echo cancellation
    // and gain control on, the captured speech measured 19 dB signal-to-distortion instead of 78 dB.
    return navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  }

  async _startCapture() {
    const useWorklet =
      this.capture === "worklet" ||
      (this.capture === "auto" && typeof AudioWorkletNode !== "undefined" && window.isSecureContext !== false);
    if (useWorklet) {
      this.format = "pcm_s16le";
      const source = this._openPcmContext();
      await this._context.audioWorklet.addModule(this.workletUrl);
      this._worklet = new AudioWorkletNode(this._context, "transcribe-pcm");
      this._worklet.port.onmessage = (event) => this._onPcm(event.data.pcm, event.data.level);
      // A muted path to the speakers keeps the graph pulling the worklet in every browser.
      const mute = this._context.createGain();
      mute.gain.value = 0;
      source.connect(this._worklet).connect(mute).connect(this._context.destination);
      await this._context.resume();
      return;
    }
    const choice = mediaRecorderFormat();
    if (!choice) throw new TranscribeError("This browser can record neither PCM (AudioWorklet) nor Opus (MediaRecorder).");
    this.format = choice.format;
    this._mimeType = choice.mimeType;
    this._startLevelMeter();
    this._startRecorder();
  }

  /** A 16 kHz AudioContext where the browser resamples the microphone itself (most do), else one at
   * the device rate, whose audio the worklet resamples; returns the microphone's source node. */
  _openPcmContext() {
    let context = null;
    try {
      context = new AudioContext({ sampleRate: SAMPLE_RATE });
      const source = context.createMediaStreamSource(this._stream);
      this._context = context;
      return source;
    } catch {
      // Some browsers refuse a stream whose rate differs from the context's (NotSupportedError).
      if (context) context.close().catch(() => {});
      this._context = new AudioContext();
      return this._context.createMediaStreamSource(this._stream);
    }
  }

  _startRecorder() {
    const generation = ++this._recorderGeneration;
    const recorder = new MediaRecorder(this._stream, { mimeType: this._mimeType, audioBitsPerSecond: 32000 });
    recorder.ondataavailable = (event) => {
      // A replaced recorder's last blob belongs to a stream the server no longer decodes.
      if (generation !== this._recorderGeneration || !event.data || event.data.size === 0) return;
      if (this._streaming) this._queueBlob(event.data);
      else if (this.session === null) this._pendingBlobs.push(event.data); // sent on the first `ready`
    };
    recorder.start(250);
    this._recorder = recorder;
  }

  _queueBlob(blob) {
    const socket = this._socket;
    // Blobs are read asynchronously: chain the sends so frames keep their order.
    this._sendChain = this._sendChain.then(async () => {
      const data = await blob.arrayBuffer();
      if (socket === this._socket && socket.readyState === WebSocket.OPEN) socket.send(data);
    });
  }

  _startLevelMeter() {
    if (typeof AudioContext === "undefined") return;
    this._context = new AudioContext();
    const analyser = this._context.createAnalyser();
    analyser.fftSize = 2048;
    this._context.createMediaStreamSource(this._stream).connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    this._levelTimer = setInterval(() => {
      analyser.getFloatTimeDomainData(samples);
      let energy = 0;
      for (const value of samples) energy += value * value;
      this._emit("level", { level: Math.sqrt(energy / samples.length) });
    }, 100);
  }

  _onPcm(pcm, level) {
    this._emit("level", { level });
    if (this._captureStopped) return;
    this._kept.push({ start: this._captured, data: pcm });
    this._captured += pcm.length;
    this._trimKept();
    if (this._streaming) this._sendPcm(pcm);
  }

  _sendPcm(pcm) {
    if (this._socket && this._socket.readyState === WebSocket.OPEN) this._socket.send(pcm.buffer.slice(pcm.byteOffset, pcm.byteOffset + pcm.byteLength));
  }

  _trimKept() {
    const floor = Math.max(this._covered, this._captured - this.keepSeconds * SAMPLE_RATE);
    while (this._kept.length && this._kept[0].start + this._kept[0].data.length <= floor) this._kept.shift();
  }

  async _stopCapture() {
    if (this._worklet) {
      // The worklet holds up to 100 ms not yet posted: ask for it before disconnecting.
      const flushed = new Promise((resolve) => setTimeout(resolve, 150));
      this._worklet.port.postMessage("flush");
      await flushed;
      this._worklet.disconnect();
    }
    if (this._recorder && this._recorder.state !== "inactive") {
      const last = new Promise((resolve) => this._recorder.addEventListener("stop", resolve, { once: true }));
      this._recorder.stop(); // emits the last blob, then `stop`
      await last;
      await this._sendChain;
    }
    if (this._levelTimer) clearInterval(this._levelTimer);
    if (this._stream) this._stream.getTracks().forEach((track) => track.stop());
    if (this._context) await this._context.close().catch(() => {});
    this._captureStopped = true;
  }

  // -- socket --------------------------------------------------------------------------------

  async _connect() {
    let url = this.url;
    if (this.ticket) {
      let ticket;
      try {
        ticket = typeof this.ticket === "function" ? await this.ticket() : this.ticket;
      } catch {
        this._onClose({ code: 1006 }); // like a dropped connection: retried with backoff
        return;
      }
      if (this.state === "failed" || this.state === "finished") return;
      const withTicket = new URL(url);
      withTicket.searchParams.set("ticket", ticket);
      url = withTicket.href;
    }
    const socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    this._socket = socket;
    this._streaming = false;
    socket.onopen = () => {
      const start = { type: "start", format: this.format, sample_rate: SAMPLE_RATE, language: this.language };
      if (this.title) start.title = this.title;
      if (this.session) start.session = this.session;
      socket.send(JSON.stringify(start));
    };
    socket.onmessage = (event) => {
      if (typeof event.data !== "string") return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      this._onMessage(message);
    };
    socket.onclose = (event) => {
      if (socket === this._socket) this._onClose(event);
    };
  }

  _onMessage(message) {
    switch (message.type) {
      case "ready":
        this._onReady(message);
        break;
      case "final":
        this._addFinal(message);
        break;
      case "closed":
        this._closedDetail = message;
        this._emit("closed", message);
        break;
      default: // partial, status, error, speech_started, utterance_end
        this._emit(message.type, message);
    }
  }

  _onReady(message) {
    const resumed = this.session !== null;
    this.session = message.session;
    this.limits = message.limits || {};
    this._attempt = 0;
    // Finals the server stored while we were away: each once, in order.
    for (const final of message.finals || []) this._addFinal(final);
    this._emit("ready", message);
    if (this.format === "pcm_s16le") {
      // Re-send what the server has not heard, from its offset on (the kept chunks start at or
      // before it unless the outage outlasted keepSeconds).
      const offset = Math.round((message.offset || 0) * SAMPLE_RATE);
      for (const chunk of this._kept) {
        const end = chunk.start + chunk.data.length;
        if (end <= offset) continue;
        this._sendPcm(chunk.start >= offset ? chunk.data : chunk.data.subarray(offset - chunk.start));
      }
    } else if (resumed) {
      // A compressed stream cannot continue mid-way: a new recorder starts with a fresh header.
      if (!this._stopping) {
        if (this._recorder.state !== "inactive") this._recorder.stop();
        this._startRecorder();
      }
    } else {
      for (const blob of this._pendingBlobs) this._queueBlob(blob);
      this._pendingBlobs = [];
    }
    this._streaming = true;
    if (this._stopping) this._sendStopWhenStreaming();
    else this._setState("recording");
  }

  _addFinal(final) {
    if (final.seq <= this.lastSeq) return; // already shown (a resume repeats what was stored)
    this.lastSeq = final.seq;
    this.finals.push(final);
    this._covered = Math.max(this._covered, Math.round(final.end * SAMPLE_RATE));
    this._trimKept();
    this._emit("final", final);
  }

  _sendStopWhenStreaming() {
    if (!this._streaming || !this._captureStopped) return; // sent once the socket is back and the last audio is out
    this._sendChain.then(() => {
      if (this._socket && this._socket.readyState === WebSocket.OPEN) this._socket.send(JSON.stringify({ type: "stop" }));
    });
  }

  _onClose(event) {
    this._streaming = false;
    if (this._closedDetail || (event.code === 1000 && this._stopping)) {
      this._finish();
      return;
    }
    if (FATAL_CLOSES[event.code]) {
      this._fail(FATAL_CLOSES[event.code], event.code);
      return;
    }
    if (this._attempt >= this.maxRetries) {
      this._fail("The connection to the server was lost.", event.code);
      return;
    }
    const delay = RETRY_DELAYS_MS[Math.min(this._attempt, RETRY_DELAYS_MS.length - 1)];
    this._attempt += 1;
    this._setState("reconnecting", { attempt: this._attempt, delay, code: event.code });
    this._retryTimer = setTimeout(() => this._connect(), delay);
  }

  _finish() {
    this._setState("finished");
    this._settle();
  }

  _fail(reason, code) {
    this._setState("failed", { reason, code });
    if (this._socket && this._socket.readyState <= WebSocket.OPEN) this._socket.close();
    if (!this._stopping) {
      this._stopping = true;
      this._stopCapture();
    }
    this._settle();
  }

  _settle() {
    clearTimeout(this._retryTimer);
    for (const resolve of this._stopWaiters.splice(0)) resolve(this._closedDetail);
  }

  _setState(state, extra = {}) {
    this.state = state;
    this._emit("state", { state, ...extra });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
