// Reconnect storm (`--mode storm`): every connection logged in and caught
// up, then, on each `storm` command from the driver (stdin), the driver
// restarts or kills the server and every client comes back as the
// JavaScript SDK does: reconnect after backoffDelay(attempt) (exponential
// backoff with full jitter, 500 ms .. 30 s), log in with a fresh token, send
// its catch-up request and wait for the reply.  One JSON line a storm on
// stdout: the times from the command until 50/99/100 % were logged in and
// caught up again, the refusals by reason, the attempts.
//
// Commands, one a line on stdin:
//   storm <label> <tokens file> <deadline s>   arm a storm ("uid token token ..."
//                                              a line: the tokens its logins use)
//   close                                      close every connection and end
'use strict';

const fs = require('fs');
const readline = require('readline');
const { performance } = require('perf_hooks');
// (required when a storm runs, not when the pure helpers are loaded: the
// repository's tests load them without bench/'s npm packages installed)
let WebSocket = null;
function webSocketClass() {
  if (WebSocket === null) WebSocket = require('ws');
  return WebSocket;
}
const { backoffDelay, SDK_MIN_DELAY_MS, SDK_MAX_DELAY_MS } = require('./backoff');

// The catch-up step after a login: today the history request of contract §3
// (`H` with {since, limit}, and {after} for the next page while `more`).
// Contract §10 sync (`H {"sync": P}`) is not on main yet: when it lands,
// these two functions are what changes (the request becomes
// {"sync": <the client's position>} and catchUpDone follows its reply).
function catchUpRequest(client, previous) {
  const msg = previous && previous.more ? { after: previous.next } : { since: client.lastTs, limit: 100 };
  client.catchUpId = `cu-${client.uid}-${client.catchUpSeq++}`;
  return JSON.stringify({ id: client.catchUpId, to: 0, type: 'H', msg });
}

function catchUpDone(reply) {
  return !reply.more;
}

// a refusal's reason: the HTTP status of a refused upgrade, a socket error's
// code, or the close code of a socket closed before its `L`
function refusalReason(error) {
  const status = /Unexpected server response: (\d+)/.exec(error.message || '');
  if (status) return 'http_' + status[1];
  if (/Opening handshake has timed out/.test(error.message || '')) return 'handshake_timeout';
  return 'socket_' + (error.code || 'error');
}

// the time at which `fraction` of `total` had happened (sorted `times`), or null
function timeOfFraction(times, total, fraction) {
  const k = Math.ceil(fraction * total);
  return k >= 1 && k <= times.length ? times[k - 1] : null;
}

function cpuSeconds(usage) { return (usage.user + usage.system) / 1e6; }

function r3(x) { return x === null ? null : Math.round(x * 1000) / 1000; }

function stormSummary(storm, clients, now) {
  const total = clients.length;
  const logins = storm.logins.slice().sort((a, b) => a - b);
  const synced = storm.synced.slice().sort((a, b) => a - b);
  const fractions = (times, of = total) => ({ p50: r3(timeOfFraction(times, of, 0.5)),
                                             p99: r3(timeOfFraction(times, of, 0.99)),
                                             p100: r3(timeOfFraction(times, of, 1)) });
  // logins per second: over the whole storm (from the mark to the last
  // login), and the busiest whole second
  const buckets = new Map();
  for (const t of logins) buckets.set(Math.floor(t), (buckets.get(Math.floor(t)) || 0) + 1);
  const waiting = {};
  for (const at of [5, 10, 30, 60, 120]) {
    if (at <= (now - storm.t0) / 1000) waiting[at] = total - logins.filter((t) => t <= at).length;
  }
  const attempts = clients.map((c) => c.stormAttempts);
  const refusedClients = clients.filter((c) => c.stormReasons.size > 0);
  const syncedOf = (some) => fractions(some.filter((c) => c.syncedAt !== null).map((c) => c.syncedAt)
    .sort((a, b) => a - b), some.length);
  return {
    storm: storm.label, connections: total,
    dropped: clients.filter((c) => c.dropped).length,
    logged_in: logins.length, synced: synced.length,
    login_s: fractions(logins), synced_s: fractions(synced),
    first_login_s: r3(logins.length ? logins[0] : null),
    logins_per_s: logins.length ? Math.round(logins.length / logins[logins.length - 1]) : 0,
    peak_logins_per_s: Math.max(0, ...buckets.values()),
    refused: storm.refused,
    refused_clients: refusedClients.length,
    refused_clients_synced_s: syncedOf(refusedClients),
    // by reason: how many clients were refused so at least once, and when
    // those were caught up (50/99/100 % of them)
    refused_clients_by_reason: Object.fromEntries(Object.keys(storm.refused).map((reason) => {
      const hit = clients.filter((c) => c.stormReasons.has(reason));
      return [reason, { clients: hit.length, synced_s: syncedOf(hit) }];
    })),
    not_logged_in_after_s: waiting,
    attempts: attempts.reduce((a, b) => a + b, 0), max_attempts: Math.max(0, ...attempts),
    catch_up_errors: storm.catchUpErrors, drops_after_login: storm.dropsAfterLogin,
    out_of_tokens: clients.filter((c) => c.tokenIndex >= c.tokens.length).length,
    seconds: r3((now - storm.t0) / 1000),
    generator_cpu_s: r3(cpuSeconds(process.cpuUsage(storm.cpu0))),
    backoff_ms: { min: SDK_MIN_DELAY_MS, max: SDK_MAX_DELAY_MS },
  };
}

async function runStorm(opts, lines, log) {
  const clients = lines.map((line) => {
    const [uid, url, ...spare] = line.split(' ');
    const cut = url.lastIndexOf('/') + 1;
    return {
      uid: Number(uid), base: url.slice(0, cut), tokens: [url.slice(cut), ...spare], tokenIndex: 0,
      ws: null, up: false, attempt: 0, authRetried: false, timer: null, lastTs: 0, catchUpSeq: 0, catchUpId: null,
      dropped: false, syncedAt: null, stormAttempts: 0, stormReasons: new Set(), onSynced: null,
    };
  });
  let storm = null;   // the armed storm, null before the first
  let closing = false;
  const startup = { refused: {}, drops: 0 };

  function count(bag, key) { bag[key] = (bag[key] || 0) + 1; }

  function schedule(client, delayMs) {
    clearTimeout(client.timer);
    client.timer = setTimeout(() => { client.timer = null; connect(client); }, delayMs);
  }

  function retry(client) {
    client.attempt += 1;
    schedule(client, backoffDelay(client.attempt, SDK_MIN_DELAY_MS, SDK_MAX_DELAY_MS, Math.random));
  }

  function connect(client) {
    if (closing) return;
    if (client.tokenIndex >= client.tokens.length) {
      count(storm ? storm.refused : startup.refused, 'out_of_tokens');
      if (client.onSynced) client.onSynced(false);
      return;
    }
    if (storm) client.stormAttempts += 1;
    const ws = new (webSocketClass())(client.base + client.tokens[client.tokenIndex],
                             { perMessageDeflate: false, handshakeTimeout: 30000 });
    client.ws = ws;
    let loggedIn = false;
    let reason = null;
    ws.on('upgrade', () => { client.tokenIndex += 1; });   // the token is spent once the upgrade is answered
    ws.on('message', (data) => {
      const packet = JSON.parse(data);
      if (!loggedIn) {
        // a C: its close code, next, is the reason
        if (packet.type !== 'L') { if (packet.type !== 'C') reason = 'login_' + packet.type; return; }
        loggedIn = true;
        client.up = true;
        client.attempt = 0;
        client.authRetried = false;
        if (storm && client.dropped) storm.logins.push((performance.now() - storm.t0) / 1000);
        ws.send(catchUpRequest(client, null));
        return;
      }
      if (packet.id !== client.catchUpId) return;   // C before a close, pushed packets
      if (packet.type === 'E') {
        if (storm) count(storm.catchUpErrors, packet.code);
        // the SDK retries a sync refused `unavailable` or `rate_limited` after a backoff
        client.catchUpAttempt = (client.catchUpAttempt || 0) + 1;
        setTimeout(() => { if (client.ws === ws && ws.readyState === WebSocket.OPEN) ws.send(catchUpRequest(client, null)); },
                   backoffDelay(client.catchUpAttempt, SDK_MIN_DELAY_MS, SDK_MAX_DELAY_MS, Math.random));
        return;
      }
      if (packet.type !== 'H') return;
      if (!catchUpDone(packet)) { ws.send(catchUpRequest(client, packet)); return; }
      client.catchUpAttempt = 0;
      if (storm && client.dropped && client.syncedAt === null) {
        client.syncedAt = (performance.now() - storm.t0) / 1000;
        storm.synced.push(client.syncedAt);
        if (storm.synced.length === clients.length) storm.finish();
      }
      if (client.onSynced) { const done = client.onSynced; client.onSynced = null; done(true); }
    });
    ws.on('error', (e) => { if (!reason) reason = refusalReason(e); });
    ws.on('close', (code) => {
      if (client.ws !== ws || closing) return;
      client.ws = null;
      client.up = false;
      if (storm && !storm.done) client.dropped = true;
      if (loggedIn) {
        // dropped after its login: the storm itself (or, before a storm was
        // armed, a drop nobody asked for)
        if (!storm) startup.drops += 1;
        else if (client.syncedAt !== null) storm.dropsAfterLogin += 1;
        retry(client);
        return;
      }
      const why = reason || 'close_' + code;
      if (storm) { count(storm.refused, why); client.stormReasons.add(why); } else count(startup.refused, why);
      if (code === 4001 && !client.authRetried) {
        // the SDK: once, a fresh token at once (a token is never used twice)
        client.authRetried = true;
        schedule(client, 0);
        return;
      }
      retry(client);
    });
  }

  // --- logging in, `concurrency` at a time -----------------------------------
  log(`storm: logging in ${clients.length}, ${opts.concurrency} at a time`);
  const t0 = performance.now();
  let next = 0;
  const deadline = Date.now() + opts.hold * 1000;
  async function worker() {
    while (next < clients.length && Date.now() < deadline) {
      const client = clients[next++];
      await new Promise((resolve) => {
        const timer = setTimeout(() => resolve(false), Math.max(0, deadline - Date.now()));
        client.onSynced = (ok) => { clearTimeout(timer); resolve(ok); };
        connect(client);
      });
    }
  }
  await Promise.all(Array.from({ length: Math.min(opts.concurrency, clients.length) }, worker));
  const connected = clients.filter((c) => c.up).length;
  process.stdout.write(JSON.stringify({ ready: true, connected, connect_seconds: r3((performance.now() - t0) / 1000),
                                        refused: startup.refused }) + '\n');

  // --- storms, one per command ---------------------------------------------
  const input = readline.createInterface({ input: process.stdin });
  const results = [];
  for await (const line of input) {
    const [command, label, tokensFile, deadlineS] = line.trim().split(' ');
    if (command !== 'storm') break;
    const tokens = new Map(fs.readFileSync(tokensFile, 'utf8').trim().split('\n').map((row) => {
      const [uid, ...list] = row.split(' ');
      return [Number(uid), list];
    }));
    for (const client of clients) {
      // this storm's tokens (the unspent ones of before may have expired)
      client.tokens = client.tokens.slice(0, client.tokenIndex).concat(tokens.get(client.uid) || []);
      client.dropped = false;
      client.syncedAt = null;
      client.stormAttempts = 0;
      client.stormReasons = new Set();
    }
    const result = await new Promise((resolve) => {
      storm = { label, t0: performance.now(), cpu0: process.cpuUsage(), logins: [], synced: [], refused: {},
                catchUpErrors: {}, dropsAfterLogin: 0, done: false };
      const current = storm;
      const timer = setTimeout(() => current.finish(), Number(deadlineS) * 1000);
      current.finish = () => {
        if (current.done) return;
        current.done = true;
        clearTimeout(timer);
        resolve(stormSummary(current, clients, performance.now()));
      };
      process.stdout.write(JSON.stringify({ armed: label }) + '\n');
    });
    log(`storm ${label}: ${result.synced} of ${result.connections} back in ${result.seconds}s`);
    results.push(result);
    process.stdout.write(JSON.stringify({ storm_result: result }) + '\n');
  }
  closing = true;
  for (const client of clients) clearTimeout(client.timer);
  await Promise.all(clients.filter((c) => c.ws).map((c) => new Promise((resolve) => {
    const ws = c.ws;
    if (ws.readyState === WebSocket.CLOSED) { resolve(); return; }
    const timer = setTimeout(() => { ws.terminate(); resolve(); }, 3000);
    ws.once('close', () => { clearTimeout(timer); resolve(); });
    if (ws.readyState === WebSocket.OPEN) ws.close(1000); else ws.terminate();
  })));
  return { mode: 'storm', connections: clients.length, connected, startup_refused: startup.refused,
           startup_drops: startup.drops, storms: results };
}

module.exports = { runStorm, catchUpRequest, catchUpDone, timeOfFraction, refusalReason };
