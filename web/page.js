// imd test page: a user of the SDK (imd-client, clients/js in the imd
// repository, served built by the http role under sdk/). The SDK holds the
// connection: token before every attempt, reconnect with backoff, the sync
// after each reconnect, sends kept until acknowledged, receipts, typing,
// history paging. The page shows every frame both ways in the packet log
// (the SDK's WebSocket is wrapped to see them), matches each client packet
// to its reply by id, can send every client packet type, and has a chat
// view: the conversations with their unread counts, and one conversation
// (a user or a room) open.
//
// What the server has not got (before contract version 3: the sync, the
// conversation list, rooms) is said in the page, never made up: against
// such a server the page catches up after a reconnect with H since the
// newest message it has, and builds the conversation list from the
// messages it saw.

const HISTORY_DELAY_MS = 3000;        // the first H after login, as the original front end did
const HISTORY_LIMIT = 100;
const CATCH_UP_MARGIN_MS = 60000;     // the catch-up H starts this far before the newest message seen
const REPLY_TYPES = "AEPOH";          // every client packet gets exactly one of these
const TYPING_EVERY_MS = 2000;         // Y true at most this often while typing ([typing] min_interval)
const TYPING_SHOWN_MS = 6000;         // "typing…" without news from the peer for this long: gone
const MAX_RECEIPT_IDS = 100;          // ids in one R
const CONVERSATIONS_REFRESH_MS = 300; // the server's conversation list, again this long after what moved it
const STATES = ["sent", "delivered", "read"];
const TICKS = { sent: "✓", delivered: "✓✓", read: "✓✓" };

const $ = (id) => document.getElementById(id);

function clock() {
  return new Date().toTimeString().slice(0, 8);
}

function setStatus(kind, text) {
  const status = $("status");
  status.className = "status " + kind;
  status.dataset.state = kind;
  status.textContent = text;
}

// --- the SDK, or why it is missing ---------------------------------------------

let sdk;
try {
  sdk = await import("./sdk/index.js");
} catch (e) {
  // The http role answers 503 with the command that builds it.
  let why = "";
  try { why = (await (await fetch("sdk/index.js")).json()).error || ""; } catch (ignored) { /* not JSON */ }
  setStatus("closed", "the SDK did not load: " + (why || e.message));
  $("connect").disabled = true;
}
const { ImdClient, newId } = sdk || {};

const state = {
  client: null, uid: null, connections: 0, syncRefused: false, pageCall: null,
  historyTimer: null, historyPages: null, catchingUp: false, disconnectedAt: null,
  // packet log: rows of client packets waiting for their reply, by JSON id;
  // cursors of sync replies (an H {after} with one of them is the SDK's sync)
  pending: new Map(), syncIds: new Set(), syncCursors: new Set(),
  // the Messages panel: entries {ts, estimated, seq, item, packet, key} sorted by
  // (ts, seq), and the same entries by messageKey
  timeline: [], messages: new Map(), arrivals: 0,
  skew: null,   // largest (ts - local clock) of a live packet: server time ≈ local time + skew
  newestTs: 0,  // the newest server ts of a message this page got
  // receipts: the state of each message sent (by messageKey), and what was
  // received: key -> {from, room, id, seq, conversation, delivered, read}
  sentState: new Map(), received: new Map(),
  typingSentAt: 0, typingTo: null, typingTimer: null,
  // the chat view: the open conversation ("user:2" or "room:order:42"), the
  // server's list when it has one, and what it said when it has not
  open: null, serverUnread: new Map(), listSource: null,
  // rooms' read cursors: room -> Map(uid -> seq), from H {"room"}'s "read"
  // and the live R packets of the room (its members' cursors only move forward)
  roomReads: new Map(),
};

// A uid, order id...: a number when it is a safe integer, else the text as typed
// (the server answers E bad_packet, which is worth seeing too).
function idValue(text) {
  text = text.trim();
  return /^\d+$/.test(text) && Number.isSafeInteger(Number(text)) ? Number(text) : text;
}

// --- the packet log: every frame the SDK sends and receives --------------------

function logRow(dir, text) {
  const row = document.createElement("li");
  row.dataset.dir = dir;
  const arrow = document.createElement("span");
  arrow.className = "dir";
  arrow.textContent = dir === "out" ? "→" : dir === "in" ? "←" : "·";
  const json = document.createElement("span");
  json.className = "json";
  json.textContent = text;
  const info = document.createElement("span");
  info.className = "state";
  info.textContent = clock();
  row.append(arrow, json, info);
  const log = $("log");
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.appendChild(row);
  if (atBottom) log.scrollTop = log.scrollHeight;
  return row;
}

function logNote(text) {
  return logRow("sys", text);
}

function markRow(row, kind, text) {
  row.dataset.state = kind;
  row.querySelector(".state").textContent = clock() + " " + text;
}

// Who sent a frame: the page, inside one of its calls of the SDK (a role
// such as "catch-up" when it is not the user's own), or the SDK by itself:
// "sync" (H {sync} and its pages), "keepalive" (P).
function frameRole(packet) {
  if (state.pageCall !== null) return state.pageCall;
  const msg = packet.msg;
  if (packet.type === "H" && msg && (msg.sync !== undefined || state.syncCursors.has(msg.after))) return "sync";
  if (packet.type === "P") return "keepalive";
  return "";
}

// Runs fn (which calls the SDK) with the frames it sends at once marked `role` ("" for none).
function asPage(role, fn) {
  state.pageCall = role;
  try { return fn(); } finally { state.pageCall = null; }
}

function frameOut(text) {
  let packet = null;
  try { packet = JSON.parse(text); } catch (e) { /* the SDK sends JSON */ }
  const row = logRow("out", text);
  if (!packet) return;
  row.dataset.id = String(packet.id);
  row.dataset.type = packet.type;
  const role = frameRole(packet);
  if (role) row.dataset.role = role;
  if (role === "sync") state.syncIds.add(JSON.stringify(packet.id));
  markRow(row, "pending", "pending");
  state.pending.set(JSON.stringify(packet.id), { row: row, sent: performance.now(), packet: packet });
}

function frameIn(text) {
  let packet;
  try {
    packet = JSON.parse(text);
  } catch (e) {
    markRow(logRow("in", text), "error", "not JSON");
    return;
  }
  const row = logRow("in", text);
  row.dataset.type = packet.type;
  const key = JSON.stringify(packet.id);
  if (!REPLY_TYPES.includes(packet.type) || packet.id == null || !state.pending.has(key)) return;
  const asked = state.pending.get(key);
  state.pending.delete(key);
  const ms = Math.round(performance.now() - asked.sent);
  if (packet.type === "A") {
    // dup: a retry of an id sent before, stored and delivered the first time only
    const dup = packet.dup ? " (dup: this id was sent before, not delivered again)" : "";
    markRow(asked.row, "acked", "acked in " + ms + " ms" + dup);
  } else if (packet.type === "E") {
    markRow(asked.row, "error", "E " + packet.code + ": " + packet.msg + " (" + ms + " ms)");
  } else {
    markRow(asked.row, "replied", packet.type + " in " + ms + " ms");
  }
  markRow(row, "reply", "reply to " + asked.packet.type);
  if (state.syncIds.delete(key) && packet.type === "H" && packet.more && packet.next) state.syncCursors.add(packet.next);
}

function socketClosed(event) {
  state.pending.forEach((asked) => markRow(asked.row, "lost", "no reply: connection closed"));
  state.pending.clear();
  if (!event.wasClean) logNote("the connection ended without a close handshake (" + event.code + ")");
}

// The browser's WebSocket, with every frame shown in the log: the SDK is
// given this class (its WebSocket option) and uses it like the plain one.
// These listeners come before the SDK's onmessage/onclose (set after
// construction), so a frame is logged before the SDK acts on it.
const LoggedWebSocket = class extends WebSocket {
  constructor(url) {
    super(url);
    this.addEventListener("message", (event) => frameIn(event.data));
    this.addEventListener("close", socketClosed);
  }

  send(data) {
    if (this.readyState === WebSocket.OPEN) frameOut(String(data));
    super.send(data);
  }
};

// --- messages: one timeline of live, synced, sent and history, in ts order -----
//
// Each message is shown once, by (from, id), where it belongs by its ts:
// history asked for after live messages arrived slots in above them. Equal
// ts keep the order they reached the page (one H reply lists them in the
// server's order of acceptance). A sent message has no ts until history
// brings it (its A carries none): until then it is placed as the newest,
// and a later copy moves it to its server ts.

function messageKey(packet) {
  return String(packet.from) + ":" + String(packet.id);
}

// The conversation a message belongs to: its room, else the other user.
function conversationOf(packet) {
  if (packet.room != null) return "room:" + packet.room;
  return "user:" + String(packet.from === state.uid ? packet.to : packet.from);
}

function isLater(a, b) {
  return a.ts > b.ts || (a.ts === b.ts && a.seq > b.seq);
}

function place(entry) {
  const timeline = state.timeline;
  let at = timeline.length;
  while (at > 0 && isLater(timeline[at - 1], entry)) at -= 1;
  timeline.splice(at, 0, entry);
  const list = $("messages");
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  list.insertBefore(entry.item, at + 1 < timeline.length ? timeline[at + 1].item : null);
  entry.item.dataset.ts = String(entry.ts);
  entry.item.querySelector(".when").textContent = new Date(entry.ts).toTimeString().slice(0, 8);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function newestPlacedTs() {
  const timeline = state.timeline;
  return timeline.length ? timeline[timeline.length - 1].ts : 0;
}

function messageItem(packet, source) {
  const item = document.createElement("li");
  item.dataset.source = source;
  item.dataset.from = String(packet.from);
  item.dataset.to = String(packet.room != null ? "room " + packet.room : packet.to);
  item.dataset.id = String(packet.id);
  item.dataset.type = packet.type;
  if (packet.from === state.uid) item.classList.add("mine");
  const meta = document.createElement("span");
  meta.className = "meta";
  const when = document.createElement("span");
  when.className = "when";
  const target = packet.room != null ? "room " + packet.room : packet.to;
  meta.append(when, " " + packet.from + " → " + target + (source === "history" ? " (history)" : ""));
  const body = document.createElement("span");
  body.className = "body";
  if (packet.type === "t") body.textContent = packet.msg;
  else if (packet.type === "i") body.textContent = "[image " + packet.msg + "]";
  else body.textContent = "[" + packet.type + "] " + JSON.stringify(packet.msg);
  item.append(meta, body);
  if (packet.from === state.uid) {
    const tick = document.createElement("span");
    tick.className = "tick";
    item.append(tick);
  }
  return item;
}

function addMessage(packet, source) {
  if (typeof packet.ts === "number") {
    if (source === "live") {
      const skew = packet.ts - Date.now();   // the server's clock minus ours, less the delay
      state.skew = state.skew === null ? skew : Math.max(state.skew, skew);
    }
    state.newestTs = Math.max(state.newestTs, packet.ts);
  }
  const key = messageKey(packet);
  const known = state.messages.get(key);
  if (known) {
    if (known.estimated && typeof packet.ts === "number") {
      state.timeline.splice(state.timeline.indexOf(known), 1);
      known.ts = packet.ts;
      known.estimated = false;
      place(known);
      renderChat();
    }
    return;
  }
  const estimated = typeof packet.ts !== "number";
  const ts = estimated ? Math.max(Date.now() + (state.skew || 0), newestPlacedTs()) : packet.ts;
  const entry = { ts: ts, estimated: estimated, seq: state.arrivals += 1, item: messageItem(packet, source),
                  packet: packet, key: key, source: source, conversation: conversationOf(packet) };
  state.messages.set(key, entry);
  place(entry);
  if (packet.from === state.uid) showState(key);
  renderChat();
}

// A recall (D): the message it names is shown struck through, wherever it is.
function recalled(packet) {
  const entry = state.messages.get(String(packet.from) + ":" + String(packet.msg));
  if (!entry) return;
  entry.recalled = true;
  entry.item.classList.add("recalled");
  renderChat();
}

// --- receipts: ticks on sent messages, R for received ones --------------------

function stateRank(name) {
  return Math.max(0, STATES.indexOf(name));
}

// A sent message reached `name` (only forward); its tick follows.
function advanceSent(key, name) {
  if (stateRank(name) > stateRank(state.sentState.get(key) || "sent")) state.sentState.set(key, name);
  showState(key);
}

function paintTick(tick, name) {
  tick.dataset.state = name;
  tick.textContent = TICKS[name];
  tick.title = name;
}

function showState(key) {
  const entry = state.messages.get(key);
  const tick = entry && entry.item.querySelector(".tick");
  if (!tick) return;
  const name = state.sentState.get(key) || "sent";
  paintTick(tick, name);
  entry.item.dataset.state = name;
  renderChat();
}

// The user the t form is addressed to, or the open room: the conversation on screen.
function openPeer() {
  const to = idValue($("t-to").value);
  return typeof to === "number" ? to : null;
}

function readsAllowed() {
  return $("read-receipts").checked && document.visibilityState === "visible";
}

function receiptFailed(what) {
  return (e) => logNote(what + " not sent: " + (e.code ? e.code + ": " : "") + e.message);
}

// Received messages not yet answered: R delivered for all, R read for the
// open conversation's (when read receipts are on), at most 100 ids each; in
// a room, the read cursor moves to the newest seq read. The SDK sends them
// once connected and again after a reconnect until each is acknowledged.
function sendReceipts() {
  const client = state.client;
  if (!client || state.uid === null) return;
  const due = new Map();   // "state peer" -> [ids]
  const rooms = new Map(); // room -> newest seq read
  state.received.forEach((m) => {
    const open = m.conversation === state.open && readsAllowed();
    if (m.room != null) {
      if (!m.read && open && typeof m.seq === "number") {
        m.read = true;
        rooms.set(m.room, Math.max(rooms.get(m.room) || 0, m.seq));
      }
      return;
    }
    const wants = [];
    if (!m.delivered) { m.delivered = true; wants.push("delivered"); }
    if (!m.read && open) { m.read = true; m.delivered = true; wants.push("read"); }
    // read implies delivered: one R read is enough
    const name = wants.includes("read") ? "read" : wants[0];
    if (!name) return;
    const group = name + " " + m.from;
    if (!due.has(group)) due.set(group, []);
    due.get(group).push(m.id);
  });
  asPage("", () => {
    due.forEach((ids, group) => {
      const [name, from] = group.split(" ");
      for (let i = 0; i < ids.length; i += MAX_RECEIPT_IDS) {
        const input = { to: Number(from), ids: ids.slice(i, i + MAX_RECEIPT_IDS) };
        // system messages (from 0): the SDK's receipts name users, so R to 0 goes as it is
        const sent = input.to === 0 ? client.raw({ type: "R", to: 0, msg: { state: name, ids: input.ids } })
          : name === "read" ? client.markRead(input) : client.markDelivered(input);
        sent.catch(receiptFailed("R " + name));
      }
    });
    rooms.forEach((seq, room) => {
      client.markRead({ room: room, seq: seq }).then(() => moveCursor(room, state.uid, seq))
        .catch(receiptFailed("R read"));
    });
  });
  if (due.size || rooms.size) refreshConversations();
  if (state.open && readsAllowed()) state.serverUnread.set(state.open, 0);
  renderChat();
}

// A message to this user (live, synced or history, with its stored state).
function noteReceived(packet, stored) {
  if (packet.from === state.uid || (packet.room == null && packet.to !== state.uid)) return;
  const key = messageKey(packet);
  let m = state.received.get(key);
  if (!m) {
    m = { from: packet.from, room: packet.room, id: packet.id, seq: packet.seq, conversation: conversationOf(packet),
          delivered: false, read: false };
    state.received.set(key, m);
  }
  if (stateRank(stored) >= 1) m.delivered = true;
  if (stateRank(stored) >= 2) m.read = true;
}

// A member's read cursor in a room moved (forward only): the room view shows it.
function moveCursor(room, uid, seq) {
  if (typeof seq !== "number") return;
  if (!state.roomReads.has(room)) state.roomReads.set(room, new Map());
  const cursors = state.roomReads.get(room);
  if (seq > (cursors.get(String(uid)) || 0)) cursors.set(String(uid), seq);
  renderChat();
}

function onReceipt(packet) {
  refreshConversations();   // (a receipt of this user's other device moves its unread counts)
  if (packet.room != null) {
    if (packet.msg && packet.msg.state === "read") moveCursor(packet.room, packet.from, packet.msg.seq);
    return;
  }
  if (packet.to !== state.uid || !packet.msg || !Array.isArray(packet.msg.ids)) return;
  packet.msg.ids.forEach((id) => advanceSent(String(state.uid) + ":" + String(id), packet.msg.state));
}

// --- typing --------------------------------------------------------------------

// The open conversation as the SDK's target: {to} or {room}.
function openTarget() {
  if (state.open && state.open.startsWith("room:")) return { room: state.open.slice(5) };
  const to = openPeer();
  return to === null ? null : { to: to };
}

function typed(text) {
  const target = openTarget();
  if (target === null || !state.client) return;
  if (text && Date.now() - state.typingSentAt >= TYPING_EVERY_MS) {
    state.typingSentAt = Date.now();
    state.typingTo = target;
    asPage("", () => state.client.typing(target, true));
  } else if (!text) {
    stoppedTyping();
  }
}

function stoppedTyping() {
  if (state.typingTo === null || !state.client) return;
  const target = state.typingTo;
  asPage("", () => state.client.typing(target, false));
  state.typingTo = null;
  state.typingSentAt = 0;
}

function showTyping(packet, on) {
  const shown = $("typing");
  const where = packet.room != null ? "room:" + packet.room : "user:" + packet.from;
  clearTimeout(state.typingTimer);
  state.typingTimer = null;
  if (on && where === state.open) {
    shown.textContent = "uid " + packet.from + " is typing…" + (packet.room != null ? " (room " + packet.room + ")" : "");
    shown.hidden = false;
    state.typingTimer = setTimeout(() => { shown.hidden = true; }, TYPING_SHOWN_MS);
  } else if (!on || shown.dataset.from === String(packet.from)) {
    shown.hidden = true;
  }
  shown.dataset.from = String(packet.from);
}

// --- the chat view: conversations with unread counts, one open ------------------

let chatQueued = false;

function renderChat() {
  if (chatQueued) return;
  chatQueued = true;
  setTimeout(() => { chatQueued = false; drawChat(); }, 0);
}

function conversationName(key) {
  if (key.startsWith("room:")) return "room " + key.slice(5);
  return key === "user:0" ? "system" : "uid " + key.slice(5);
}

function unreadOf(key) {
  // the server's list is the record (refreshed as messages and receipts come)
  if (state.listSource === "server" && state.serverUnread.has(key)) return state.serverUnread.get(key);
  let count = 0;
  state.received.forEach((m) => { if (m.conversation === key && !m.read) count += 1; });
  return Math.max(count, state.serverUnread.get(key) || 0);
}

function drawChat() {
  // the conversations: newest activity first, from the messages this page has
  const last = new Map();
  state.timeline.forEach((entry) => last.set(entry.conversation, entry));
  state.serverUnread.forEach((_, key) => { if (!last.has(key)) last.set(key, null); });
  if (state.open && !last.has(state.open)) last.set(state.open, null);
  const keys = [...last.keys()].sort((a, b) => ((last.get(b) || {}).ts || 0) - ((last.get(a) || {}).ts || 0));
  const list = $("conversations");
  list.textContent = "";
  keys.forEach((key) => {
    const item = document.createElement("li");
    item.dataset.conversation = key;
    if (key === state.open) item.classList.add("open");
    const button = document.createElement("button");
    button.type = "button";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = conversationName(key);
    const entry = last.get(key);
    const preview = document.createElement("span");
    preview.className = "last";
    preview.textContent = entry ? entry.item.querySelector(".body").textContent : "";
    const unread = unreadOf(key);
    const badge = document.createElement("span");
    badge.className = "unread";
    badge.textContent = String(unread);
    badge.hidden = unread === 0;
    item.dataset.unread = String(unread);
    button.append(name, badge, preview);
    button.addEventListener("click", () => openConversation(key));
    item.append(button);
    list.append(item);
  });
  // the open conversation
  const pane = $("conversation");
  const atBottom = pane.scrollTop + pane.clientHeight >= pane.scrollHeight - 4;
  pane.textContent = "";
  $("conversation-title").textContent = state.open ? conversationName(state.open) : "no conversation open";
  drawCursors();
  $("chat-send").disabled = !state.open;
  state.timeline.forEach((entry) => {
    if (entry.conversation !== state.open) return;
    const item = entry.item.cloneNode(true);
    item.removeAttribute("data-source");
    item.dataset.key = entry.key;
    pane.append(item);
  });
  if (atBottom) pane.scrollTop = pane.scrollHeight;
}

// The open room's read cursors: one entry per member, "uid N read up to seq S".
function drawCursors() {
  const shown = $("room-reads");
  shown.textContent = "";
  const room = state.open && state.open.startsWith("room:") ? state.open.slice(5) : null;
  const cursors = room !== null ? state.roomReads.get(room) : null;
  shown.hidden = !cursors;
  if (!cursors) return;
  const label = document.createElement("span");
  label.textContent = "read up to: ";
  shown.append(label);
  [...cursors.keys()].sort((a, b) => Number(a) - Number(b)).forEach((uid, n) => {
    if (n) shown.append(" · ");
    const item = document.createElement("span");
    item.className = "cursor";
    item.dataset.uid = uid;
    item.dataset.seq = String(cursors.get(uid));
    item.textContent = (Number(uid) === state.uid ? "you" : "uid " + uid) + " → seq " + cursors.get(uid);
    shown.append(item);
  });
}

// Opens a conversation ("user:2", "room:order:42"): its messages on the
// right, its unread read (receipts permitting), the forms addressed to it.
function openConversation(key) {
  if (key === state.open) return;
  stoppedTyping();
  state.open = key;
  $("typing").hidden = true;
  $("conversation-note").hidden = true;
  if (key.startsWith("user:") && $("t-to").value.trim() !== key.slice(5)) $("t-to").value = key.slice(5);
  if (key.startsWith("room:")) loadRoom(key.slice(5));
  sendReceipts();
  renderChat();
}

function noteConversation(text) {
  const note = $("conversation-note");
  note.textContent = text;
  note.hidden = false;
}

// A room's history (contract v3). A server without rooms refuses it: said, not faked.
async function loadRoom(room) {
  const client = state.client;
  if (!client) return;
  try {
    const pages = client.history({ room: room, limit: HISTORY_LIMIT });
    const page = await asPage("room", () => pages.next());
    if (!page.done) {
      if (page.value.read) {
        // every member's cursor: the members now (one removed meanwhile is no longer listed)
        const cursors = new Map();
        Object.entries(page.value.read).forEach(([uid, seq]) => cursors.set(uid, Number(seq) || 0));
        const known = state.roomReads.get(room) || new Map();
        cursors.forEach((seq, uid) => cursors.set(uid, Math.max(seq, known.get(uid) || 0)));
        state.roomReads.set(room, cursors);
      }
      showHistory(page.value);
    }
  } catch (e) {
    if (state.open === "room:" + room) {
      noteConversation("this server has no room " + room + ": H answered " + (e.code || "") + " — " + e.message +
                       " (rooms are contract version 3)");
    }
  }
}

// The server's conversation list again, a moment after messages or receipts
// moved it (one H for a burst of them); not when the server has none.
let conversationsQueued = null;
function refreshConversations() {
  if (conversationsQueued !== null || state.listSource === "page" || !state.client) return;
  conversationsQueued = setTimeout(() => {
    conversationsQueued = null;
    if (state.client && state.client.state === "connected") loadConversations(state.client);
  }, CONVERSATIONS_REFRESH_MS);
}

// The server's conversation list (contract v3), else the page's own.
async function loadConversations(client) {
  try {
    const conversations = await asPage("conversations", () => client.conversations({ limit: 50 }));
    state.listSource = "server";
    state.serverUnread.clear();
    conversations.forEach((c) => {
      const key = c.room != null ? "room:" + c.room : "user:" + c.with;
      state.serverUnread.set(key, Number(c.unread) || 0);
      if (c.last && typeof c.last === "object") addMessage(c.last, "history");
    });
    $("chat-source").textContent = "the server's conversation list, with its unread counts";
  } catch (e) {
    if (e.code === "closed") return;
    state.listSource = "page";
    $("chat-source").textContent = "built from the messages this page has seen: the server has no conversation " +
      "list (H conversations answered " + (e.code || "an error") + "; it is contract version 3)";
  }
  renderChat();
}

// --- history: the first pages, "More", and the catch-up after a reconnect -------

function showHistory(page) {
  page.messages.forEach((m) => {
    if (m.type === "D") { recalled(m); return; }
    addMessage(m, "history");
    if (m.from === state.uid) advanceSent(messageKey(m), m.state);
    else noteReceived(m, m.state);
  });
  sendReceipts();
}

async function nextHistoryPage() {
  const pages = state.historyPages;
  if (!pages) return;
  $("history-more").disabled = true;
  try {
    const page = await asPage("", () => pages.next());
    if (page.done || state.historyPages !== pages) return;
    showHistory(page.value);
    $("history-more").disabled = !page.value.more;
  } catch (e) {
    if (e.code !== "closed") logNote("history: " + (e.code ? e.code + ": " : "") + e.message);
  }
}

function askHistory(query) {
  if (!state.client) return;
  state.historyPages = state.client.history(query);
  nextHistoryPage();
}

// After a reconnect to a server that refused the sync: H since a little
// before the newest message this page has (or the moment it lost the
// connection), every page. What it already shows is not shown again.
async function catchUp(client) {
  if (state.catchingUp) return;
  state.catchingUp = true;
  const from = state.newestTs || (state.disconnectedAt !== null ? state.disconnectedAt + (state.skew || 0) : 0);
  const since = Math.max(0, from - CATCH_UP_MARGIN_MS);
  logNote("catching up with H since " + new Date(since).toTimeString().slice(0, 8) +
          " (the server has no sync: it predates contract version 3)");
  try {
    const pages = client.history({ since: since, limit: HISTORY_LIMIT });
    for (;;) {
      const page = await asPage("catch-up", () => pages.next());
      if (page.done) break;
      showHistory(page.value);
      if (!page.value.more) break;
    }
  } catch (e) {
    if (e.code !== "closed") logNote("catch-up: " + (e.code ? e.code + ": " : "") + e.message);
  } finally {
    state.catchingUp = false;
  }
}

// --- the SDK's events ------------------------------------------------------------

function onMessage(packet) {
  if (packet.type === "D") { recalled(packet); return; }
  addMessage(packet, state.client && state.client.state === "syncing" ? "sync" : "live");
  if (state.open === conversationOf(packet)) showTyping(packet, false);
  noteReceived(packet, "sent");
  sendReceipts();
  refreshConversations();
}

function onState(event) {
  if (event.warning) {
    onWarning(event);
    return;
  }
  switch (event.state) {
    case "connecting":
      setStatus("connecting", "getting a token…");
      break;
    case "syncing":
      state.uid = event.uid;
      state.syncRefused = false;
      setStatus("connecting", "logged in as uid " + event.uid + ", catching up…");
      break;
    case "connected": {
      const client = state.client;
      state.connections += 1;
      setStatus("open", "open as uid " + event.uid);
      if (state.connections === 1) {
        state.historyTimer = setTimeout(() => { state.historyTimer = null; askHistory({ since: 0, limit: HISTORY_LIMIT }); },
                                        HISTORY_DELAY_MS);
        loadConversations(client);
      } else if (state.syncRefused) {
        catchUp(client);
      } else {
        refreshConversations();   // what came while it was away
      }
      sendReceipts();
      break;
    }
    case "reconnecting": {
      if (state.disconnectedAt === null) state.disconnectedAt = Date.now();
      const closed = event.code !== undefined ? "closed " + event.code + (event.reason ? ": " + event.reason : "")
        : "could not connect" + (event.error ? ": " + event.error.message : "");
      if (!$("auto-reconnect").checked) {
        logNote(closed + " — not reconnecting (switched off)");
        state.client.close();
        return;
      }
      const text = closed + " — reconnecting in " + (event.delayMs / 1000).toFixed(1) + " s";
      setStatus("closed", text);
      logNote(text);
      break;
    }
  }
  if (event.state === "connected") state.disconnectedAt = null;
}

function onWarning(event) {
  const why = event.error ? ": " + (event.error.code ? event.error.code + " " : "") + event.error.message : "";
  switch (event.warning) {
    case "sync_failed":
      state.syncRefused = true;
      logNote("the server refused the sync" + why + " (it predates contract version 3): after a reconnect " +
              "the page catches up with H itself");
      break;
    case "token_failed":
      setStatus("closed", event.error ? event.error.message : "no token");
      logNote("token: " + (event.error ? event.error.message : "failed"));
      break;
    case "truncated":
      logNote("the sync started past what the server keeps: older messages are gone");
      break;
    default:
      logNote(event.warning + why);
  }
}

function onClosed(event) {
  clearTimeout(state.historyTimer);
  state.historyTimer = null;
  const text = "closed " + event.code + (event.reason ? ": " + event.reason : "");
  setStatus("closed", text);
  logNote(text + " — not reconnecting");
  $("connect").disabled = false;
  $("disconnect").disabled = true;
}

// --- connecting --------------------------------------------------------------------

function tokenUrl() {
  return $("token-url").value.trim() || "IM/token";
}

// The SDK calls this before every connection attempt: a wstoken is single-use.
async function fetchToken() {
  const platformToken = $("platform-token").value.trim();
  const headers = { "Content-Type": "application/json" };
  let body = "{}";
  if (platformToken) {
    headers.Authorization = "Bearer " + platformToken;
  } else {
    const uid = $("uid").value.trim();
    if (!/^\d+$/.test(uid)) throw new Error("enter a user id (digits) or a platform token");
    body = JSON.stringify({ id: idValue(uid) });
  }
  const response = await fetch(tokenUrl(), { method: "POST", headers: headers, body: body });
  let reply = {};
  try { reply = await response.json(); } catch (e) { /* not JSON: reported below */ }
  if (!response.ok) throw new Error("token refused, HTTP " + response.status + ": " + (reply.error || "no reason given"));
  const shown = reply.url.replace(reply.token, "<token>");
  if (location.protocol === "https:" && reply.url.startsWith("ws:")) {
    logNote("warning: this page is on https, the browser may refuse " + shown);
  }
  logNote("token issued (valid " + reply.expires_in + " s), connecting to " + shown);
  setStatus("connecting", "connecting…");
  return reply;
}

function connect() {
  const previous = state.client;
  state.client = null;   // its events are no longer shown
  if (previous) previous.close();
  clearTimeout(state.historyTimer);
  state.historyTimer = null;
  state.historyPages = null;
  state.connections = 0;
  state.uid = null;
  const client = new ImdClient({
    token: fetchToken,
    WebSocket: LoggedWebSocket,
    reconnect: { minDelayMs: 500, maxDelayMs: 30000 },
    onHandlerError: (e) => {
      logNote("page error: " + e.message);
      console.error(e);
    },
  });
  state.client = client;
  const mine = (handler) => (value) => { if (state.client === client) handler(value); };
  client.on("message", mine(onMessage));
  client.on("receipt", mine(onReceipt));
  client.on("typing", mine((packet) => showTyping(packet, packet.msg === true)));
  client.on("position", mine((packet) => logNote("uid " + packet.from + " is at " + JSON.stringify(packet.msg))));
  client.on("state", mine(onState));
  client.on("closed", mine(onClosed));
  client.on("outbox", mine((event) => {
    if (event.error && event.error.code !== "closed") logNote(event.packet.type + " " + event.packet.id + " refused: " + event.error.code);
  }));
  $("connect").disabled = true;
  $("disconnect").disabled = false;
  client.connect().catch(() => { /* the closed event says why */ });
}

function disconnect() {
  if (state.client) state.client.close();
  else setStatus("closed", "not connected");
  $("connect").disabled = false;
  $("disconnect").disabled = true;
}

// --- sending: every client packet type, through the SDK -----------------------------

// A t or i through the SDK's outbox: resolves once stored, resent with its id
// after a reconnect; shown as sent when acknowledged.
function sendMessage(target, type, msg) {
  const client = state.client;
  if (!client) {
    logNote("not connected: " + type + " not sent");
    return false;
  }
  const id = newId();
  if (client.state !== "connected") logNote(type + " " + id + " waits in the outbox until the page is connected");
  asPage("", () => client.send(Object.assign({ type: type, msg: msg, id: id }, target)))
    .then(() => {
      if (state.client !== client) return;
      addMessage({ id: id, from: state.uid, to: target.to, room: target.room, type: type, msg: msg }, "sent");
    })
    .catch((e) => {
      if (!e.packet) logNote(type + " not sent: " + e.code + ": " + e.message);   // the log row shows the server's E
      if (target.room != null && state.open === "room:" + target.room && e.packet) {
        noteConversation("room " + target.room + ": " + e.code + " — " + e.message + " (rooms are contract version 3)");
      }
    });
  return true;
}

function raw(packet) {
  const client = state.client;
  if (!client) {
    logNote("not connected: " + packet.type + " not sent");
    return;
  }
  asPage("", () => client.raw(packet)).catch((e) => {
    if (e.code === "not_connected") logNote("not connected: " + packet.type + " not sent");
  });
}

function submitPacket(form) {
  const field = (name) => form.elements[name].value.trim();
  switch (form.dataset.type) {
    case "t":
      if (sendMessage({ to: idValue(field("to")) }, "t", form.elements.msg.value)) {
        form.elements.msg.value = "";
        stoppedTyping();
      }
      break;
    case "i": sendMessage({ to: idValue(field("to")) }, "i", idValue(field("msg"))); break;
    case "T": raw({ type: "T", msg: idValue(field("msg")) }); break;
    case "S": raw({ type: "S", msg: { longitude: Number(field("longitude")), latitude: Number(field("latitude")) } }); break;
    case "O":
      if (!state.client) { logNote("not connected: O not sent"); break; }
      asPage("", () => state.client.online(idValue(field("msg"))))
        .then((online) => logNote("uid " + field("msg") + " is " + (online ? "online" : "offline")))
        .catch((e) => { if (!e.packet) logNote("O not sent: " + e.code + ": " + e.message); });
      break;
    case "H": {
      const query = { since: field("since") ? Number(field("since")) : 0 };
      if (field("with")) query.with = idValue(field("with"));
      if (field("limit")) query.limit = Number(field("limit"));
      askHistory(query);
      break;
    }
    case "P": raw({ type: "P", msg: "ping" }); break;
  }
}

// --- wiring ------------------------------------------------------------------------

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (ImdClient) connect();
});
$("disconnect").addEventListener("click", disconnect);
$("clear-log").addEventListener("click", () => { $("log").textContent = ""; });
$("history-more").addEventListener("click", nextHistoryPage);
document.querySelectorAll("form.packet").forEach((form) => {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submitPacket(form);
  });
});
$("t-msg").addEventListener("input", () => typed($("t-msg").value));
// Opening a conversation (or coming back to the page) reads what waits in it.
$("t-to").addEventListener("input", () => {
  const peer = openPeer();
  if (peer !== null) openConversation("user:" + peer);
});
$("open-room").addEventListener("submit", (event) => {
  event.preventDefault();
  const room = $("room-id").value.trim();
  if (room) openConversation("room:" + room);
});
$("chat-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const target = openTarget();
  const text = $("chat-msg").value;
  if (target === null || !text) return;
  if (sendMessage(target, "t", text)) {
    $("chat-msg").value = "";
    stoppedTyping();
  }
});
$("chat-msg").addEventListener("input", () => typed($("chat-msg").value));
$("read-receipts").addEventListener("change", sendReceipts);
document.addEventListener("visibilitychange", sendReceipts);
const params = new URLSearchParams(location.search);
if (params.get("uid")) {
  $("uid").value = params.get("uid");
  if (params.get("connect") !== null && ImdClient) $("login-form").requestSubmit();
}
renderChat();
