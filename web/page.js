// imd test page: get a wstoken, connect, show every packet both ways, match
// each client packet to its A / E / reply by id, and send every client type.
// Plain script, no build step, no dependencies.
"use strict";

(function () {
  const HISTORY_DELAY_MS = 3000;        // as the original front end did
  const REPLY_TYPES = "AEPOH";          // every client packet gets exactly one of these
  const NO_RECONNECT = [4002, 4003];    // replaced by a newer device, kicked
  const MAX_BACKOFF_S = 30;
  const TYPING_EVERY_MS = 2000;         // Y true at most this often while typing ([typing] min_interval)
  const TYPING_SHOWN_MS = 6000;         // "typing…" without news from the peer for this long: gone
  const MAX_RECEIPT_IDS = 100;          // ids in one R
  const STATES = ["sent", "delivered", "read"];
  const TICKS = { sent: "✓", delivered: "✓✓", read: "✓✓" };

  const $ = (id) => document.getElementById(id);
  const state = {
    ws: null, uid: null, pending: new Map(), userClosed: true, retry: 0,
    retryTimer: null, historyTimer: null, nextCursor: null,
    // the Messages panel: entries {ts, estimated, seq, item} sorted by (ts, seq),
    // and the same entries by messageKey
    timeline: [], messages: new Map(), arrivals: 0,
    skew: null,   // largest (ts - local clock) of a live packet: server time ≈ local time + skew
    // receipts: the state of each message sent (by messageKey), and what was
    // received: key -> {from, id, delivered, read}
    sentState: new Map(), received: new Map(),
    typingSentAt: 0, typingTo: null, typingTimer: null,
  };

  function packetId() {
    return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 8);
  }

  function clock() {
    return new Date().toTimeString().slice(0, 8);
  }

  // A uid, order id...: a number when it is a safe integer, else the text as typed
  // (the server answers E bad_packet, which is worth seeing too).
  function idValue(text) {
    text = text.trim();
    return /^\d+$/.test(text) && Number.isSafeInteger(Number(text)) ? Number(text) : text;
  }

  function setStatus(kind, text) {
    const status = $("status");
    status.className = "status " + kind;
    status.dataset.state = kind;
    status.textContent = text;
  }

  // --- the packet log -------------------------------------------------------

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

  // --- messages: one timeline of live, sent and history, in ts order --------
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

  function newestTs() {
    const timeline = state.timeline;
    return timeline.length ? timeline[timeline.length - 1].ts : 0;
  }

  function addMessage(packet, source) {
    if (source === "live" && typeof packet.ts === "number") {
      const skew = packet.ts - Date.now();   // the server's clock minus ours, less the delay
      state.skew = state.skew === null ? skew : Math.max(state.skew, skew);
    }
    const key = messageKey(packet);
    const known = state.messages.get(key);
    if (known) {
      if (known.estimated && typeof packet.ts === "number") {
        state.timeline.splice(state.timeline.indexOf(known), 1);
        known.ts = packet.ts;
        known.estimated = false;
        place(known);
      }
      return;
    }
    const item = document.createElement("li");
    item.dataset.source = source;
    item.dataset.from = String(packet.from);
    item.dataset.to = String(packet.to);
    item.dataset.id = String(packet.id);
    item.dataset.type = packet.type;
    if (packet.from === state.uid) item.classList.add("mine");
    const meta = document.createElement("span");
    meta.className = "meta";
    const when = document.createElement("span");
    when.className = "when";
    meta.append(when, " " + packet.from + " → " + packet.to + (source === "history" ? " (history)" : ""));
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
    const estimated = typeof packet.ts !== "number";
    const ts = estimated ? Math.max(Date.now() + (state.skew || 0), newestTs()) : packet.ts;
    const entry = { ts: ts, estimated: estimated, seq: state.arrivals += 1, item: item };
    state.messages.set(key, entry);
    place(entry);
    if (packet.from === state.uid) showState(key);
  }

  // --- receipts: ticks on sent messages, R for received ones -----------------

  function stateRank(name) {
    return Math.max(0, STATES.indexOf(name));
  }

  // A sent message reached `name` (only forward); its tick follows.
  function advanceSent(key, name) {
    if (stateRank(name) > stateRank(state.sentState.get(key) || "sent")) state.sentState.set(key, name);
    showState(key);
  }

  function showState(key) {
    const entry = state.messages.get(key);
    const tick = entry && entry.item.querySelector(".tick");
    if (!tick) return;
    const name = state.sentState.get(key) || "sent";
    tick.dataset.state = name;
    tick.textContent = TICKS[name];
    tick.title = name;
    entry.item.dataset.state = name;
  }

  // The user the t form is addressed to: the conversation on screen.
  function openPeer() {
    const to = idValue($("t-to").value);
    return typeof to === "number" ? to : null;
  }

  function readsAllowed() {
    return $("read-receipts").checked && document.visibilityState === "visible";
  }

  // Received messages not yet answered: R delivered for all, R read for the
  // open conversation's (when read receipts are on), at most 100 ids each.
  function sendReceipts() {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return;
    const due = new Map();   // "state peer" -> [ids]
    const peer = openPeer();
    state.received.forEach((m) => {
      const wants = [];
      if (!m.delivered) { m.delivered = true; wants.push("delivered"); }
      if (!m.read && m.from === peer && readsAllowed()) { m.read = true; m.delivered = true; wants.push("read"); }
      // read implies delivered: one R read is enough
      const name = wants.includes("read") ? "read" : wants[0];
      if (!name) return;
      const group = name + " " + m.from;
      if (!due.has(group)) due.set(group, []);
      due.get(group).push(m.id);
    });
    due.forEach((ids, group) => {
      const [name, from] = group.split(" ");
      for (let i = 0; i < ids.length; i += MAX_RECEIPT_IDS) {
        send({ id: packetId(), to: Number(from), type: "R", msg: { state: name, ids: ids.slice(i, i + MAX_RECEIPT_IDS) } });
      }
    });
  }

  // A message to this user (live or history, with its stored state).
  function noteReceived(packet, stored) {
    if (packet.to !== state.uid || packet.from === state.uid) return;
    const key = messageKey(packet);
    let m = state.received.get(key);
    if (!m) {
      m = { from: packet.from, id: packet.id, delivered: false, read: false };
      state.received.set(key, m);
    }
    if (stateRank(stored) >= 1) m.delivered = true;
    if (stateRank(stored) >= 2) m.read = true;
  }

  function onReceipt(packet) {
    if (packet.to !== state.uid || !packet.msg || !Array.isArray(packet.msg.ids)) return;
    packet.msg.ids.forEach((id) => advanceSent(String(state.uid) + ":" + String(id), packet.msg.state));
  }

  // --- typing ---------------------------------------------------------------

  function typed() {
    const to = openPeer();
    const text = $("t-msg").value;
    if (to === null || !state.ws) return;
    if (text && Date.now() - state.typingSentAt >= TYPING_EVERY_MS) {
      state.typingSentAt = Date.now();
      state.typingTo = to;
      send({ id: packetId(), to: to, type: "Y", msg: true });
    } else if (!text) {
      stoppedTyping();
    }
  }

  function stoppedTyping() {
    if (state.typingTo === null) return;
    send({ id: packetId(), to: state.typingTo, type: "Y", msg: false });
    state.typingTo = null;
    state.typingSentAt = 0;
  }

  function showTyping(from, on) {
    const shown = $("typing");
    clearTimeout(state.typingTimer);
    state.typingTimer = null;
    if (on && from === openPeer()) {
      shown.textContent = "uid " + from + " is typing…";
      shown.hidden = false;
      state.typingTimer = setTimeout(() => { shown.hidden = true; }, TYPING_SHOWN_MS);
    } else if (!on || shown.dataset.from === String(from)) {
      shown.hidden = true;
    }
    shown.dataset.from = String(from);
  }

  // --- sending ----------------------------------------------------------------

  function send(packet) {
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      logNote("not connected: " + packet.type + " not sent");
      return null;
    }
    const text = JSON.stringify(packet);
    ws.send(text);
    const row = logRow("out", text);
    row.dataset.id = String(packet.id);
    row.dataset.type = packet.type;
    markRow(row, "pending", "pending");
    state.pending.set(JSON.stringify(packet.id), { row: row, sent: performance.now(), packet: packet });
    return row;
  }

  function buildPacket(type, form) {
    const field = (name) => form.elements[name].value.trim();
    const packet = { id: packetId(), to: 0, type: type };
    switch (type) {
      case "t": packet.to = idValue(field("to")); packet.msg = form.elements.msg.value; break;
      case "i": packet.to = idValue(field("to")); packet.msg = idValue(field("msg")); break;
      case "T": packet.msg = idValue(field("msg")); break;
      case "S": packet.msg = { longitude: Number(field("longitude")), latitude: Number(field("latitude")) }; break;
      case "O": packet.msg = idValue(field("msg")); break;
      case "H": {
        const query = { since: field("since") ? Number(field("since")) : 0 };
        if (field("with")) query.with = idValue(field("with"));
        if (field("limit")) query.limit = Number(field("limit"));
        packet.msg = query;
        break;
      }
      case "P": packet.msg = "ping"; break;
    }
    return packet;
  }

  function askHistory() {
    state.historyTimer = null;
    send({ id: packetId(), to: 0, type: "H", msg: { since: 0, limit: 100 } });
  }

  // --- receiving --------------------------------------------------------------

  function onPacket(text) {
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
    if (REPLY_TYPES.includes(packet.type) && packet.id != null && state.pending.has(key)) {
      const asked = state.pending.get(key);
      state.pending.delete(key);
      const ms = Math.round(performance.now() - asked.sent);
      if (packet.type === "A") {
        // dup: a retry of an id sent before, stored and delivered the first time only
        const dup = packet.dup ? " (dup: this id was sent before, not delivered again)" : "";
        markRow(asked.row, "acked", "acked in " + ms + " ms" + dup);
        if ("ti".includes(asked.packet.type) && !packet.dup) {
          addMessage(Object.assign({ from: state.uid }, asked.packet), "sent");
        }
      } else if (packet.type === "E") {
        markRow(asked.row, "error", "E " + packet.code + ": " + packet.msg + " (" + ms + " ms)");
      } else {
        markRow(asked.row, "replied", packet.type + " in " + ms + " ms");
      }
      markRow(row, "reply", "reply to " + asked.packet.type);
    }
    switch (packet.type) {
      case "L":
        state.uid = packet.uid;
        state.retry = 0;
        setStatus("open", "open as uid " + packet.uid);
        state.historyTimer = setTimeout(askHistory, HISTORY_DELAY_MS);
        break;
      case "C":
        setStatus("closed", "closing: " + packet.msg);
        break;
      case "t": case "i": case "s":
        addMessage(packet, "live");
        if (packet.from === openPeer()) showTyping(packet.from, false);
        noteReceived(packet, "sent");
        sendReceipts();
        break;
      case "H":
        (packet.msg || []).forEach((m) => {
          addMessage(m, "history");
          if (m.from === state.uid) advanceSent(messageKey(m), m.state);
          else noteReceived(m, m.state);
        });
        sendReceipts();
        state.nextCursor = packet.more ? packet.next : null;
        $("history-more").disabled = !state.nextCursor;
        break;
      case "R":
        onReceipt(packet);
        break;
      case "Y":
        showTyping(packet.from, packet.msg === true);
        break;
    }
  }

  // --- connecting ---------------------------------------------------------------

  function tokenUrl() {
    return $("token-url").value.trim() || "IM/token";
  }

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
    return reply;
  }

  async function connect() {
    clearTimeout(state.retryTimer);
    state.retryTimer = null;
    state.userClosed = false;
    $("connect").disabled = true;
    $("disconnect").disabled = false;
    setStatus("connecting", "getting a token…");
    let issued;
    try {
      issued = await fetchToken();
    } catch (e) {
      setStatus("closed", e.message);
      logNote(e.message);
      scheduleReconnect();
      return;
    }
    if (state.userClosed) return;
    const shown = issued.url.replace(issued.token, "<token>");
    if (location.protocol === "https:" && issued.url.startsWith("ws:")) {
      logNote("warning: this page is on https, the browser may refuse " + shown);
    }
    logNote("token issued (valid " + issued.expires_in + " s), connecting to " + shown);
    setStatus("connecting", "connecting…");
    let ws;
    try {
      ws = new WebSocket(issued.url);
    } catch (e) {
      setStatus("closed", "cannot connect: " + e.message);
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    ws.onmessage = (event) => { if (state.ws === ws) onPacket(event.data); };
    ws.onclose = (event) => { if (state.ws === ws) onClosed(event); };
  }

  function onClosed(event) {
    state.ws = null;
    clearTimeout(state.historyTimer);
    state.historyTimer = null;
    const text = "closed " + event.code + (event.reason ? ": " + event.reason : "");
    setStatus("closed", text);
    logNote(text + (event.wasClean ? "" : " (not clean)"));
    state.pending.forEach((asked) => markRow(asked.row, "lost", "no reply: connection closed"));
    state.pending.clear();
    if (NO_RECONNECT.includes(event.code)) state.userClosed = true;
    scheduleReconnect();
  }

  function scheduleReconnect() {
    if (state.userClosed || !$("auto-reconnect").checked) {
      $("connect").disabled = false;
      $("disconnect").disabled = true;
      state.userClosed = true;
      return;
    }
    const delay = Math.min(MAX_BACKOFF_S, 2 ** state.retry);
    state.retry += 1;
    setStatus("closed", $("status").textContent + " — reconnecting in " + delay + " s");
    state.retryTimer = setTimeout(connect, delay * 1000);
  }

  function disconnect() {
    state.userClosed = true;
    clearTimeout(state.retryTimer);
    state.retryTimer = null;
    $("connect").disabled = false;
    $("disconnect").disabled = true;
    if (state.ws) state.ws.close(1000, "bye");
    else setStatus("closed", "not connected");
  }

  // --- wiring -----------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      if (state.ws) state.ws.close(1000, "reconnecting");
      state.ws = null;
      state.retry = 0;
      connect();
    });
    $("disconnect").addEventListener("click", disconnect);
    $("clear-log").addEventListener("click", () => { $("log").textContent = ""; });
    $("history-more").addEventListener("click", () => {
      if (state.nextCursor) send({ id: packetId(), to: 0, type: "H", msg: { after: state.nextCursor } });
    });
    document.querySelectorAll("form.packet").forEach((form) => {
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const packet = buildPacket(form.dataset.type, form);
        if (send(packet) && packet.type === "t") {
          form.elements.msg.value = "";
          stoppedTyping();
        }
      });
    });
    $("t-msg").addEventListener("input", typed);
    // Opening a conversation (or coming back to the page) reads what waits in it.
    $("t-to").addEventListener("input", () => { $("typing").hidden = true; sendReceipts(); });
    $("read-receipts").addEventListener("change", sendReceipts);
    document.addEventListener("visibilitychange", sendReceipts);
    const params = new URLSearchParams(location.search);
    if (params.get("uid")) {
      $("uid").value = params.get("uid");
      if (params.get("connect") !== null) $("login-form").requestSubmit();
    }
  });
}());
