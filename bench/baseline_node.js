#!/usr/bin/env node
// The Node reference: the original design's stack, a `ws` server that pushes
// each message onto a Redis list with ioredis (`LPUSH`) before acking and
// forwarding it.  The same wire subset as bench/baseline_relay.py: no auth
// (the URL path is the user id), no friend check, no dedup, no rate limit.
// `make bench` runs it beside imd and the Python relay in the same run.
//
//   node bench/baseline_node.js --port 8793 --redis-db 9 [--redis-port 6379]
'use strict';

const WebSocket = require('ws');
const Redis = require('ioredis');

const LIST_KEY = 'bench:node';

function parseArgs(argv) {
  const opts = { port: 8793, 'redis-port': 6379, 'redis-db': null };
  for (let i = 2; i < argv.length; i += 2) opts[argv[i].replace(/^--/, '')] = Number(argv[i + 1]);
  if (opts['redis-db'] === null || Number.isNaN(opts['redis-db'])) throw new Error('--redis-db is required');
  return opts;
}

const opts = parseArgs(process.argv);
const redis = new Redis({ host: '127.0.0.1', port: opts['redis-port'], db: opts['redis-db'] });
const users = new Map();     // uid -> Set of sockets

const server = new WebSocket.Server({
  host: '127.0.0.1', port: opts.port, backlog: 4096, perMessageDeflate: false, maxPayload: 65536,
});

server.on('connection', (ws, request) => {
  const uid = parseInt(request.url.replace(/^\/+/, ''), 10);
  if (!Number.isSafeInteger(uid)) { ws.close(1008); return; }
  let peers = users.get(uid);
  if (!peers) { peers = new Set(); users.set(uid, peers); }
  peers.add(ws);
  ws.send(JSON.stringify({ id: '0', from: 0, type: 'L', msg: 'login in', uid }));

  ws.on('message', (data) => {
    const packet = JSON.parse(data);
    const to = parseInt(packet.to, 10);
    const stored = JSON.stringify({ id: packet.id, from: uid, to, type: packet.type, msg: packet.msg, ts: Date.now() });
    redis.lpush(LIST_KEY, stored).then(() => {
      if (ws.readyState === WebSocket.OPEN) {
        ws.send(JSON.stringify({ id: packet.id, from: 0, type: 'A', msg: 'success' }));
      }
      const recipients = users.get(to);
      if (recipients) for (const peer of recipients) if (peer.readyState === WebSocket.OPEN) peer.send(stored);
    }, (e) => {
      if (ws.readyState === WebSocket.OPEN) {
        ws.send(JSON.stringify({ id: packet.id, from: 0, type: 'E', code: 'storage', msg: String(e.message) }));
      }
    });
  });

  ws.on('close', () => {
    peers.delete(ws);
    if (!peers.size && users.get(uid) === peers) users.delete(uid);
  });
  ws.on('error', () => {});
});

server.on('listening', () => process.stdout.write(`node reference listening on 127.0.0.1:${opts.port}\n`));
process.on('SIGTERM', () => {
  server.close();
  for (const peers of users.values()) for (const ws of peers) ws.terminate();
  redis.quit().finally(() => process.exit(0));
});
