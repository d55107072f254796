// Entry point of the page: settings, the session lifecycle, and the routing of server events to
// the transcript and the speakers.
//
// One session at a time. Every session is an object; callbacks from a socket, a worklet or a
// timer check that their session is still `current` before touching anything, so a stopped or
// failed session can never produce a second banner or a stray message.
//
// For the browser tests, window.__rt exposes:
//   state     "idle" | "connecting" | "connected" | "error" (error only while a failed session is
//             torn down: the page then rests in "idle" with the banner shown)
//   states    every state taken, in order
//   events    every received event: {type, item_id?, response_id?, call_id?, ...} (no audio)
//   sent      every sent event: {type}, truncate with {item_id, content_index, audio_end_ms}
//   playedMs  {item_id: ms of that assistant item actually played}, integer (floor)
//   lastError {type, code, message} of the last fatal error, null after Start
//   notices   every non-fatal notice of the middle tier: {code, message} (e.g. session_resumed)
//   turns     latency of each turn in ms, spoken and typed, oldest first: from the end of speech
//             (speech_stopped) or from sending a typed message (its conversation.item.create) to
//             the first audio of the reply heard; to the reply's first text when it has no audio.
//             Only responses created after that moment count (a tool call's reply comes later)
//   turnLog   the same turns as {ms, via: "voice" | "typed", until: "audio" | "text"}
//   connectionOpen  whether the connection fields are shown (they fold away on Start)
//   auth      "none" (no token needed), "needed" (api/config answered 401: the token field is
//             shown), "refused" (the token given was refused), "token" (a token is in use)
//   transport "webrtc" | "websocket": the transport of the current (or last) session
//   callId    the middle tier's id of the WebRTC call (null over the WebSocket)
//   remotePeak  the loudest RMS (0..1) heard on the WebRTC remote track, by a WebAudio analyser
//   heardMs   {item_id: ms from the first to the last audible moment of that item} (WebRTC)

import { AudioIO, AudioSetupError, RATE, base64ToBytes, bytesToBase64 } from "./audio.js";
import {
  RealtimeConnection,
  TOKEN_PATTERN,
  buildSessionUpdate,
  eventSummary,
  realtimeUrl,
  sentSummary,
  tokenProtocols,
} from "./realtime.js";
import { Banner, EventLog, Meter, Stats, Status, Transcript, formatMs } from "./ui.js";
import { WebRtcConnection } from "./webrtc.js";

const DEFAULT_INSTRUCTIONS =
  "You are a helpful, friendly voice assistant. Keep your answers short and conversational.";

const PRESETS = {
  "reduce-interruptions":
    "You are a patient, helpful voice assistant. Always let the user finish speaking before you " +
    "answer. People pause to think in the middle of a sentence: treat short pauses, fillers such " +
    "as \"um\" or \"uh\", and unfinished sentences as the user still talking, and keep waiting. " +
    "Never interrupt or talk over the user. If you are not sure the user has finished, wait, or " +
    "briefly ask whether they would like to go on. Keep your own replies short so the user can " +
    "speak again soon.",
  "mock-interview":
    "You are a professional interviewer running a mock job interview. Start by greeting the " +
    "candidate and asking which role they are preparing for. Then ask one question at a time " +
    "and wait for the complete answer before saying anything. Ask a short follow-up when an " +
    "answer is vague, then move on. Mix behavioural and role-specific questions. Do not answer " +
    "the questions yourself and do not give feedback during the interview; after about five " +
    "questions, or when the candidate asks, summarise their strengths and what to improve.",
};

const DEFAULT_VOICES = ["alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"];
const ALL_SETTABLE = ["voice", "instructions", "temperature", "turn_detection", "transcription"];
const CUSTOM = "__custom__";
const TIMEOUT_MS = 15000; // to open the socket, and then to receive session.created
const MAX_BUFFERED = 256 * 1024; // drop microphone frames rather than queue seconds of audio
const SETTINGS_DEBOUNCE_MS = 400;
const TOKEN_KEY = "aoai-realtime.token"; // sessionStorage: this tab only, gone when it closes

const $ = (id) => document.getElementById(id);
const ui = {
  tokenForm: $("token-form"),
  token: $("token"),
  tokenError: $("token-error"),
  connectForm: $("connect-form"),
  endpoint: $("endpoint"),
  customEndpoint: $("custom-endpoint"),
  deployment: $("deployment"),
  transport: $("transport"),
  endpointHint: $("endpoint-hint"),
  fieldError: $("field-error"),
  connectionSummary: $("connection-summary"),
  connectionTarget: $("connection-target"),
  connectionToggle: $("connection-toggle"),
  connectionBody: $("connection-body"),
  start: $("start"),
  stop: $("stop"),
  instructions: $("instructions"),
  voice: $("voice"),
  temperature: $("temperature"),
  temperatureValue: $("temperature-value"),
  vadType: $("vad-type"),
  vadThreshold: $("vad-threshold"),
  vadThresholdValue: $("vad-threshold-value"),
  vadSilence: $("vad-silence"),
  vadPrefix: $("vad-prefix"),
  vadEagerness: $("vad-eagerness"),
  serverVadFields: $("server-vad-fields"),
  semanticVadFields: $("semantic-vad-fields"),
  settableHint: $("settable-hint"),
  tools: $("tools"),
  compose: $("compose"),
  message: $("message"),
  send: $("send"),
  interrupt: $("interrupt"),
  clear: $("clear"),
  speaking: $("speaking"),
  version: $("version"),
  upstream: $("upstream"),
};

const transcript = new Transcript($("transcript"));
const banner = new Banner($("banner"));
const status = new Status($("status"));
const meter = new Meter($("meter"));
const stats = new Stats($("stats"));
const eventLog = new EventLog($("event-log"));

const rt = {
  state: "idle",
  states: ["idle"],
  events: [],
  sent: [],
  playedMs: {},
  lastError: null,
  notices: [],
  turns: [],
  turnLog: [],
  connectionOpen: true,
  auth: "none",
  transport: null,
  callId: null,
  remotePeak: 0,
  heardMs: {},
};
window.__rt = rt;

let config = null;
let settable = ALL_SETTABLE;
let toolResultsVisible = true; // false: the server runs tools but keeps their results to itself
let allowCustom = false;
let configLoaded = false;
let current = null; // the live Session, or null
let tokens = 0;
let connectionFoldable = false; // true from the first Start: the fields may fold to one line
const handlerErrors = new Set();
let accessToken = readStoredToken(); // the middle tier's own token (never an Azure key), or ""

/** Everything that belongs to one Start..Stop. */
class Session {
  constructor() {
    this.conn = null;
    this.audio = null;
    this.ready = false; // session.created seen and session.update sent
    this.timer = null;
    this.settingsTimer = null;
    this.items = new Map(); // assistant audio items: id -> {id, responseId, done, ended, interrupted}
    this.interruptedResponses = new Set();
    this.carry = new Map(); // item id -> odd trailing byte of its last delta
    this.activeResponse = null;
    this.pendingResponseCreate = false;
    this.cancelSent = false; // a response.cancel may race the response's natural end
    this.pendingTurn = null; // a turn whose latency runs: see startTurn
    this.pendingTyped = []; // typed messages shown before the server echoed them
    this.assistantSpoke = false;
    this.voiceSent = null;
    this.rtc = false; // the WebRTC transport: audio on tracks, the server truncates
    this.playing = null; // WebRTC: the response whose audio the server is playing
    this.responseItems = new Map(); // WebRTC: response id -> its assistant item id
    this.heard = new Map(); // WebRTC: item id -> {first, last} audible (performance.now())
    this.heardAt = null; // WebRTC: when the answer last became audible
  }
}

// ---------------------------------------------------------------------------------------------
// State and controls

function setState(state, detail) {
  rt.state = state;
  rt.states.push(state);
  status.set(state, detail);
  updateControls();
}

function updateControls() {
  const state = rt.state;
  const focused = document.activeElement;
  document.body.dataset.state = state;
  const busy = state === "connecting" || state === "connected";
  ui.start.disabled = busy || !configLoaded;
  ui.stop.disabled = !busy;
  // Start and Stop act as one toggle for the keyboard (narrow screens show only the one that
  // applies): the focus goes from the one just used to the other.
  if (focused === ui.start && ui.start.disabled && !ui.stop.disabled) ui.stop.focus();
  else if (focused === ui.stop && ui.stop.disabled && !ui.start.disabled) ui.start.focus();
  ui.endpoint.disabled = busy;
  ui.transport.disabled = busy || ui.transport.options.length < 2;
  // A field that does not apply to the endpoint chosen is disabled, not left to be ignored.
  const fields = endpointFields();
  ui.customEndpoint.disabled = busy || !fields.customEndpoint;
  ui.deployment.disabled = busy || !fields.deployment;
  const live = state === "connected";
  ui.message.disabled = !live;
  ui.send.disabled = !live;
  ui.interrupt.disabled = !live;
  if (!busy) {
    meter.set(0);
    ui.speaking.hidden = true;
  }
}

/** Which connection fields apply to the endpoint chosen. */
function endpointFields() {
  const choice = ui.endpoint.value;
  return {
    // only "Custom endpoint…" takes a URL
    customEndpoint: allowCustom && choice === CUSTOM,
    // the local engine runs what it runs; other endpoints take a deployment (when the server
    // lets the page choose one: the same rule as custom endpoints)
    deployment: allowCustom && choice !== "local",
  };
}

/** The connection fields: open, or folded to one summary line (from the first Start on). */
function setConnectionOpen(open) {
  const body = ui.connectionBody;
  if (!open && body.contains(document.activeElement)) ui.connectionToggle.focus();
  rt.connectionOpen = open || !connectionFoldable;
  body.hidden = !rt.connectionOpen;
  ui.connectionSummary.hidden = !connectionFoldable;
  ui.connectionToggle.setAttribute("aria-expanded", String(rt.connectionOpen));
  renderConnectionSummary();
}

function renderConnectionSummary() {
  const custom = ui.endpoint.value === CUSTOM;
  const option = ui.endpoint.selectedOptions[0];
  const where = custom ? ui.customEndpoint.value.trim() || "custom endpoint" : option ? option.textContent : "";
  const deployment = endpointFields().deployment ? ui.deployment.value.trim() : "";
  ui.connectionTarget.textContent = deployment ? `${where} · ${deployment}` : where;
  ui.connectionTarget.title = ui.connectionTarget.textContent; // narrow screens cut it short
}

function showFieldError(message, field) {
  setConnectionOpen(true);
  ui.fieldError.textContent = message;
  ui.fieldError.hidden = false;
  if (field) {
    field.setAttribute("aria-invalid", "true");
    field.focus();
  }
}

function hideFieldError() {
  ui.fieldError.hidden = true;
  ui.fieldError.textContent = "";
  ui.customEndpoint.removeAttribute("aria-invalid");
  ui.deployment.removeAttribute("aria-invalid");
}

/** Accept a bare resource URL or a pasted full realtime URL; keep the origin (and deployment). */
function normalizeEndpoint(raw) {
  let text = raw.trim();
  if (/^wss?:\/\//i.test(text)) text = text.replace(/^ws/i, "http");
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) text = `https://${text}`;
  let url;
  try {
    url = new URL(text);
  } catch {
    return { error: "That endpoint is not a valid URL: use https://<resource>.openai.azure.com" };
  }
  if (url.protocol !== "https:") {
    return { error: "Custom endpoints must use https:// (for example https://<resource>.openai.azure.com)" };
  }
  const deployment = url.searchParams.get("deployment") || url.searchParams.get("model") || "";
  return { endpoint: url.origin, deployment };
}

/** Where to connect: {endpoint, deployment} for the socket URL, or {error, field}. */
function readTarget() {
  const choice = ui.endpoint.value;
  let deployment = endpointFields().deployment ? ui.deployment.value.trim() : "";
  if (choice === CUSTOM) {
    const raw = ui.customEndpoint.value;
    if (!raw.trim()) {
      return { error: "Enter a custom endpoint, or pick one from the list.", field: ui.customEndpoint };
    }
    const parsed = normalizeEndpoint(raw);
    if (parsed.error) return { error: parsed.error, field: ui.customEndpoint };
    deployment = deployment || parsed.deployment;
    if (!deployment) {
      return { error: "Enter the deployment name for the custom endpoint.", field: ui.deployment };
    }
    return { endpoint: parsed.endpoint, deployment };
  }
  return { endpoint: choice || undefined, deployment: deployment || undefined };
}

function readSettings() {
  return {
    instructions: ui.instructions.value,
    temperature: Math.round(parseFloat(ui.temperature.value) * 100) / 100,
    voice: ui.voice.value,
    turnDetection: {
      type: ui.vadType.value,
      threshold: Math.round(parseFloat(ui.vadThreshold.value) * 100) / 100,
      silenceDurationMs: clampInt(ui.vadSilence, 500),
      prefixPaddingMs: clampInt(ui.vadPrefix, 300),
      eagerness: ui.vadEagerness.value,
    },
  };
}

function clampInt(input, fallback) {
  const value = Math.round(Number(input.value));
  if (!Number.isFinite(value) || input.value === "") return fallback;
  return Math.min(Number(input.max), Math.max(Number(input.min), value));
}

function renderSettingValues() {
  ui.temperatureValue.textContent = Number(ui.temperature.value).toFixed(2);
  ui.vadThresholdValue.textContent = Number(ui.vadThreshold.value).toFixed(2);
  const semantic = ui.vadType.value === "semantic_vad";
  ui.serverVadFields.hidden = semantic;
  ui.semanticVadFields.hidden = !semantic;
}

// ---------------------------------------------------------------------------------------------
// Configuration from the middle tier

function option(value, label) {
  const node = document.createElement("option");
  node.value = value;
  node.textContent = label;
  return node;
}

function readStoredToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

function storeToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage off (a privacy mode): the token lives until the page is reloaded.
  }
}

function configRequest() {
  const headers = { accept: "application/json" };
  if (accessToken) headers.authorization = `Bearer ${accessToken}`;
  return fetch("api/config", { cache: "no-store", headers });
}

/** The server wants its access token (api/config answered 401): show the field, once. */
function askForToken() {
  const refused = !!accessToken;
  accessToken = "";
  storeToken("");
  rt.auth = refused ? "refused" : "needed";
  configLoaded = false;
  ui.tokenForm.hidden = false;
  ui.tokenError.hidden = !refused;
  ui.tokenError.textContent = refused ? "The server refused that access token: enter it again." : "";
  if (refused) ui.token.setAttribute("aria-invalid", "true");
  else ui.token.removeAttribute("aria-invalid");
  updateControls();
  setConnectionOpen(true);
  ui.token.focus();
}

function submitToken() {
  const token = ui.token.value.trim();
  if (!TOKEN_PATTERN.test(token)) {
    ui.tokenError.textContent = token
      ? "That cannot be this server's token: it holds only letters, digits and !#$%&'*+-.^_`|~."
      : "Enter the access token.";
    ui.tokenError.hidden = false;
    ui.token.setAttribute("aria-invalid", "true");
    ui.token.focus();
    return;
  }
  accessToken = token;
  storeToken(token);
  ui.token.value = "";
  loadConfig();
}

/** After a failed connection: if the token is what the server refused, ask for it again. */
async function recheckToken() {
  try {
    const response = await configRequest();
    if (response.status === 401) askForToken();
  } catch {
    // The server is unreachable: the banner already says so.
  }
}

async function loadConfig() {
  try {
    const response = await configRequest();
    if (response.status === 401) {
      askForToken();
      return;
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    config = await response.json();
    rt.auth = accessToken ? "token" : "none";
    ui.tokenForm.hidden = true;
    ui.tokenError.hidden = true;
  } catch (err) {
    config = null;
    banner.show(
      `Could not load the server configuration (api/config: ${err.message}). ` +
        "Is aoai-realtime serve running? Starting will try the server's default endpoint.",
      "warning",
    );
  }
  applyConfig(config || {});
  configLoaded = true;
  updateControls();
}

function applyConfig(cfg) {
  const endpoints = Array.isArray(cfg.endpoints) ? cfg.endpoints : [];
  allowCustom = cfg.allow_custom_endpoint === true;

  ui.endpoint.replaceChildren();
  for (const ep of endpoints) {
    const detail = [ep.deployment, ep.endpoint && ep.id !== "local" ? ep.endpoint : ""].filter(Boolean);
    const node = option(ep.id, detail.length ? `${ep.label} (${detail.join(", ")})` : ep.label);
    node.dataset.deployment = ep.deployment || "";
    ui.endpoint.append(node);
  }
  if (!endpoints.length) ui.endpoint.append(option("", "Server default"));
  if (allowCustom) ui.endpoint.append(option(CUSTOM, "Custom endpoint…"));
  const upstream = cfg.upstream || {};
  const preferred = upstream.kind === "local" ? "local" : "configured";
  if (endpoints.some((ep) => ep.id === preferred)) ui.endpoint.value = preferred;
  updateEndpointFields();

  const transports = Array.isArray(cfg.transports) ? cfg.transports : ["websocket"];
  for (const node of [...ui.transport.options]) {
    if (!transports.includes(node.value)) node.remove();
  }
  // ?transport=websocket (or webrtc) in the page's URL picks one, where the server offers it
  const wanted = new URLSearchParams(location.search).get("transport");
  const transport = transports.includes(wanted) ? wanted : cfg.default_transport;
  ui.transport.value = transports.includes(transport)
    ? transport
    : ui.transport.options[0]?.value || "websocket";

  const voices = Array.isArray(cfg.voices) && cfg.voices.length ? cfg.voices : DEFAULT_VOICES;
  ui.voice.replaceChildren(...voices.map((v) => option(v, v)));
  ui.voice.value = voices.includes(cfg.default_voice) ? cfg.default_voice : voices[0];

  settable = Array.isArray(cfg.settable) ? cfg.settable : ALL_SETTABLE;
  const controls = {
    instructions: [ui.instructions, ...document.querySelectorAll("[data-preset]")],
    voice: [ui.voice],
    temperature: [ui.temperature],
    turn_detection: [ui.vadType, ui.vadThreshold, ui.vadSilence, ui.vadPrefix, ui.vadEagerness],
  };
  const locked = [];
  for (const [field, nodes] of Object.entries(controls)) {
    const allowed = settable.includes(field);
    for (const node of nodes) node.disabled = !allowed;
    if (!allowed) locked.push(field.replace("_", " "));
  }
  ui.settableHint.hidden = !locked.length;
  ui.settableHint.textContent = locked.length
    ? `Set by the server, not by this page: ${locked.join(", ")}.`
    : "";

  const tools = Array.isArray(cfg.tools) ? cfg.tools : [];
  ui.tools.replaceChildren(
    ...tools.map((tool) => {
      const item = document.createElement("li");
      const name = document.createElement("code");
      name.textContent = tool.name;
      item.append(name, document.createTextNode(tool.description ? ` — ${tool.description}` : ""));
      return item;
    }),
  );
  ui.tools.closest("section").hidden = !tools.length;
  toolResultsVisible = (cfg.tool_results_visible ?? cfg.show_tool_results) !== false;

  ui.version.textContent = cfg.version ? `v${cfg.version}` : "";
  if (upstream.kind) {
    const parts = [upstream.kind === "local" ? "local engine" : "Azure OpenAI"];
    if (upstream.deployment) parts.push(upstream.deployment);
    if (upstream.dialect) parts.push(upstream.dialect === "ga" ? "GA" : "preview");
    ui.upstream.textContent = `Default upstream: ${parts.join(" · ")}`;
  }
}

function updateEndpointFields() {
  const selected = ui.endpoint.selectedOptions[0];
  const custom = ui.endpoint.value === CUSTOM;
  ui.deployment.placeholder = custom
    ? "deployment name"
    : (selected && selected.dataset.deployment) || "server default";
  ui.customEndpoint.required = custom;
  ui.deployment.required = custom;
  let hint;
  if (!allowCustom) {
    hint = "Custom endpoints and deployments are off: the server only allows them when it listens on localhost.";
  } else if (custom) {
    hint = "Any https://<resource>.openai.azure.com with its deployment (allowed because the server listens on this machine only).";
  } else if (ui.endpoint.value === "local") {
    hint = "The local engine needs no endpoint or deployment. Pick “Custom endpoint…” to use your own Azure resource.";
  } else {
    hint = "Leave the deployment empty for the server's own, or pick “Custom endpoint…” to use your own Azure resource.";
  }
  ui.endpointHint.textContent = hint;
  updateControls();
  renderConnectionSummary();
}

// ---------------------------------------------------------------------------------------------
// Session lifecycle

async function start() {
  if (current) return;
  hideFieldError();
  const target = readTarget();
  if (target.error) {
    showFieldError(target.error, target.field);
    return;
  }
  banner.clear();
  rt.lastError = null;
  const s = new Session();
  current = s;
  s.rtc = chosenTransport() === "webrtc";
  rt.transport = s.rtc ? "webrtc" : "websocket";
  rt.callId = null;
  setState("connecting");
  // The fields are set: fold them to one line, so the conversation gets the screen.
  connectionFoldable = true;
  setConnectionOpen(false);
  if (s.rtc) {
    startCall(s, target);
    return;
  }
  // Created synchronously inside the click, so the browser lets the AudioContext run.
  s.audio = new AudioIO({
    onFrame: (pcm) => sendAudio(s, pcm),
    onLevel: (level) => current === s && meter.set(level.rms),
    onPlayback: (msg) => onPlayback(s, msg),
  });
  const url = realtimeUrl(target);
  try {
    await s.audio.open();
    if (current !== s) return;
    s.conn = new RealtimeConnection(url, {
      onEvent: (event) => onEvent(s, event),
      onClose: (info) => onClose(s, info),
      onSend: (event) => record("out", sentSummary(event)),
      previewNames: (config && config.preview_names) || {},
      protocols: tokenProtocols(accessToken),
    });
    await s.conn.open(TIMEOUT_MS);
    if (current !== s) return;
    s.timer = setTimeout(
      () =>
        fail(s, {
          type: "client_error",
          code: "no_session",
          message: `The middle tier accepted the connection but sent no session.created within ${TIMEOUT_MS / 1000} s. Check the server log, then press Start again.`,
        }),
      TIMEOUT_MS,
    );
  } catch (err) {
    if (current === s) fail(s, describeStartError(err, url));
    if (err && err.code === "connect_failed" && rt.auth === "token") recheckToken();
  }
}

/** The transport chosen: WebRTC when the server and the endpoint chosen offer it. */
function chosenTransport() {
  if (ui.transport.value !== "webrtc") return "websocket";
  const ep = config && Array.isArray(config.endpoints)
    ? config.endpoints.find((e) => e.id === ui.endpoint.value)
    : null;
  return !ep || ep.webrtc !== false ? "webrtc" : "websocket";
}

/** Start a WebRTC call: the offer through the middle tier, the session chosen with it. */
async function startCall(s, target) {
  // Created synchronously inside the click (its AudioContext may then run).
  s.conn = new WebRtcConnection(target, {
    onEvent: (event) => onEvent(s, event),
    onClose: (info) => onClose(s, info),
    onSend: (event) => record("out", sentSummary(event)),
    onLevels: (levels) => onLevels(s, levels),
    onHeard: (at) => onHeard(s, at),
    token: accessToken,
  });
  try {
    await s.conn.open(buildSessionUpdate(readSettings(), settable).session, TIMEOUT_MS);
    if (current !== s) return;
    rt.callId = s.conn.callId;
    s.timer = setTimeout(
      () =>
        fail(s, {
          type: "client_error",
          code: "no_session",
          message: `The call started but no session.created arrived within ${TIMEOUT_MS / 1000} s. Check the server log, then press Start again.`,
        }),
      TIMEOUT_MS,
    );
  } catch (err) {
    if (current !== s) return;
    if (err && err.relay) fail(s, err.relay);
    else fail(s, describeStartError(err, new URL("api/calls", location.href).toString()));
    if (err && err.code === "connect_failed" && rt.auth === "token") recheckToken();
  }
}

function describeStartError(err, url) {
  if (err instanceof AudioSetupError) {
    return { type: "client_error", code: err.code, message: err.message };
  }
  const where = url.replace(/\?.*$/, "");
  if (err && (err.code === "connect_failed" || err.code === "connect_timeout")) {
    const how = err.code === "connect_timeout" ? "timed out" : "failed";
    return {
      type: "client_error",
      code: "relay_unreachable",
      message: `Connecting to the middle tier at ${where} ${how}. Check that aoai-realtime serve is running and reachable, then press Start again.`,
    };
  }
  return {
    type: "client_error",
    code: "start_failed",
    message: `Could not start the session: ${(err && err.message) || err}`,
  };
}

/** End a session after a fatal error: one banner, then back to idle (Start works again). */
function fail(s, error) {
  if (current !== s) return;
  rt.lastError = { type: error.type, code: error.code, message: error.message };
  setState("error");
  banner.show(error.message || `The session ended (${error.code || "error"}).`);
  if (s.ready) transcript.marker("<< Session Ended >>");
  teardown(s);
  setState("idle", "last session ended with an error");
  setConnectionOpen(true); // the fix may be there (another endpoint, a deployment)
}

function stop() {
  const s = current;
  if (!s) return;
  if (s.ready) transcript.marker("<< Session Ended >>");
  teardown(s);
  setState("idle");
}

function teardown(s) {
  if (current === s) current = null;
  clearTimeout(s.timer);
  clearTimeout(s.settingsTimer);
  if (s.conn) s.conn.close(1000, "stopped");
  if (s.audio) s.audio.close();
}

function onClose(s, info) {
  if (current !== s) return;
  if (s.rtc) {
    fail(s, {
      type: "connection_closed",
      code: "call_ended",
      message: `The call ended (${info.reason}). Press Start to call again.`,
    });
    return;
  }
  const reason = info.reason ? `: ${info.reason}` : "";
  const hint =
    info.code === 1009
      ? " A message was larger than the socket allows."
      : " Press Start to connect again.";
  fail(s, {
    type: "connection_closed",
    code: "socket_closed",
    message: `The connection to the middle tier closed unexpectedly (WebSocket code ${info.code}${reason}).${hint}`,
  });
}

function record(direction, summary) {
  (direction === "in" ? rt.events : rt.sent).push(summary);
  eventLog.add(direction, summary);
}

function send(s, event) {
  return !!(s.conn && s.conn.send(event));
}

function sendAudio(s, pcm) {
  if (current !== s || !s.ready || !s.conn || !s.conn.isOpen) return;
  if (s.conn.buffered > MAX_BUFFERED) return;
  send(s, { type: "input_audio_buffer.append", audio: bytesToBase64(new Uint8Array(pcm)) });
}

function sendSessionUpdate(s) {
  const settings = readSettings();
  if (s.assistantSpoke && s.voiceSent !== null) {
    // The service refuses a voice change once the assistant has spoken in the conversation.
    if (settings.voice !== s.voiceSent) {
      transcript.notice(`The voice "${settings.voice}" applies from the next session.`, "info");
    }
    settings.voice = null;
  }
  const update = buildSessionUpdate(settings, settable);
  if (update.session.audio.output.voice) s.voiceSent = update.session.audio.output.voice;
  if (s.rtc) {
    // Through the middle tier's policy, not straight to the upstream on the data channel.
    record("out", { type: "session.update" });
    s.conn.updateSession(update.session).catch(() => {});
    return;
  }
  send(s, update);
}

function scheduleSessionUpdate() {
  const s = current;
  if (!s || !s.ready) return;
  clearTimeout(s.settingsTimer);
  s.settingsTimer = setTimeout(() => {
    if (current === s) sendSessionUpdate(s);
  }, SETTINGS_DEBOUNCE_MS);
}

// ---------------------------------------------------------------------------------------------
// Server events

function onEvent(s, event) {
  if (current !== s) return;
  record("in", eventSummary(event));
  try {
    handleEvent(s, event);
  } catch (err) {
    // A bug in a handler must not take the session down; report each kind once.
    if (!handlerErrors.has(event.type)) {
      handlerErrors.add(event.type);
      console.error(`aoai-realtime: could not handle ${event.type}:`, err);
    }
  }
}

function handleEvent(s, event) {
  switch (event.type) {
    case "session.created":
      clearTimeout(s.timer);
      if (!s.rtc) sendSessionUpdate(s); // a call was made with the session already
      s.ready = true;
      setState("connected", connectedDetail());
      transcript.marker("<< Session Started >>");
      break;
    case "input_audio_buffer.speech_started":
      transcript.marker("<< Speech Started >>");
      s.pendingTurn = null;
      if (!s.rtc) interruptPlayback(s); // over WebRTC the server cuts and truncates itself
      break;
    case "input_audio_buffer.speech_stopped":
      startTurn(s, "voice");
      break;
    case "input_audio_buffer.committed":
      if (event.item_id) transcript.userPending(event.item_id);
      break;
    case "conversation.item.added":
    case "conversation.item.done":
    case "response.output_item.added":
    case "response.output_item.done":
      if (event.response_id && event.item?.role === "assistant" && !s.responseItems.has(event.response_id)) {
        s.responseItems.set(event.response_id, event.item.id);
      }
      onItem(s, event.item, event.type.endsWith(".done"));
      break;
    case "conversation.item.input_audio_transcription.delta":
      if (event.delta) transcript.userDelta(event.item_id, event.delta);
      break;
    case "conversation.item.input_audio_transcription.completed":
      transcript.userText(event.item_id, event.transcript || "");
      break;
    case "conversation.item.input_audio_transcription.failed":
      transcript.userFailed(event.item_id, event.error?.message);
      break;
    case "response.created":
      s.activeResponse = event.response?.id || true;
      if (s.pendingTurn && event.response?.id) s.pendingTurn.responses.add(event.response.id);
      break;
    case "response.output_audio.delta":
      onAudioDelta(s, event);
      break;
    case "response.output_audio.done":
      onAudioDone(s, event);
      break;
    case "response.output_audio_transcript.delta":
    case "response.output_text.delta":
      if (event.delta && !isInterrupted(s, event)) {
        transcript.assistantDelta(event.item_id, event.delta);
        turnText(s, event);
      }
      break;
    case "response.output_audio_transcript.done":
      transcript.assistantDone(event.item_id, event.transcript);
      break;
    case "response.output_text.done":
      transcript.assistantDone(event.item_id, event.text);
      break;
    case "response.function_call_arguments.delta":
      if (event.call_id) transcript.callArgsDelta(event.call_id, event.name, event.delta || "");
      break;
    case "response.function_call_arguments.done":
      if (event.call_id) transcript.callArgs(event.call_id, event.name, event.arguments);
      break;
    case "response.done":
      onResponseDone(s, event.response || {});
      break;
    case "output_audio_buffer.started":
      onPlayoutStarted(s, event.response_id);
      break;
    case "output_audio_buffer.stopped":
    case "output_audio_buffer.cleared":
      if (!event.response_id || s.playing === event.response_id) s.playing = null;
      ui.speaking.hidden = true;
      break;
    case "conversation.item.truncated":
      if (s.rtc) rt.playedMs[event.item_id] = event.audio_end_ms; // what the server played
      transcript.tag(event.item_id, `interrupted at ${formatMs(event.audio_end_ms)}`, "interrupted");
      break;
    case "error":
      onError(s, event.error || {});
      break;
    default:
      // session.updated, rate_limits.updated and types this page does not know: nothing to show.
      break;
  }
}

function connectedDetail() {
  const option = ui.endpoint.selectedOptions[0];
  if (ui.endpoint.value === CUSTOM) return "custom endpoint";
  return option && option.value ? option.textContent.replace(/\s*\(.*$/, "") : "";
}

function onError(s, error) {
  if (error.type === "relay_notice") {
    onRelayNotice(s, error);
    return;
  }
  if (error.type === "relay_error") {
    fail(s, {
      type: "relay_error",
      code: error.code,
      message: error.message || `The middle tier ended the session (${error.code}).`,
    });
    return;
  }
  if (error.code === "response_cancel_not_active" && s.cancelSent) {
    // Our cancel crossed the response's own end on the wire: nothing was lost, say nothing.
    s.cancelSent = false;
    return;
  }
  const label = error.code || error.type || "error";
  transcript.notice(`${label}: ${error.message || "the service reported an error"}`);
}

/** A non-fatal notice of the middle tier: shown as information; the session goes on. */
function onRelayNotice(s, notice) {
  rt.notices.push({ code: notice.code, message: notice.message });
  if (notice.code === "session_resumed") {
    // The service ended the session and the middle tier goes on in a new one with the
    // conversation restored. The old session's reply in progress will not go on: what was
    // received plays out and ends (so nothing waits for it), and tool calls that were running
    // will not get a result.
    transcript.marker("<< Session Resumed >>");
    for (const item of s.items.values()) {
      if (!item.done && !item.interrupted) {
        item.done = true;
        s.audio.end(item.id);
      }
    }
    s.activeResponse = null;
    transcript.endRunningCalls("Interrupted: the session ended before the result.", "interrupted");
  }
  transcript.notice(notice.message || `The middle tier says: ${notice.code}.`, "info");
}

function onItem(s, item, done) {
  if (!item) return;
  if (item.type === "message") {
    const content = Array.isArray(item.content) ? item.content : [];
    if (item.role === "user") {
      const text = content.find((part) => part.type === "input_text");
      const audio = content.find((part) => part.type === "input_audio");
      if (text) {
        if (!transcript.messages.has(item.id)) {
          const i = s.pendingTyped.findIndex((p) => p.text === text.text);
          if (i >= 0) {
            transcript.adopt(item.id, s.pendingTyped[i].msg);
            s.pendingTyped.splice(i, 1);
            return;
          }
        }
        transcript.userText(item.id, text.text);
      } else if (audio) {
        if (audio.transcript) transcript.userText(item.id, audio.transcript);
        else transcript.userPending(item.id);
      }
    } else if (item.role === "assistant") {
      transcript.assistant(item.id);
      if (done) {
        const part = content.find((p) => p.transcript || p.text);
        if (part) transcript.assistantDone(item.id, part.transcript || part.text);
      }
    }
  } else if (item.type === "function_call") {
    transcript.call(item.call_id, item.name);
    if (done && typeof item.arguments === "string") {
      transcript.callArgs(item.call_id, item.name, item.arguments);
    }
  } else if (item.type === "function_call_output") {
    transcript.callResult(item.call_id, item.output);
  }
}

function onResponseDone(s, response) {
  s.activeResponse = null;
  turnResponseDone(s, response);
  const output = Array.isArray(response.output) ? response.output : [];
  if (response.status_details?.reason === "session_ended") {
    // Made up by the middle tier: the service ended the session during this response.
    for (const item of output) {
      if (item && item.id) transcript.tag(item.id, "cut short: the session ended", "interrupted");
    }
  } else if (!toolResultsVisible) {
    // The server ran its tools but will not send their results: the call is done all the same.
    for (const item of output) {
      if (item && item.type === "function_call" && item.call_id) {
        transcript.callDone(item.call_id, "Done (result hidden by the server).");
      }
    }
  }
  if (response.status_details?.reason === "client_cancelled") s.cancelSent = false;
  const usage = response.usage;
  if (usage && Number.isFinite(usage.total_tokens)) {
    tokens += usage.total_tokens;
    stats.render(rt.turnLog, tokens);
  }
  const details = response.status_details || {};
  if (response.status === "failed") {
    const why = details.error?.message || details.error?.code || details.reason || "no reason given";
    transcript.notice(`The response failed: ${why}`);
  } else if (response.status === "incomplete") {
    transcript.notice(`The response stopped early (${details.reason || "incomplete"}).`, "info");
  }
  if (s.pendingResponseCreate) {
    s.pendingResponseCreate = false;
    send(s, { type: "response.create" });
  }
}

// ---------------------------------------------------------------------------------------------
// Assistant audio, barge-in and latency

function isInterrupted(s, event) {
  const item = s.items.get(event.item_id);
  return (item && item.interrupted) || s.interruptedResponses.has(event.response_id);
}

function onAudioDelta(s, event) {
  const id = event.item_id;
  if (!id || !event.delta || isInterrupted(s, event)) return;
  let item = s.items.get(id);
  if (!item) {
    item = { id, responseId: event.response_id, done: false, ended: false, interrupted: false };
    s.items.set(id, item);
    transcript.assistant(id);
  }
  let bytes = base64ToBytes(event.delta);
  const carry = s.carry.get(id);
  if (carry !== undefined) {
    const joined = new Uint8Array(bytes.length + 1);
    joined[0] = carry;
    joined.set(bytes, 1);
    bytes = joined;
    s.carry.delete(id);
  }
  if (bytes.length % 2) {
    s.carry.set(id, bytes[bytes.length - 1]);
    bytes = bytes.slice(0, bytes.length - 1);
  }
  if (!bytes.length) return;
  s.assistantSpoke = true;
  if (s.pendingTurn && s.pendingTurn.responses.has(event.response_id)) s.pendingTurn.audio = true;
  s.audio.enqueue(id, bytes.buffer);
}

function onAudioDone(s, event) {
  const item = s.items.get(event.item_id);
  if (!item || item.interrupted) return;
  item.done = true;
  s.audio.end(item.id);
}

/** The assistant item the user is hearing (or about to hear): received, not finished playing. */
function playingItem(s) {
  for (const item of s.items.values()) {
    if (!item.ended && !item.interrupted) return item;
  }
  return null;
}

function toMs(samples) {
  return Math.floor(samples / (RATE / 1000));
}

/**
 * Stop the assistant's audio at once and truncate its item at exactly what was played.
 * Returns true if there was audio to stop.
 */
async function interruptPlayback(s) {
  const item = playingItem(s);
  if (!item) return false;
  // Mark first, so audio still arriving for this response is dropped instead of played.
  s.interruptedResponses.add(item.responseId);
  for (const other of s.items.values()) {
    if (other.responseId === item.responseId && !other.ended) other.interrupted = true;
  }
  item.interrupted = true;
  const result = await s.audio.flush();
  if (current !== s) return true;
  ui.speaking.hidden = true;
  if (item.ended) return true; // it finished playing before the flush took effect
  const ms = result ? toMs(result.played[item.id] || 0) : rt.playedMs[item.id] || 0;
  rt.playedMs[item.id] = ms;
  send(s, { type: "conversation.item.truncate", item_id: item.id, content_index: 0, audio_end_ms: ms });
  transcript.tag(item.id, `interrupted at ${formatMs(ms)}`, "interrupted");
  return true;
}

/** The Interrupt button, Esc, and a typed message while the assistant talks. */
async function interruptAssistant(s) {
  if (s.rtc) return interruptCall(s);
  const cancel = !!s.activeResponse;
  await interruptPlayback(s);
  if (cancel && current === s && s.activeResponse) {
    s.cancelSent = true;
    send(s, { type: "response.cancel" });
    return true;
  }
  return false;
}

/**
 * WebRTC: stop the assistant. The server knows what it played: output_audio_buffer.clear cuts
 * the playout, cancels the response still generating and truncates the item there. Returns
 * true when a response.done (cancelled) will follow.
 */
function interruptCall(s) {
  const generating = !!s.activeResponse;
  if (s.playing) {
    if (generating) s.cancelSent = true;
    send(s, { type: "output_audio_buffer.clear" });
    ui.speaking.hidden = true;
    return generating;
  }
  if (generating) {
    s.cancelSent = true;
    send(s, { type: "response.cancel" });
    return true;
  }
  return false;
}

/** WebRTC: the server started playing a response's audio on the call's track. */
function onPlayoutStarted(s, responseId) {
  s.playing = responseId || null;
  s.assistantSpoke = true;
  ui.speaking.hidden = false;
  // Heard already (the audio can outrun the event on the data channel)?
  if (s.heardAt !== null && s.conn && s.conn.loud) onHeard(s, s.heardAt);
}

/** WebRTC: the answer became audible on the remote track (the analyser says so). */
function onHeard(s, at) {
  if (current !== s) return;
  s.heardAt = at;
  const rid = s.playing;
  if (!rid) return;
  const turn = s.pendingTurn;
  if (turn && turn.responses.has(rid)) {
    turn.audio = true;
    endTurn(s, at, "audio", s.responseItems.get(rid) || null);
  }
}

/** WebRTC: the levels of the microphone and of the answer, every 20 ms. */
function onLevels(s, levels) {
  if (current !== s) return;
  meter.set(levels.mic);
  if (levels.remote > rt.remotePeak) rt.remotePeak = levels.remote;
  const itemId = s.playing && s.responseItems.get(s.playing);
  if (levels.loud && itemId) {
    const now = performance.now();
    const heard = s.heard.get(itemId) || { first: now, last: now };
    heard.last = now;
    s.heard.set(itemId, heard);
    rt.heardMs[itemId] = Math.round(heard.last - heard.first);
  }
}

function onPlayback(s, msg) {
  if (current !== s) return;
  switch (msg.type) {
    case "started": {
      const item = s.items.get(msg.itemId);
      if (!item || item.interrupted) return;
      ui.speaking.hidden = false;
      if (s.pendingTurn && s.pendingTurn.responses.has(item.responseId)) {
        endTurn(s, s.audio.heardAt(msg.time), "audio", item.id);
      }
      break;
    }
    case "progress":
    case "flushed":
      for (const [id, samples] of Object.entries(msg.played || {})) rt.playedMs[id] = toMs(samples);
      if (msg.type === "flushed") ui.speaking.hidden = true;
      break;
    case "ended": {
      rt.playedMs[msg.itemId] = toMs(msg.played);
      const item = s.items.get(msg.itemId);
      if (item) item.ended = true;
      break;
    }
    case "playing":
      ui.speaking.hidden = false;
      break;
    case "drained":
      ui.speaking.hidden = true;
      break;
    default:
      break;
  }
}

// ---------------------------------------------------------------------------------------------
// Turn latency, spoken and typed

/**
 * A turn starts: at the end of speech (via "voice") or when a typed message is sent ("typed").
 * It ends when the first audio of a response created after that is heard, or, for a response
 * without audio, at its first text; a response with neither (a tool call) leaves it running.
 */
function startTurn(s, via) {
  s.pendingTurn = { t: performance.now(), via, responses: new Set(), audio: false, text: null };
}

function turnText(s, event) {
  const turn = s.pendingTurn;
  if (turn && !turn.text && turn.responses.has(event.response_id)) {
    turn.text = { at: performance.now(), itemId: event.item_id };
  }
}

function turnResponseDone(s, response) {
  const turn = s.pendingTurn;
  if (!turn || !turn.responses.has(response.id) || turn.audio || !turn.text) return;
  if (s.rtc && hasAudio(response)) return; // its audio plays after it is done: heard later
  endTurn(s, turn.text.at, "text", turn.text.itemId);
}

/** Whether a done response carries audio (over WebRTC it is heard on the track, later). */
function hasAudio(response) {
  const output = Array.isArray(response.output) ? response.output : [];
  return output.some(
    (item) => Array.isArray(item?.content) && item.content.some((part) => part?.type === "output_audio"),
  );
}

function endTurn(s, at, until, itemId) {
  const turn = s.pendingTurn;
  s.pendingTurn = null;
  const ms = Math.max(0, Math.round(at - turn.t));
  rt.turns.push(ms);
  rt.turnLog.push({ ms, via: turn.via, until });
  const from = turn.via === "typed" ? "from send " : "";
  transcript.tag(itemId, `${formatMs(ms)} ${from}to first ${until}`, "latency");
  stats.render(rt.turnLog, tokens);
}

// ---------------------------------------------------------------------------------------------
// Typed messages

async function sendText(text) {
  const s = current;
  if (!s || !s.ready || !text) return;
  const msg = transcript.message(null, "user");
  transcript.setText(msg, text, { final: true });
  s.pendingTyped.push({ text, msg });
  const cancelled = await interruptAssistant(s);
  if (current !== s) return;
  send(s, {
    type: "conversation.item.create",
    item: { type: "message", role: "user", content: [{ type: "input_text", text }] },
  });
  startTurn(s, "typed");
  // Only one response at a time: after a cancel, ask for the next one once response.done arrives.
  if (cancelled || s.activeResponse) s.pendingResponseCreate = true;
  else send(s, { type: "response.create" });
}

// ---------------------------------------------------------------------------------------------
// Wiring

ui.instructions.value = DEFAULT_INSTRUCTIONS;
renderSettingValues();
updateControls();
stats.render(rt.turnLog, tokens);

ui.connectForm.addEventListener("submit", (event) => {
  event.preventDefault();
  start();
});
ui.stop.addEventListener("click", stop);
ui.tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  submitToken();
});
ui.token.addEventListener("input", () => {
  ui.tokenError.hidden = true;
  ui.token.removeAttribute("aria-invalid");
});
ui.endpoint.addEventListener("change", () => {
  hideFieldError();
  updateEndpointFields();
  if (ui.endpoint.value === CUSTOM && !ui.customEndpoint.value) ui.customEndpoint.focus();
});
ui.customEndpoint.addEventListener("input", () => {
  hideFieldError();
  renderConnectionSummary();
});
ui.deployment.addEventListener("input", () => {
  hideFieldError();
  renderConnectionSummary();
});
ui.connectionToggle.addEventListener("click", () => setConnectionOpen(!rt.connectionOpen));

for (const button of document.querySelectorAll("[data-preset]")) {
  button.addEventListener("click", () => {
    ui.instructions.value = PRESETS[button.dataset.preset];
    scheduleSessionUpdate();
  });
}
for (const control of [
  ui.instructions,
  ui.voice,
  ui.temperature,
  ui.vadType,
  ui.vadThreshold,
  ui.vadSilence,
  ui.vadPrefix,
  ui.vadEagerness,
]) {
  control.addEventListener("input", () => {
    renderSettingValues();
    scheduleSessionUpdate();
  });
  control.addEventListener("change", renderSettingValues);
}

ui.compose.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.message.value.trim();
  if (!text || !current || !current.ready) return;
  ui.message.value = "";
  sendText(text);
});
ui.interrupt.addEventListener("click", () => current && current.ready && interruptAssistant(current));
ui.clear.addEventListener("click", () => transcript.clear());
banner.onDismiss = () => {
  if (rt.state === "idle") status.set("idle");
};

document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape" || event.defaultPrevented || !current || !current.ready) return;
  if (event.target instanceof HTMLSelectElement) return;
  interruptAssistant(current);
});
window.addEventListener("pagehide", () => stop());

loadConfig();
