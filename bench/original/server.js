#!/usr/bin/env node
// The original design's WebSocket server, in Node, as a competent Node
// engineer would write it: `ws`, ioredis, node:crypto.  `make bench`
// (bench/run.py, server kind "node_original") runs it with
// bench/original/migrator.js beside imd; together they are the whole stack
// the original design describes (Redis first, a migrator into MySQL).
//
//   node bench/original/server.js --port 8796 --redis-db 9 [--redis-port 6379]
//        [--prefix orig:] [--auto-pipelining 1]
//
// Login (the URL path, or ?token=): a JWT signed RS256, verified with
// node:crypto against the PEM in Redis under `publicKey` (read at start and
// again when a signature fails, in case the key was rotated); claims `type`
// "websocket", `id` a positive integer (or a string of digits), `exp` in the
// future and at most 120 s after `iat`, `jti` used once (SET jti:<jti> NX
// EXAT exp: one Redis command per login, as imd does).  Refused: a `C`
// packet saying why, then close 4001.  Accepted: `L`.
//
// Packets: `P` (pong), `t` and `i` as imd's contract §2 has them.  A `t`/`i`
// to B is checked against the sender's friend set `URS:<from>` and pushed
// onto `MQ` in one Redis round trip (a Lua script, EVALSHA through ioredis'
// defineCommand); only then the sender gets `A`, and B's connections on this
// process get the stored packet {"id","from","to","type","msg","ts"}.  Not
// a friend: `E` not_friend; Redis away: `E` unavailable.  What the original
// design has and this server leaves out (the bench does not send them):
// `T`, `S`, `O`, `H` (E unknown_type), dedup of a retried id in Redis (its
// migrator's unique key keeps one row), several nodes, rate limits.
'use strict';

const crypto = require('crypto');
const WebSocket = require('ws');
const Redis = require('ioredis');

const TOKEN_TYPE = 'websocket';
const MAX_TOKEN_LIFETIME = 120;   // s, as the original design's wstoken
const MAX_TEXT = 1023;            // code points of a `t`
const MAX_IMAGE_ID = 128;

// KEYS[1] URS:<from>, KEYS[2] MQ; ARGV[1] the recipient, ARGV[2] the packet.
const STORE = `
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
`;

function parseArgs(argv) {
  const opts = { port: 8796, 'redis-port': 6379, 'redis-db': null, prefix: '', 'auto-pipelining': 1 };
  for (let i = 2; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    opts[key] = key === 'prefix' ? argv[i + 1] : Number(argv[i + 1]);
  }
  if (opts['redis-db'] === null || Number.isNaN(opts['redis-db'])) throw new Error('--redis-db is required');
  return opts;
}

const opts = parseArgs(process.argv);
const prefix = opts.prefix;
const redis = new Redis({
  host: '127.0.0.1', port: opts['redis-port'], db: opts['redis-db'],
  enableAutoPipelining: Boolean(opts['auto-pipelining']),
});
redis.defineCommand('storeMessage', { numberOfKeys: 2, lua: STORE });
redis.on('error', (e) => process.stderr.write(`redis: ${e.message}\n`));

// --- login ----------------------------------------------------------------------

class Refused extends Error {}

let publicKey = null;      // a KeyObject
let publicPem = null;

async function loadKey() {
  const pem = await redis.get(prefix + 'publicKey');
  if (!pem) throw new Refused('server keys are not set up');
  if (pem === publicPem) return false;
  try {
    publicKey = crypto.createPublicKey(pem);
  } catch (e) {
    throw new Refused('server public key is not a PEM key');
  }
  if (publicKey.asymmetricKeyType !== 'rsa') throw new Refused('server public key is not an RSA key');
  publicPem = pem;
  return true;
}

function decodePart(part) {
  const value = JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new Error('not an object');
  return value;
}

function parseUid(value) {
  if (typeof value === 'number' && Number.isSafeInteger(value) && value > 0) return value;
  if (typeof value === 'string' && /^[0-9]{1,15}$/.test(value) && Number(value) > 0) return Number(value);
  return null;
}

// The user id a token names, or a Refused.
async function verifyToken(token) {
  if (!token) throw new Refused('missing token');
  const parts = token.split('.');
  if (parts.length !== 3) throw new Refused('malformed token');
  let header, claims;
  try {
    header = decodePart(parts[0]);
    claims = decodePart(parts[1]);
  } catch (e) {
    throw new Refused('malformed token');
  }
  if (header.alg !== 'RS256') throw new Refused('token algorithm must be RS256');
  const signed = Buffer.from(parts[0] + '.' + parts[1]);
  const signature = Buffer.from(parts[2], 'base64url');
  if (publicKey === null) await loadKey();
  if (!crypto.verify('sha256', signed, publicKey, signature)) {
    // the key may have been rotated since it was read
    if (!(await loadKey()) || !crypto.verify('sha256', signed, publicKey, signature)) {
      throw new Refused('bad token signature');
    }
  }
  const now = Date.now() / 1000;
  if (claims.type !== TOKEN_TYPE) throw new Refused('wrong token type');
  const { exp, iat, jti } = claims;
  if (typeof exp !== 'number' || !Number.isFinite(exp)) throw new Refused('token has no expiry');
  if (exp <= now) throw new Refused('token expired');
  if (iat !== undefined && (typeof iat !== 'number' || !Number.isFinite(iat) || iat > now + 60)) {
    throw new Refused('token issued in the future');
  }
  if (exp - (iat === undefined ? now : iat) > MAX_TOKEN_LIFETIME) throw new Refused('token lifetime over 120 s');
  if (typeof jti !== 'string' || jti.length === 0 || jti.length > 128) throw new Refused('token has no jti');
  const uid = parseUid(claims.id);
  if (uid === null) throw new Refused('token id is not a user id');
  if ((await redis.set(prefix + 'jti:' + jti, '1', 'EXAT', Math.ceil(exp), 'NX')) === null) {
    throw new Refused('token already used');
  }
  return uid;
}

function tokenOf(url) {
  const parsed = new URL(url, 'http://localhost');
  return parsed.searchParams.get('token') || decodeURIComponent(parsed.pathname.replace(/^\/+/, ''));
}

// --- connections -----------------------------------------------------------------

const users = new Map();     // uid -> Set of sockets on this process
let serverIds = 0;

function send(ws, packet) {
  if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(packet));
}

function error(ws, id, code, msg) {
  send(ws, { id, from: 0, type: 'E', msg, code });
}

function validId(id) {
  return (typeof id === 'string' && id.length > 0 && id.length <= 64) || (typeof id === 'number' && Number.isFinite(id));
}

// The reason a `t`/`i` msg is refused, or null.
function badMessage(type, msg) {
  if (type === 't') {
    if (typeof msg !== 'string' || msg.length === 0) return ['bad_packet', 'msg must be a non-empty string'];
    if (msg.length > MAX_TEXT && [...msg].length > MAX_TEXT) return ['too_long', 'text over 1023 characters'];
    return null;
  }
  if (typeof msg === 'string') {
    if (msg.length === 0) return ['bad_packet', 'msg must be an image id'];
    if (msg.length > MAX_IMAGE_ID) return ['too_long', 'image id over 128 characters'];
    return null;
  }
  return Number.isSafeInteger(msg) && msg > 0 ? null : ['bad_packet', 'msg must be an image id'];
}

function onMessage(ws, uid, data, isBinary) {
  if (isBinary) { error(ws, null, 'bad_packet', 'binary frames are not packets'); return; }
  let packet;
  try {
    packet = JSON.parse(data);
  } catch (e) {
    error(ws, null, 'bad_packet', 'not JSON');
    return;
  }
  if (packet === null || typeof packet !== 'object' || Array.isArray(packet)) {
    error(ws, null, 'bad_packet', 'not a JSON object');
    return;
  }
  const { id, type, msg } = packet;
  if (!validId(id)) { error(ws, null, 'bad_packet', 'id must be a string of 1-64 characters'); return; }
  if (type === 'P') { send(ws, { id, from: 0, type: 'P', msg: 'pong' }); return; }
  if (type !== 't' && type !== 'i') { error(ws, id, 'unknown_type', 'unknown packet type'); return; }
  const to = parseUid(packet.to);
  if (to === null) { error(ws, id, 'bad_packet', 'to must be a user id'); return; }
  const bad = badMessage(type, msg);
  if (bad) { error(ws, id, bad[0], bad[1]); return; }
  const stored = JSON.stringify({ id, from: uid, to, type, msg, ts: Date.now() });
  redis.storeMessage(prefix + 'URS:' + uid, prefix + 'MQ', to, stored).then((ok) => {
    if (!ok) { error(ws, id, 'not_friend', 'not your friend'); return; }
    send(ws, { id, from: 0, type: 'A', msg: 'success' });
    const recipients = users.get(to);
    if (recipients) for (const peer of recipients) if (peer.readyState === WebSocket.OPEN) peer.send(stored);
  }, () => error(ws, id, 'unavailable', 'storage unavailable, try again'));
}

const server = new WebSocket.Server({
  host: '127.0.0.1', port: opts.port, backlog: 4096, perMessageDeflate: false, maxPayload: 65536,
});

server.on('connection', (ws, request) => {
  let uid = null;
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => {
    if (uid === null) { error(ws, null, 'bad_packet', 'not logged in yet'); return; }
    onMessage(ws, uid, data, isBinary);
  });
  ws.on('close', () => {
    if (uid === null) return;
    const peers = users.get(uid);
    if (!peers) return;
    peers.delete(ws);
    if (!peers.size) users.delete(uid);
  });
  let token;
  try {
    token = tokenOf(request.url);
  } catch (e) {
    token = null;
  }
  verifyToken(token).then((who) => {
    if (ws.readyState !== WebSocket.OPEN) return;
    uid = who;
    let peers = users.get(uid);
    if (!peers) { peers = new Set(); users.set(uid, peers); }
    peers.add(ws);
    send(ws, { id: `${process.pid}-${++serverIds}`, from: 0, type: 'L', msg: 'login in', uid });
  }, (e) => {
    const reason = e instanceof Refused ? e.message : 'service unavailable, try again later';
    send(ws, { id: `${process.pid}-${++serverIds}`, from: 0, type: 'C', msg: reason });
    ws.close(4001, 'unauthorized');
  });
});

server.on('listening', () => process.stdout.write(
  `node original server listening on 127.0.0.1:${opts.port} (auto-pipelining ${opts['auto-pipelining'] ? 'on' : 'off'})\n`));
process.on('SIGTERM', () => {
  server.close();
  for (const peers of users.values()) for (const ws of peers) ws.terminate();
  redis.quit().finally(() => process.exit(0));
});
