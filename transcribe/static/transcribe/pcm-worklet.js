// AudioWorklet processor: microphone audio -> 16 kHz mono PCM s16le frames (stt.v1 "pcm_s16le").
//
// Resampling averages the input samples that fall into each output sample's slot (a box filter):
// cheap, no aliasing worth hearing for speech, and exact when the input rate is a multiple of 16 kHz.
// Each posted message carries one frame (FRAME_MS of audio) and the frame's RMS level for the meter.

const TARGET_RATE = 16000;
const FRAME_MS = 100;

class PcmProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / TARGET_RATE; // input samples per output sample (3 at 48 kHz)
    this.acc = 0; // sum of the input samples in the current slot
    this.count = 0; // how many input samples are in it
    this.pos = 0; // fractional input position within the slot
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
      this.acc += value / channels;
      this.count += 1;
      this.pos += 1;
      if (this.pos >= this.step) {
        this.pos -= this.step;
        this.push(this.acc / this.count);
        this.acc = 0;
        this.count = 0;
      }
    }
    return true;
  }

  push(sample) {
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
