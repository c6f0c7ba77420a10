#!/usr/bin/env node
// imd load generator: one Node process with the `ws` client, speaking imd's
// protocol (contract §1-2).  Loopback only, bounded in time and count.
//
//   node bench/loadgen --conns FILE --mode closed|open|idle|login|storm [options]
//
// FILE: one connection a line, "uid url".  Lines 2k and 2k+1 are a friend
// pair: the first sends `t` packets to the second (closed/open modes).
// --receipts 1: the second answers each message with an `R` delivered
// receipt, and every tenth with an `R` read too (contract §7.1).
// storm: a reconnect storm (storm.js; the line may name spare tokens after the url).
// Prints progress on stderr and one JSON object (the result) on stdout.
'use strict';

const fs = require('fs');
const WebSocket = require('ws');
const { performance } = require('perf_hooks');
const { runStorm } = require('./storm');

function parseArgs(argv) {
  const opts = {
    mode: 'closed', window: 8, rate: 1000, warmup: 2, duration: 10,
    concurrency: 100, hold: 60, drain: 3, size: 64, host: '127.0.0.1', receipts: 0,
  };
  for (let i = 2; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    const value = argv[i + 1];
    opts[key] = /^[0-9.]+$/.test(value) ? Number(value) : value;
  }
  if (!opts.conns) throw new Error('--conns FILE is required');
  return opts;
}

const opts = parseArgs(process.argv);
const lines = fs.readFileSync(opts.conns, 'utf8').trim().split('\n');
const conns = lines.map((line) => {
  const [uid, url] = line.split(' ');
  const host = new URL(url).hostname;
  if (host !== '127.0.0.1' && host !== 'localhost') throw new Error('loopback only: ' + url);
  return { uid: Number(uid), url };
});

const errors = {};           // E packets by code, plus connection problems
function countError(code) { errors[code] = (errors[code] || 0) + 1; }

function log(msg) { process.stderr.write(`loadgen: ${msg}\n`); }

// --- connecting --------------------------------------------------------------

// Resolves with the socket once the server's L arrives; null on C/close/error.
function connectOne(conn, onPacket) {
  return new Promise((resolve) => {
    let settled = false;
    const ws = new WebSocket(conn.url, { perMessageDeflate: false, handshakeTimeout: 30000 });
    const done = (value) => { if (!settled) { settled = true; resolve(value); } };
    ws.on('message', (data) => {
      if (!settled) {
        const packet = JSON.parse(data);
        if (packet.type === 'L') { ws.imdUid = conn.uid; done(ws); return; }
        countError('login_' + (packet.type === 'C' ? 'refused' : packet.type));
        done(null);
        return;
      }
      onPacket(ws, data);
    });
    ws.on('error', (e) => { countError('socket_' + (e.code || 'error')); done(null); });
    ws.on('close', (code) => {
      if (!settled) { countError('close_' + code); done(null); }
      else if (!closingAll) countError('close_' + code);
    });
  });
}

let closingAll = false;

async function connectAll(list, onPacket) {
  const sockets = new Array(list.length);
  let next = 0;
  const started = performance.now();
  async function worker() {
    while (next < list.length) {
      const i = next++;
      sockets[i] = await connectOne(list[i], onPacket);
    }
  }
  const workers = [];
  for (let k = 0; k < Math.min(opts.concurrency, list.length); k++) workers.push(worker());
  await Promise.all(workers);
  return { sockets, seconds: (performance.now() - started) / 1000 };
}

function closeAll(sockets) {
  closingAll = true;
  return Promise.all(sockets.filter(Boolean).map((ws) => new Promise((resolve) => {
    if (ws.readyState === WebSocket.CLOSED) { resolve(); return; }
    const timer = setTimeout(() => { ws.terminate(); resolve(); }, 3000);
    ws.once('close', () => { clearTimeout(timer); resolve(); });
    ws.close(1000);
  })));
}

// --- statistics --------------------------------------------------------------

function percentiles(samples) {
  if (!samples.length) return { n: 0 };
  const sorted = Float64Array.from(samples).sort();
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  const r3 = (x) => Math.round(x * 1000) / 1000;
  return { n: sorted.length, p50: r3(at(0.5)), p99: r3(at(0.99)), p999: r3(at(0.999)), max: r3(sorted[sorted.length - 1]) };
}

function cpuSeconds(usage) { return (usage.user + usage.system) / 1e6; }

// --- message load (closed and open loop) -------------------------------------

async function runLoad() {
  const tag = Math.random().toString(36).slice(2, 8);
  const pad = 'x'.repeat(Math.max(0, opts.size - 14));
  let measuring = false;
  let stopped = false;
  let acked = 0, delivered = 0, sent = 0, failed = 0, ackedTotal = 0;
  let receiptsAcked = 0, receiptsRelayed = 0, receiptsSent = 0, receiptSeq = 0;
  const ackLatency = [], e2eLatency = [], receiptLatency = [];

  function sendReceipt(ws, to, state, id) {
    const rid = `${tag}-r${receiptSeq++}`;
    ws.receipts.set(rid, performance.now());
    ws.send(`{"id":"${rid}","to":${to},"type":"R","msg":{"state":"${state}","ids":["${id}"]}}`);
    receiptsSent++;
  }

  function onPacket(ws, data) {
    const now = performance.now();
    const packet = JSON.parse(data);
    const type = packet.type;
    if ((type === 'A' || type === 'E') && ws.receipts && ws.receipts.has(packet.id)) {
      const t0 = ws.receipts.get(packet.id);
      ws.receipts.delete(packet.id);
      if (type === 'A') {
        if (measuring) { receiptsAcked++; receiptLatency.push(now - t0); }
      } else {
        countError('receipt_' + packet.code);
      }
    } else if (type === 'A' || type === 'E') {
      const s = ws.sender;
      const t0 = s && s.inFlight.get(packet.id);
      if (t0 === undefined) { countError('unexpected_' + type); return; }
      s.inFlight.delete(packet.id);
      if (type === 'A') {
        ackedTotal++;
        if (measuring) { acked++; ackLatency.push(now - t0); }
      } else {
        countError(packet.code);
        if (measuring) failed++;
      }
      if (opts.mode === 'closed' && !stopped) send(s);
    } else if (type === 't') {
      if (measuring) { delivered++; e2eLatency.push(now - parseFloat(packet.msg)); }
      if (opts.receipts && !stopped) {
        if (!ws.receipts) ws.receipts = new Map();
        sendReceipt(ws, packet.from, 'delivered', packet.id);
        ws.readCount = (ws.readCount || 0) + 1;
        if (ws.readCount % 10 === 0) sendReceipt(ws, packet.from, 'read', packet.id);
      }
    } else if (type === 'R') {
      if (measuring) receiptsRelayed++;
    } else if (type === 'C') {
      countError('closed_by_server');
    } else {
      countError('unexpected_' + type);
    }
  }

  function send(s) {
    const id = `${tag}-${s.seq++}`;
    const t0 = performance.now();
    s.inFlight.set(id, t0);
    s.ws.send(`{"id":"${id}","to":${s.to},"type":"t","msg":"${t0.toFixed(3)} ${pad}"}`);
    sent++;
  }

  log(`connecting ${conns.length}`);
  const { sockets, seconds: connectSeconds } = await connectAll(conns, onPacket);
  const senders = [];
  for (let i = 0; i + 1 < sockets.length; i += 2) {
    if (!sockets[i] || !sockets[i + 1]) continue;
    const s = { ws: sockets[i], to: conns[i + 1].uid, seq: 0, inFlight: new Map() };
    sockets[i].sender = s;
    senders.push(s);
  }
  log(`${sockets.filter(Boolean).length} connected in ${connectSeconds.toFixed(1)}s; ${senders.length} senders`);

  let openTimer = null;
  if (opts.mode === 'closed') {
    for (const s of senders) for (let k = 0; k < opts.window; k++) send(s);
  } else {
    // Open loop: opts.rate msgs/s in all, round robin over the senders,
    // scheduled every 2 ms from the elapsed time (no coordinated omission:
    // a late tick sends what it owes).
    const start = performance.now();
    let owed = 0, next = 0;
    const maxInFlight = 1000;
    openTimer = setInterval(() => {
      const due = Math.floor((performance.now() - start) / 1000 * opts.rate);
      while (owed < due) {
        const s = senders[next++ % senders.length];
        owed++;
        if (s.inFlight.size >= maxInFlight) { countError('generator_backlog'); continue; }
        send(s);
      }
    }, 2);
  }

  await sleep(opts.warmup * 1000);
  measuring = true;
  process.stdout.write('{"measure":"start"}\n');  // the driver reads the server's CPU here
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await sleep(opts.duration * 1000);
  measuring = false;
  process.stdout.write('{"measure":"end"}\n');
  const elapsed = (performance.now() - t0) / 1000;
  const genCpu = cpuSeconds(process.cpuUsage(cpu0));
  stopped = true;
  if (openTimer) clearInterval(openTimer);
  // Let the messages in flight finish, so the server is idle when we close.
  const deadline = performance.now() + opts.drain * 1000;
  const receiptsOut = () => sockets.reduce((n, ws) => n + (ws && ws.receipts ? ws.receipts.size : 0), 0);
  while (performance.now() < deadline && (senders.some((s) => s.inFlight.size) || receiptsOut())) await sleep(20);
  const unanswered = senders.reduce((n, s) => n + s.inFlight.size, 0) + receiptsOut();
  await closeAll(sockets);
  return {
    mode: opts.mode, connections: conns.length, connected: sockets.filter(Boolean).length,
    senders: senders.length, window: opts.mode === 'closed' ? opts.window : null,
    offered_rate: opts.mode === 'open' ? opts.rate : null,
    connect_seconds: round(connectSeconds), measured_seconds: round(elapsed),
    acked_per_s: round(acked / elapsed), delivered_per_s: round(delivered / elapsed),
    failed_per_s: round(failed / elapsed), sent_total: sent, unanswered_at_end: unanswered,
    acked_total: ackedTotal,   // warm-up and drain included: the messages stored
    ack_latency_ms: percentiles(ackLatency), e2e_latency_ms: percentiles(e2eLatency),
    receipts: Boolean(opts.receipts), receipts_sent_total: receiptsSent,
    receipts_acked_per_s: round(receiptsAcked / elapsed), receipts_relayed_per_s: round(receiptsRelayed / elapsed),
    receipt_ack_latency_ms: percentiles(receiptLatency),
    errors, generator_cpu_s: round(genCpu),
    generator_us_per_msg: acked ? round(genCpu * 1e6 / acked) : null,
  };
}

// --- idle connections and logins ---------------------------------------------

async function runIdle() {
  log(`connecting ${conns.length} idle`);
  const { sockets, seconds } = await connectAll(conns, () => countError('unexpected_packet'));
  const connected = sockets.filter(Boolean).length;
  // Tell the driver, then hold until it writes a line (or `hold` seconds).
  process.stdout.write(JSON.stringify({ ready: true, connected }) + '\n');
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, opts.hold * 1000);
    process.stdin.once('data', () => { clearTimeout(timer); resolve(); });
  });
  const stillOpen = sockets.filter((ws) => ws && ws.readyState === WebSocket.OPEN).length;
  await closeAll(sockets);
  process.stdin.pause();
  return { mode: 'idle', connections: conns.length, connected, still_open: stillOpen,
           connect_seconds: round(seconds), errors };
}

async function runLogin() {
  log(`logging in ${conns.length}, ${opts.concurrency} at a time`);
  const cpu0 = process.cpuUsage();
  const { sockets, seconds } = await connectAll(conns, () => {});
  const genCpu = cpuSeconds(process.cpuUsage(cpu0));
  const connected = sockets.filter(Boolean).length;
  await closeAll(sockets);
  return { mode: 'login', connections: conns.length, logged_in: connected, concurrency: opts.concurrency,
           seconds: round(seconds), logins_per_s: round(connected / seconds), generator_cpu_s: round(genCpu), errors };
}

function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }
function round(x) { return Math.round(x * 1000) / 1000; }

const modes = { closed: runLoad, open: runLoad, idle: runIdle, login: runLogin,
                storm: () => runStorm(opts, lines, log) };
modes[opts.mode]().then((result) => {
  result.generator_cpu_total_s = round(cpuSeconds(process.cpuUsage()));
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(0);
}, (e) => { log(e.stack); process.exit(1); });
