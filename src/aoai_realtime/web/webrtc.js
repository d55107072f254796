// The page's WebRTC transport: the microphone as an Opus track, the answer on the remote track,
// events on the `oai-events` data channel. The offer goes to the middle tier (POST api/calls),
// which applies its policy, forwards it upstream with the server's credential and answers with
// the SDP answer only; the page never holds a key. Settings changes go to the middle tier too
// (POST api/calls/ID/session), and Stop hangs up through it (POST api/calls/ID/hangup).
//
// Same shape as RealtimeConnection (realtime.js): open(), send(event), close(), isOpen, and the
// onEvent / onClose / onSend callbacks, so the session logic in app.js serves both transports.

import { describeMicError } from "./audio.js";

export const DATA_CHANNEL = "oai-events";
const ICE_GATHERING_MS = 3000; // every host candidate is known well before this on a LAN
const LOUD = 0.02; // RMS (of 1.0) above which the remote track carries speech

/** The microphone constraints: the browser's own echo cancellation, noise suppression, AGC. */
export const MIC_CONSTRAINTS = {
  audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
};

/** URL of a middle-tier call resource, relative to the page, with endpoint/deployment. */
export function callsUrl(path, { endpoint, deployment } = {}, base = location.href) {
  const url = new URL(path, base);
  if (endpoint) url.searchParams.set("endpoint", endpoint);
  if (deployment) url.searchParams.set("deployment", deployment);
  return url.toString();
}

function waitIceGathering(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => pc.iceGatheringState === "complete" && done();
    const timer = setTimeout(done, timeoutMs); // send what was gathered: host candidates suffice
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/** An Error carrying the middle tier's relay_error (type, code, message) for the banner. */
function relayError(error, status) {
  const err = new Error(error.message || `HTTP ${status}`);
  err.relay = {
    type: error.type || "relay_error",
    code: error.code || `http_${status}`,
    message: error.message || `The middle tier refused the call (HTTP ${status}).`,
  };
  return err;
}

/**
 * The level of a MediaStream, read by a WebAudio analyser (`level()`: RMS of the last window,
 * 0..1). Chromium plays a remote WebRTC stream through WebAudio only while a media element also
 * plays it, so the remote stream is given to an <audio> element as well.
 */
class LevelMeter {
  constructor(context, stream) {
    this.source = context.createMediaStreamSource(stream);
    this.analyser = context.createAnalyser();
    this.analyser.fftSize = 512;
    this.buffer = new Float32Array(this.analyser.fftSize);
    this.source.connect(this.analyser);
  }

  level() {
    this.analyser.getFloatTimeDomainData(this.buffer);
    let sum = 0;
    for (const x of this.buffer) sum += x * x;
    return Math.sqrt(sum / this.buffer.length);
  }

  close() {
    this.source.disconnect();
  }
}

/**
 * One call through the middle tier.
 *   onEvent(event)            every event of the data channel
 *   onClose({code, reason})   once, when the call ends and close() was not called
 *   onSend(event)             every event sent on the data channel
 *   onLevels({mic, remote})   every 20 ms: the microphone's and the answer's RMS (0..1)
 *   onHeard(at)               the answer's audio became audible (performance.now())
 */
export class WebRtcConnection {
  constructor(target, { onEvent, onClose, onSend, onLevels, onHeard, token }) {
    this.target = target;
    this.onEvent = onEvent;
    this.onClose = onClose;
    this.onSend = onSend || (() => {});
    this.onLevels = onLevels || (() => {});
    this.onHeard = onHeard || (() => {});
    this.token = token;
    this.pc = null;
    this.dc = null;
    this.mic = null;
    this.callId = null;
    this.closedByUs = false;
    this.ended = false;
    this.loud = false;
    // Created inside the Start click, so the browser lets it run.
    this.context = new AudioContext({ latencyHint: "interactive" });
    this.player = null;
    this.meters = {};
    this.timer = null;
  }

  headers(json = true) {
    const headers = json ? { "content-type": "application/json" } : {};
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    return headers;
  }

  /** Open the microphone, make the call, resolve once the data channel is open. */
  async open(session, timeoutMs = 15000) {
    try {
      this.mic = await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
    } catch (err) {
      throw describeMicError(err);
    }
    if (this.closedByUs) return;
    if (this.context.state === "suspended") await this.context.resume().catch(() => {});
    this.meters.mic = new LevelMeter(this.context, this.mic);
    const pc = (this.pc = new RTCPeerConnection());
    for (const track of this.mic.getAudioTracks()) pc.addTrack(track, this.mic);
    pc.ontrack = (event) => this.remoteTrack(event.streams[0] || new MediaStream([event.track]));
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed" || pc.connectionState === "closed") {
        this.gone(`the connection is ${pc.connectionState}`);
      }
    };
    const dc = (this.dc = pc.createDataChannel(DATA_CHANNEL));
    const opened = new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(Object.assign(new Error("timeout"), { code: "connect_timeout" })),
        timeoutMs,
      );
      dc.onopen = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    dc.onmessage = (event) => this.receive(event.data);
    dc.onclose = () => this.gone("the call's data channel closed");
    await pc.setLocalDescription(await pc.createOffer());
    await waitIceGathering(pc, ICE_GATHERING_MS);
    if (this.closedByUs) return;
    let response;
    try {
      response = await fetch(callsUrl("api/calls", this.target), {
        method: "POST",
        headers: this.headers(),
        body: JSON.stringify({ sdp: pc.localDescription.sdp, session }),
        cache: "no-store",
      });
    } catch (err) {
      throw Object.assign(new Error(err.message), { code: "connect_failed" });
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok || !body || typeof body.sdp !== "string") {
      if (response.status === 401) throw Object.assign(new Error("401"), { code: "connect_failed" });
      throw relayError((body && body.error) || {}, response.status);
    }
    this.callId = body.call_id;
    this.refused = body.refused || [];
    if (this.closedByUs) {
      this.hangup();
      return;
    }
    await pc.setRemoteDescription({ type: "answer", sdp: body.sdp });
    await opened;
    this.timer = setInterval(() => this.measure(), 20);
  }

  remoteTrack(stream) {
    // The element plays the answer (and lets WebAudio read it, see LevelMeter).
    const player = (this.player = document.createElement("audio"));
    player.autoplay = true;
    player.hidden = true;
    player.srcObject = stream;
    document.body.append(player);
    player.play().catch(() => {});
    this.meters.remote = new LevelMeter(this.context, stream);
  }

  measure() {
    const mic = this.meters.mic ? this.meters.mic.level() : 0;
    const remote = this.meters.remote ? this.meters.remote.level() : 0;
    const loud = remote >= LOUD;
    if (loud && !this.loud) this.onHeard(performance.now());
    this.loud = loud;
    this.onLevels({ mic, remote, loud });
  }

  receive(data) {
    if (typeof data !== "string") return;
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      return;
    }
    if (event && typeof event.type === "string") this.onEvent(event);
  }

  get isOpen() {
    return !!this.dc && this.dc.readyState === "open";
  }

  get buffered() {
    return this.dc ? this.dc.bufferedAmount : 0;
  }

  /** Send one client event on the data channel; false when it is not open. */
  send(event) {
    if (!this.isOpen) return false;
    this.dc.send(JSON.stringify(event));
    this.onSend(event);
    return true;
  }

  /** The page's settings, through the middle tier's policy; resolves to the refused fields. */
  async updateSession(session) {
    if (!this.callId) return [];
    const response = await fetch(callsUrl(`api/calls/${encodeURIComponent(this.callId)}/session`), {
      method: "POST",
      headers: this.headers(),
      body: JSON.stringify({ session }),
      cache: "no-store",
    });
    const body = await response.json().catch(() => ({}));
    return body.refused || [];
  }

  hangup() {
    if (!this.callId) return;
    const id = this.callId;
    this.callId = null;
    fetch(callsUrl(`api/calls/${encodeURIComponent(id)}/hangup`), {
      method: "POST",
      headers: this.headers(false),
      keepalive: true, // Stop on a page being closed still hangs up
    }).catch(() => {});
  }

  gone(reason) {
    if (this.ended) return;
    this.ended = true;
    if (!this.closedByUs) this.onClose({ code: 0, reason });
  }

  /** Hang up and release everything; onClose is not called afterwards. */
  close() {
    this.closedByUs = true;
    this.ended = true;
    clearInterval(this.timer);
    this.hangup();
    if (this.dc) this.dc.onclose = null;
    if (this.pc) {
      this.pc.onconnectionstatechange = null;
      this.pc.close();
    }
    if (this.mic) for (const track of this.mic.getTracks()) track.stop();
    for (const meter of Object.values(this.meters)) meter.close();
    if (this.player) {
      this.player.srcObject = null;
      this.player.remove();
    }
    this.context.close().catch(() => {});
  }
}
