// Playback worklet: a queue of 24 kHz PCM16 chunks tagged with the assistant item they belong to.
//
// It is the one place that knows how much of each item the user has actually heard: it counts
// the source samples it has output per item, so the main thread can truncate an interrupted item
// at exactly that point (conversation.item.truncate audio_end_ms = samples / 24).
//
// Messages from the main thread:
//   {type: "chunk", itemId, pcm: ArrayBuffer}  Int16 little-endian at `srcRate` (24 kHz)
//   {type: "end", itemId}                      no more audio for this item: report when reached
//   {type: "flush", id}                        drop everything queued now; answer "flushed"
// Messages to the main thread (played counts are in source samples):
//   {type: "started", itemId, time}            first sample of an item output at context `time`
//   {type: "progress", played: {itemId: n}}    every ~50 ms while playing
//   {type: "ended", itemId, played}            an item played completely (its "end" was reached)
//   {type: "playing"} / {type: "drained"}      output starts / the queue ran empty
//   {type: "flushed", id, current, played}     after a flush: the item that was playing, counts

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.srcRate = opts.srcRate || 24000;
    this.step = this.srcRate / sampleRate; // source samples per output sample
    this.queue = []; // {itemId, data: Float32Array, pos} | {end: true, itemId}
    this.played = new Map(); // itemId -> source samples output
    this.started = new Set();
    this.dirty = new Set();
    this.reportEvery = Math.max(128, Math.round(sampleRate * 0.05));
    this.sinceReport = 0;
    this.busy = false;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(msg) {
    if (!msg) return;
    if (msg.type === "chunk") {
      const pcm = new Int16Array(msg.pcm);
      const data = new Float32Array(pcm.length);
      for (let i = 0; i < pcm.length; i++) data[i] = pcm[i] / 32768;
      if (data.length) this.queue.push({ itemId: msg.itemId, data, pos: 0 });
    } else if (msg.type === "end") {
      this.queue.push({ end: true, itemId: msg.itemId });
      this.drainMarkers();
    } else if (msg.type === "flush") {
      const head = this.queue.find((entry) => !entry.end);
      const current = head ? head.itemId : null;
      this.queue = [];
      this.busy = false;
      this.dirty.clear();
      this.port.postMessage({ type: "flushed", id: msg.id, current, played: this.snapshot() });
    }
  }

  snapshot(ids) {
    const out = {};
    for (const id of ids || this.played.keys()) out[id] = this.played.get(id) || 0;
    return out;
  }

  drainMarkers() {
    while (this.queue.length && this.queue[0].end) {
      const { itemId } = this.queue.shift();
      this.dirty.delete(itemId);
      this.port.postMessage({ type: "ended", itemId, played: this.played.get(itemId) || 0 });
    }
  }

  count(itemId, n) {
    this.played.set(itemId, (this.played.get(itemId) || 0) + n);
    this.dirty.add(itemId);
  }

  process(inputs, outputs) {
    const out = outputs[0];
    const ch0 = out[0];
    const frames = ch0.length;
    let i = 0;
    this.drainMarkers();
    while (i < frames && this.queue.length) {
      const head = this.queue[0];
      if (!this.started.has(head.itemId)) {
        this.started.add(head.itemId);
        this.port.postMessage({
          type: "started",
          itemId: head.itemId,
          time: currentTime + i / sampleRate,
        });
      }
      if (!this.busy) {
        this.busy = true;
        this.port.postMessage({ type: "playing" });
      }
      if (this.step === 1) {
        const n = Math.min(frames - i, head.data.length - head.pos);
        ch0.set(head.data.subarray(head.pos, head.pos + n), i);
        head.pos += n;
        i += n;
        this.count(head.itemId, n);
      } else {
        // Resample by linear interpolation (only when the context could not run at srcRate).
        const start = head.pos;
        while (i < frames && head.pos < head.data.length) {
          const k = Math.floor(head.pos);
          const frac = head.pos - k;
          const a = head.data[k];
          const b = k + 1 < head.data.length ? head.data[k + 1] : a;
          ch0[i++] = a + (b - a) * frac;
          head.pos += this.step;
        }
        this.count(head.itemId, Math.min(head.pos, head.data.length) - start);
      }
      if (head.pos >= head.data.length) {
        this.queue.shift();
        this.drainMarkers();
      }
    }
    for (let c = 1; c < out.length; c++) out[c].set(ch0);

    if (this.busy && !this.queue.length) {
      this.busy = false;
      this.port.postMessage({ type: "drained" });
    }
    this.sinceReport += frames;
    if (this.sinceReport >= this.reportEvery) {
      this.sinceReport = 0;
      if (this.dirty.size) {
        this.port.postMessage({ type: "progress", played: this.snapshot(this.dirty) });
        this.dirty.clear();
      }
    }
    return true;
  }
}

registerProcessor("playback-processor", PlaybackProcessor);
