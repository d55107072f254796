// The page's side of the realtime protocol: the WebSocket to the middle tier and the
// session.update it sends. No DOM, no audio: events in, events out.
//
// The middle tier speaks the GA dialect to the page whatever the upstream speaks; preview names
// are mapped anyway, by the table the server sends in api/config (`preview_names`, from the
// protocol package), so that a preview-speaking peer still renders.

/** ws(s):// URL of the relay, relative to the page, with the optional endpoint/deployment. */
export function realtimeUrl({ endpoint, deployment } = {}, base = location.href) {
  const url = new URL("realtime", base);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (endpoint) url.searchParams.set("endpoint", endpoint);
  if (deployment) url.searchParams.set("deployment", deployment);
  return url.toString();
}

/**
 * The GA session.update for the page's settings, limited to the fields the server lets the page
 * set (`settable`; null means all). The audio formats and modalities are always sent: the page
 * only ever speaks PCM16 at 24 kHz.
 */
export function buildSessionUpdate(settings, settable) {
  const can = (field) => !settable || settable.includes(field);
  const session = { type: "realtime", output_modalities: ["audio"] };
  if (can("instructions")) session.instructions = settings.instructions;
  if (can("temperature") && Number.isFinite(settings.temperature)) {
    session.temperature = settings.temperature;
  }
  const input = { format: { type: "audio/pcm", rate: 24000 } };
  if (can("transcription")) input.transcription = { model: "whisper-1" };
  if (can("turn_detection")) {
    const td = settings.turnDetection;
    input.turn_detection =
      td.type === "semantic_vad"
        ? { type: "semantic_vad", eagerness: td.eagerness }
        : {
            type: "server_vad",
            threshold: td.threshold,
            prefix_padding_ms: td.prefixPaddingMs,
            silence_duration_ms: td.silenceDurationMs,
            create_response: true,
            interrupt_response: true,
          };
  }
  const output = { format: { type: "audio/pcm", rate: 24000 } };
  if (can("voice") && settings.voice) output.voice = settings.voice;
  session.audio = { input, output };
  return { type: "session.update", session };
}

/** What window.__rt.events keeps of a received event: its type and ids, never audio. */
export function eventSummary(event) {
  const out = { type: event.type };
  const itemId = event.item_id ?? event.item?.id;
  const responseId = event.response_id ?? event.response?.id;
  const callId = event.call_id ?? event.item?.call_id;
  if (itemId) out.item_id = itemId;
  if (responseId) out.response_id = responseId;
  if (callId) out.call_id = callId;
  if (event.item?.type) out.item_type = event.item.type;
  if (event.type === "error" && event.error) {
    out.error_type = event.error.type;
    out.code = event.error.code;
  }
  if (event.type === "conversation.item.truncated") out.audio_end_ms = event.audio_end_ms;
  return out;
}

/** What window.__rt.sent keeps of a sent event: its type (and the truncation point). */
export function sentSummary(event) {
  const out = { type: event.type };
  if (event.type === "conversation.item.truncate") {
    out.item_id = event.item_id;
    out.content_index = event.content_index;
    out.audio_end_ms = event.audio_end_ms;
  }
  if (event.type === "conversation.item.create" && event.item) out.item_type = event.item.type;
  return out;
}

/** HTTP token characters: what the middle tier's access token (and a subprotocol) may hold. */
export const TOKEN_PATTERN = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;

/**
 * The WebSocket subprotocols that carry the middle tier's access token: a browser cannot set
 * headers on a WebSocket, so the token travels as `aoai-realtime.token.TOKEN` beside
 * `aoai-realtime`, the one the server selects (the token is never echoed back). Not in the URL,
 * where logs and history would keep it.
 */
export function tokenProtocols(token) {
  return token ? ["aoai-realtime", `aoai-realtime.token.${token}`] : [];
}

/**
 * One WebSocket to the middle tier.
 *   onEvent(event)           every parsed server event (preview names mapped to GA)
 *   onClose({code, reason})  once, when the socket closes and close() was not called
 *   onSend(event)            every event actually sent
 *   protocols                WebSocket subprotocols to offer (tokenProtocols(token))
 */
export class RealtimeConnection {
  constructor(url, { onEvent, onClose, onSend, previewNames, protocols }) {
    this.url = url;
    this.protocols = protocols || [];
    this.previewNames = previewNames || {};
    this.onEvent = onEvent;
    this.onClose = onClose;
    this.onSend = onSend || (() => {});
    this.ws = null;
    this.closedByUs = false;
  }

  /** Resolves when the socket is open; rejects if it closes first or takes over `timeoutMs`. */
  open(timeoutMs = 15000) {
    return new Promise((resolve, reject) => {
      let settled = false;
      const settle = (fn, arg) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        fn(arg);
      };
      const timer = setTimeout(() => {
        settle(reject, Object.assign(new Error("timeout"), { code: "connect_timeout" }));
        this.close();
      }, timeoutMs);
      let ws;
      try {
        ws = this.ws = this.protocols.length
          ? new WebSocket(this.url, this.protocols)
          : new WebSocket(this.url);
      } catch (err) {
        settle(reject, Object.assign(new Error(err.message), { code: "bad_url" }));
        return;
      }
      ws.onopen = () => settle(resolve);
      ws.onerror = () => {
        // The close event that follows carries the code; nothing useful to add here.
      };
      ws.onclose = (event) => {
        const info = { code: event.code, reason: event.reason, wasClean: event.wasClean };
        if (!settled) {
          const err = new Error(`closed before open (WebSocket code ${info.code})`);
          settle(reject, Object.assign(err, { code: "connect_failed", closeCode: info.code }));
          return;
        }
        if (!this.closedByUs) this.onClose(info);
      };
      ws.onmessage = (event) => this.receive(event.data);
    });
  }

  receive(data) {
    if (typeof data !== "string") return;
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      return;
    }
    if (!event || typeof event.type !== "string") return;
    const mapped = Object.hasOwn(this.previewNames, event.type) && this.previewNames[event.type];
    if (mapped) event.type = mapped;
    this.onEvent(event);
  }

  get isOpen() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  /** Bytes queued in the socket and not yet sent (for back-pressure on microphone frames). */
  get buffered() {
    return this.ws ? this.ws.bufferedAmount : 0;
  }

  /** Send one client event; returns false (and sends nothing) when the socket is not open. */
  send(event) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(event));
    this.onSend(event);
    return true;
  }

  /** Close without waiting for the peer's answer; onClose is not called afterwards. */
  close(code = 1000, reason = "") {
    this.closedByUs = true;
    const ws = this.ws;
    if (!ws) return;
    ws.onmessage = null;
    if (ws.readyState === WebSocket.CONNECTING) {
      // Closing a socket that is still connecting makes Chromium log an error: close it as soon
      // as it opens instead (the open() promise has already been settled by the caller).
      ws.onopen = () => ws.close(code, reason);
    } else if (ws.readyState === WebSocket.OPEN) {
      ws.close(code, reason);
    }
  }
}
