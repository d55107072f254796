// Microphone capture and assistant playback, both on AudioWorklets at 24 kHz PCM16.
//
// One AudioContext at 24 kHz carries both worklets when the browser allows it (Chromium does, and
// resamples the microphone for us). Where connecting a microphone to a 24 kHz context fails
// (Firefox), capture moves to a second context at the device rate and the capture worklet
// resamples. The playback worklet is the source of truth for how much audio was heard.

export const RATE = 24000;

const WORKLETS = new URL("./worklets/", import.meta.url);

/** Encode bytes as base64 (chunked: String.fromCharCode has an argument limit). */
export function bytesToBase64(bytes) {
  let binary = "";
  const CHUNK = 0x8000;
  for (let i = 0; i < bytes.length; i += CHUNK) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + CHUNK));
  }
  return btoa(binary);
}

/** Decode base64 into a fresh Uint8Array (offset 0, so it can back an Int16Array). */
export function base64ToBytes(b64) {
  const binary = atob(b64);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

/** An error whose message tells the user what to do; `code` goes to window.__rt.lastError. */
export class AudioSetupError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

export function describeMicError(err) {
  const name = err && err.name;
  if (name === "NotAllowedError" || name === "SecurityError") {
    return new AudioSetupError(
      "microphone_denied",
      "Microphone access was denied. Allow the microphone for this page (the icon in the address bar) and press Start again.",
    );
  }
  if (name === "NotFoundError" || name === "OverconstrainedError") {
    return new AudioSetupError(
      "microphone_not_found",
      "No microphone was found. Connect one (or choose it in the system settings) and press Start again.",
    );
  }
  if (name === "NotReadableError" || name === "AbortError") {
    return new AudioSetupError(
      "microphone_busy",
      "The microphone could not be opened: another application may be using it. Close it and press Start again.",
    );
  }
  return new AudioSetupError(
    "microphone_error",
    `The microphone could not be opened (${(err && err.message) || err}).`,
  );
}

function newContext(sampleRate) {
  try {
    return sampleRate
      ? new AudioContext({ sampleRate, latencyHint: "interactive" })
      : new AudioContext({ latencyHint: "interactive" });
  } catch {
    return null;
  }
}

/**
 * Audio for one session. Construct it synchronously inside the Start click (browsers let an
 * AudioContext start only after a user gesture), then `await open()`.
 *
 * callbacks: onFrame(ArrayBuffer pcm16), onLevel({rms, peak}), onPlayback(message)
 */
export class AudioIO {
  constructor({ onFrame, onLevel, onPlayback }) {
    this.onFrame = onFrame;
    this.onLevel = onLevel;
    this.onPlayback = onPlayback;
    this.ctx = newContext(RATE) || newContext(0);
    this.captureCtx = null;
    this.stream = null;
    this.player = null;
    this.capture = null;
    this.nodes = [];
    this.flushes = new Map();
    this.flushSeq = 0;
    this.closed = false;
  }

  async open() {
    if (!this.ctx) {
      throw new AudioSetupError("audio_unavailable", "This browser cannot create an AudioContext.");
    }
    if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
      throw new AudioSetupError(
        "insecure_context",
        "The microphone needs a secure page: open it at https://… or http://localhost.",
      );
    }
    const ctx = this.ctx;
    await Promise.all([
      ctx.audioWorklet.addModule(new URL("playback.js", WORKLETS)),
      ctx.audioWorklet.addModule(new URL("capture.js", WORKLETS)),
    ]);
    if (ctx.state !== "running") await ctx.resume().catch(() => {});
    if (this.closed) return;

    this.player = new AudioWorkletNode(ctx, "playback-processor", {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { srcRate: RATE },
    });
    this.player.port.onmessage = (event) => this.onPlayerMessage(event.data);
    this.player.connect(ctx.destination);

    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: {
          echoCancellation: true,
          noiseSuppression: true,
          autoGainControl: true,
          channelCount: 1,
        },
      });
    } catch (err) {
      throw describeMicError(err);
    }
    if (this.closed) {
      this.stopTracks();
      return;
    }

    let captureCtx = ctx;
    let source;
    try {
      source = ctx.createMediaStreamSource(this.stream);
    } catch {
      // The browser will not connect a microphone to a context at another rate: capture at the
      // device rate instead and let the worklet resample to 24 kHz.
      captureCtx = this.captureCtx = newContext(0);
      await captureCtx.audioWorklet.addModule(new URL("capture.js", WORKLETS));
      if (captureCtx.state !== "running") await captureCtx.resume().catch(() => {});
      source = captureCtx.createMediaStreamSource(this.stream);
    }
    this.capture = new AudioWorkletNode(captureCtx, "capture-processor", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { targetRate: RATE, frameMs: 40, levelMs: 50 },
    });
    this.capture.port.onmessage = (event) => {
      const msg = event.data;
      if (msg.type === "audio") this.onFrame(msg.pcm);
      else if (msg.type === "level") this.onLevel(msg);
    };
    // Keep the capture node pulled by the graph without making it audible.
    const mute = captureCtx.createGain();
    mute.gain.value = 0;
    source.connect(this.capture);
    this.capture.connect(mute);
    mute.connect(captureCtx.destination);
    this.nodes.push(source, mute);
  }

  /** Queue PCM16 audio (an ArrayBuffer, transferred) for an assistant item. */
  enqueue(itemId, pcm) {
    if (this.player) this.player.port.postMessage({ type: "chunk", itemId, pcm }, [pcm]);
  }

  /** Mark the end of an item's audio: the worklet reports "ended" once it has played it all. */
  end(itemId) {
    if (this.player) this.player.port.postMessage({ type: "end", itemId });
  }

  /** Stop playback now. Resolves {current, played: {itemId: samples}} (null if no player). */
  flush() {
    if (!this.player) return Promise.resolve(null);
    const id = ++this.flushSeq;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.flushes.delete(id);
        resolve(null);
      }, 1000);
      this.flushes.set(id, (result) => {
        clearTimeout(timer);
        resolve(result);
      });
      this.player.port.postMessage({ type: "flush", id });
    });
  }

  onPlayerMessage(msg) {
    if (msg.type === "flushed") {
      const resolve = this.flushes.get(msg.id);
      this.flushes.delete(msg.id);
      if (resolve) resolve(msg);
    }
    this.onPlayback(msg);
  }

  /** performance.now() time at which context time `t` reaches the speakers (best estimate). */
  heardAt(t) {
    const now = performance.now();
    try {
      const ts = this.ctx.getOutputTimestamp();
      if (ts && ts.performanceTime > 0 && Number.isFinite(ts.contextTime)) {
        const at = ts.performanceTime + (t - ts.contextTime) * 1000;
        if (Number.isFinite(at) && Math.abs(at - now) < 2000) return at;
      }
    } catch {
      // fall through to the message time
    }
    return now;
  }

  stopTracks() {
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
  }

  /** Release the microphone and close the contexts. Safe to call more than once. */
  async close() {
    if (this.closed) return;
    this.closed = true;
    for (const resolve of this.flushes.values()) resolve(null);
    this.flushes.clear();
    if (this.capture) {
      this.capture.port.postMessage({ type: "stop" });
      this.capture.port.onmessage = null;
    }
    if (this.player) this.player.port.onmessage = null;
    for (const node of [this.capture, this.player, ...this.nodes]) {
      try {
        if (node) node.disconnect();
      } catch {
        // already disconnected
      }
    }
    this.stopTracks();
    const contexts = [this.ctx, this.captureCtx].filter((c) => c && c.state !== "closed");
    await Promise.all(contexts.map((c) => c.close().catch(() => {})));
  }
}
