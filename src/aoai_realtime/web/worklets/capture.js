// Capture worklet: microphone samples -> 24 kHz mono PCM16 frames for input_audio_buffer.append.
//
// Runs in the AudioWorkletGlobalScope, where `sampleRate` is the context's rate. When the page
// could open its AudioContext at 24 kHz the samples pass straight through; otherwise they are
// resampled here by linear interpolation (no extra filtering: speech stays intelligible and the
// service's own VAD and transcription are robust to the small aliasing this leaves).
//
// Messages to the main thread:
//   {type: "audio", pcm: ArrayBuffer}   Int16 little-endian, `frameMs` long (40 ms = 960 samples)
//   {type: "level", rms, peak}          linear 0..1, every `levelMs` (50 ms) of input
// Messages from the main thread:
//   {type: "stop"}                      end processing (the node can then be dropped)

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.targetRate = opts.targetRate || 24000;
    this.frameSamples = Math.max(1, Math.round((this.targetRate * (opts.frameMs || 40)) / 1000));
    this.step = sampleRate / this.targetRate; // input samples per output sample
    this.frame = new Int16Array(this.frameSamples);
    this.fill = 0;
    this.pos = 0; // read position for the next output sample, relative to the current block
    this.prev = 0; // last input sample of the previous block (index -1 of the current one)
    this.mix = null;
    this.levelEvery = Math.max(1, Math.round((sampleRate * (opts.levelMs || 50)) / 1000));
    this.levelSum = 0;
    this.levelCount = 0;
    this.levelPeak = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data && event.data.type === "stop") this.running = false;
    };
  }

  pushSample(x) {
    const s = x > 1 ? 1 : x < -1 ? -1 : x;
    this.frame[this.fill++] = s < 0 ? Math.round(s * 0x8000) : Math.round(s * 0x7fff);
    if (this.fill === this.frameSamples) {
      const buffer = this.frame.buffer;
      this.port.postMessage({ type: "audio", pcm: buffer }, [buffer]);
      this.frame = new Int16Array(this.frameSamples);
      this.fill = 0;
    }
  }

  level(block) {
    for (let i = 0; i < block.length; i++) {
      const x = block[i];
      this.levelSum += x * x;
      const a = x < 0 ? -x : x;
      if (a > this.levelPeak) this.levelPeak = a;
    }
    this.levelCount += block.length;
    if (this.levelCount >= this.levelEvery) {
      const rms = Math.sqrt(this.levelSum / this.levelCount);
      this.port.postMessage({ type: "level", rms, peak: this.levelPeak });
      this.levelSum = 0;
      this.levelCount = 0;
      this.levelPeak = 0;
    }
  }

  process(inputs) {
    if (!this.running) return false;
    const input = inputs[0];
    if (!input || input.length === 0 || !input[0]) return true;

    let block = input[0];
    if (input.length > 1) {
      // Down-mix to mono (a device may ignore channelCount: 1).
      if (!this.mix || this.mix.length !== block.length) this.mix = new Float32Array(block.length);
      const mix = this.mix;
      mix.fill(0);
      for (let c = 0; c < input.length; c++) {
        const ch = input[c];
        for (let i = 0; i < ch.length; i++) mix[i] += ch[i];
      }
      for (let i = 0; i < mix.length; i++) mix[i] /= input.length;
      block = mix;
    }

    this.level(block);

    const n = block.length;
    if (this.step === 1) {
      for (let i = 0; i < n; i++) this.pushSample(block[i]);
      return true;
    }
    // Linear interpolation; position -1 refers to the last sample of the previous block.
    let t = this.pos;
    while (t <= n - 1) {
      const i = Math.floor(t);
      const frac = t - i;
      const a = i < 0 ? this.prev : block[i];
      const b = i + 1 < n ? block[i + 1] : a;
      this.pushSample(a + (b - a) * frac);
      t += this.step;
    }
    this.pos = t - n;
    this.prev = block[n - 1];
    return true;
  }
}

registerProcessor("capture-processor", CaptureProcessor);
