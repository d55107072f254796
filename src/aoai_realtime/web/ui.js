// DOM pieces of the page: transcript, banner, status, level meter, stats, event log.
// Text from the network is only ever set with textContent (never parsed as HTML).

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function prettyJson(text) {
  if (typeof text !== "string") text = JSON.stringify(text);
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

function clip(text, max = 4000) {
  return text.length > max ? `${text.slice(0, max)}… (${text.length - max} more characters)` : text;
}

export function formatMs(ms) {
  if (!Number.isFinite(ms)) return "–";
  return ms >= 10000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`;
}

export function median(values) {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** The conversation: markers, user and assistant messages, tool calls, notices. */
export class Transcript {
  constructor(list) {
    this.list = list;
    this.messages = new Map(); // item_id -> {node, text, body}
    this.calls = new Map(); // call_id -> {node, args, result}
    this.lastNotice = null;
  }

  clear() {
    this.list.replaceChildren();
    this.messages.clear();
    this.calls.clear();
    this.lastNotice = null;
  }

  append(node) {
    const stick = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 48;
    this.list.append(node);
    this.lastNotice = null;
    if (stick) this.list.scrollTop = this.list.scrollHeight;
    return node;
  }

  follow() {
    const gap = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight;
    if (gap < 160) this.list.scrollTop = this.list.scrollHeight;
  }

  marker(text) {
    this.append(el("li", "marker", text));
  }

  /** A notice in the log (non-fatal errors, status changes); repeats are counted, not appended. */
  notice(text, kind = "warning") {
    const last = this.lastNotice;
    if (last && last.text === text && this.list.lastElementChild === last.node) {
      last.count += 1;
      last.counter.textContent = ` (×${last.count})`;
      return;
    }
    const node = el("li", `notice ${kind}`);
    node.append(el("span", "notice-label", kind === "warning" ? "Notice: " : "Info: "));
    node.append(document.createTextNode(text));
    const counter = el("span", "notice-count");
    node.append(counter);
    this.append(node);
    this.lastNotice = { text, node, counter, count: 1 };
  }

  message(itemId, role, { pending = false } = {}) {
    let msg = itemId ? this.messages.get(itemId) : null;
    if (msg) return msg;
    const node = el("li", `msg ${role}`);
    node.append(el("span", "who", role === "user" ? "You" : "Assistant"));
    const body = el("p", "text");
    node.append(body);
    const meta = el("span", "meta");
    node.append(meta);
    msg = { node, body, meta, text: "", pending, role };
    if (pending) {
      node.classList.add("pending");
      body.textContent = role === "user" ? "…" : "";
    }
    if (itemId) {
      node.dataset.itemId = itemId;
      this.messages.set(itemId, msg);
    }
    this.append(node);
    return msg;
  }

  /** Bind a message shown before its id was known (a typed message) to the server's item id. */
  adopt(itemId, msg) {
    msg.node.dataset.itemId = itemId;
    this.messages.set(itemId, msg);
  }

  setText(msg, text, { final = false } = {}) {
    msg.text = text;
    if (final) {
      msg.pending = false;
      msg.node.classList.remove("pending");
    }
    msg.body.textContent = text || (msg.pending ? "…" : "");
    this.follow();
  }

  userPending(itemId) {
    return this.message(itemId, "user", { pending: true });
  }

  userDelta(itemId, delta) {
    const msg = this.message(itemId, "user", { pending: true });
    this.setText(msg, msg.text + delta);
  }

  userText(itemId, text) {
    const msg = this.message(itemId, "user");
    this.setText(msg, text, { final: true });
  }

  userFailed(itemId, reason) {
    const msg = this.message(itemId, "user");
    msg.node.classList.add("failed");
    this.setText(msg, msg.text || "(transcription failed)", { final: true });
    if (reason) msg.meta.textContent = reason;
  }

  assistant(itemId) {
    return this.message(itemId, "assistant");
  }

  assistantDelta(itemId, delta) {
    const msg = this.assistant(itemId);
    this.setText(msg, msg.text + delta);
  }

  assistantDone(itemId, text) {
    const msg = this.assistant(itemId);
    if (typeof text === "string" && text) this.setText(msg, text);
  }

  /** A small label on an assistant message (latency, "interrupted"). */
  tag(itemId, text, className) {
    const msg = this.messages.get(itemId);
    if (!msg) return;
    let badge = className ? msg.meta.querySelector(`.${className}`) : null;
    if (!badge) {
      badge = el("span", `badge ${className || ""}`.trim());
      msg.meta.append(badge);
    }
    badge.textContent = text;
  }

  call(callId, name) {
    let call = this.calls.get(callId);
    if (call) {
      if (name && !call.name) {
        call.name = name;
        call.nameNode.textContent = name;
      }
      return call;
    }
    const node = el("li", "msg tool running");
    node.append(el("span", "who", "Tool"));
    const body = el("div", "tool-body");
    const nameNode = el("code", "tool-name", name || "function");
    const args = el("pre", "tool-args", "");
    const result = el("div", "tool-result", "Running…");
    body.append(nameNode, args, result);
    node.append(body);
    node.dataset.callId = callId;
    call = { node, nameNode, args, result, name, argsText: "" };
    this.calls.set(callId, call);
    this.append(node);
    return call;
  }

  callArgsDelta(callId, name, delta) {
    const call = this.call(callId, name);
    call.argsText += delta;
    call.args.textContent = call.argsText;
    this.follow();
  }

  callArgs(callId, name, args) {
    const call = this.call(callId, name);
    if (typeof args === "string") call.argsText = args;
    call.args.textContent = clip(prettyJson(call.argsText || "{}"));
    this.follow();
  }

  /** A call that ends without a result to show (hidden by the server, or interrupted). */
  callDone(callId, text, className) {
    const call = this.calls.get(callId);
    if (!call || !call.node.classList.contains("running")) return;
    call.node.classList.remove("running");
    if (className) call.node.classList.add(className);
    call.result.replaceChildren(el("span", "tool-note", text));
    this.follow();
  }

  /** Every call still running ends with ``text`` (its session is gone). */
  endRunningCalls(text, className) {
    for (const callId of this.calls.keys()) this.callDone(callId, text, className);
  }

  callResult(callId, output) {
    const call = this.call(callId);
    call.node.classList.remove("running");
    call.result.replaceChildren(el("span", "tool-arrow", "Result: "));
    call.result.append(el("pre", "tool-output", clip(prettyJson(output ?? ""))));
    this.follow();
  }
}

/** The single error banner: showing a new error replaces the old one, never adds another. */
export class Banner {
  constructor(node) {
    this.node = node;
    this.text = node.querySelector(".banner-text");
    this.onDismiss = null;
    node.querySelector(".banner-close").addEventListener("click", () => {
      this.clear();
      if (this.onDismiss) this.onDismiss();
    });
  }

  show(message, kind = "error") {
    this.node.classList.toggle("warning", kind === "warning");
    this.text.textContent = message;
    this.node.hidden = false;
  }

  clear() {
    this.node.hidden = true;
    this.text.textContent = "";
  }

  get visible() {
    return !this.node.hidden;
  }
}

const STATE_TEXT = {
  idle: "Idle",
  connecting: "Connecting…",
  connected: "Connected",
  error: "Error",
};

/** The connection state shown in the header (an aria-live status region). */
export class Status {
  constructor(node) {
    this.node = node;
    this.label = node.querySelector(".status-text");
    this.detail = node.querySelector(".status-detail");
  }

  /** The detail is its own span: narrow screens may shorten it (it stays for screen readers). */
  set(state, detail) {
    this.node.dataset.state = state;
    this.label.textContent = STATE_TEXT[state];
    this.detail.textContent = detail ? ` · ${detail}` : "";
  }
}

/** The microphone level bar (role="meter"), fed RMS values from the capture worklet. */
export class Meter {
  constructor(node) {
    this.node = node;
    this.lastValue = -1;
  }

  /** rms: linear 0..1. Shown on a -60..0 dBFS scale. */
  set(rms) {
    const db = rms > 0 ? 20 * Math.log10(rms) : -100;
    const value = Math.max(0, Math.min(100, Math.round(((db + 60) / 60) * 100)));
    this.node.style.setProperty("--level", `${value}%`);
    if (value !== this.lastValue) {
      this.lastValue = value;
      this.node.setAttribute("aria-valuenow", String(value));
      this.node.setAttribute(
        "aria-valuetext",
        value === 0 ? "silent" : `${Math.round(Math.max(db, -60))} dBFS`,
      );
    }
  }
}

/** Latency per turn (last, median, count: spoken and typed) and token usage. */
export class Stats {
  constructor(root) {
    const stat = (name) => root.querySelector(`[data-stat=${name}]`);
    this.last = stat("last");
    this.lastNote = stat("last-note");
    this.median = stat("median");
    this.medianNote = stat("median-note");
    this.turns = stat("turns");
    this.turnsNote = stat("turns-note");
    this.tokens = stat("tokens");
  }

  /** turns: [{ms, via: "voice" | "typed", until: "audio" | "text"}], oldest first. */
  render(turns, tokens) {
    const last = turns[turns.length - 1];
    const values = turns.map((t) => t.ms);
    this.last.textContent = last ? formatMs(last.ms) : "–";
    this.lastNote.textContent = last
      ? `${last.via === "typed" ? "typed" : "spoken"}, to ${last.until}`
      : "";
    this.median.textContent = turns.length ? formatMs(median(values)) : "–";
    this.medianNote.textContent = turns.length ? "all turns" : "";
    const typed = turns.filter((t) => t.via === "typed").length;
    this.turns.textContent = String(turns.length);
    this.turnsNote.textContent = turns.length ? `${turns.length - typed} spoken, ${typed} typed` : "";
    this.tokens.textContent = tokens ? tokens.toLocaleString() : "–";
  }
}

/** A short list of recent protocol events (deltas are left out: they would drown the rest). */
export class EventLog {
  constructor(list, max = 200) {
    this.list = list;
    this.max = max;
  }

  add(direction, summary) {
    if (/\.delta$|^input_audio_buffer\.append$/.test(summary.type)) return;
    const ids = [summary.item_id, summary.response_id, summary.call_id].filter(Boolean);
    const extra = summary.audio_end_ms !== undefined ? ` audio_end_ms=${summary.audio_end_ms}` : "";
    const code = summary.code ? ` ${summary.code}` : "";
    const line = el("li", direction, `${direction === "in" ? "←" : "→"} ${summary.type}${code}${ids.length ? ` ${ids.join(" ")}` : ""}${extra}`);
    this.list.append(line);
    while (this.list.childElementCount > this.max) this.list.firstElementChild.remove();
  }

  clear() {
    this.list.replaceChildren();
  }
}
