#!/usr/bin/env node
// The original design's migrator, in Node: moves the Redis list `MQ` (pushed
// at the head by bench/original/server.js) into the MariaDB table `message`
// (bench/original/schema.sql) in batches, with ioredis and mysql2.
//
//   node bench/original/migrator.js --redis-db 9 --mysql-db imd_bench_orig
//        [--redis-port 6379] [--prefix orig:] [--batch 500] [--interval 0.2]
//
// Crash-safe, the reliable-queue way: one Lua call moves the oldest `batch`
// entries from the tail of `MQ` onto `MQ:processing`; one multi-row INSERT
// IGNORE (autocommit: all rows or none) writes them; only then are they
// deleted from `MQ:processing`, in the same Lua call that claims the next
// batch (one Redis round trip per batch).  Killed anywhere (kill -9), the
// batch stays in `MQ:processing` and the next start inserts it again first;
// the unique key (from_id, msg_id) makes that replay insert nothing twice
// (and keeps one row of a message the client sent twice).  An entry that is
// not a stored packet goes to `MQ:dead` with the batch's delete.  One
// migrator per `MQ`: a second one would replay the first one's batch.
// A full batch is followed by the next at once; after a short one it waits
// `interval` seconds; on an error it waits (doubling, up to 5 s) and
// replays the batch.  SIGTERM: finish the batch, then exit.
'use strict';

const Redis = require('ioredis');
const mysql = require('mysql2');

const MAX_BACKOFF = 5000;   // ms

// KEYS: MQ, MQ:processing, MQ:dead.  ARGV: batch size, done (1: the batch in
// MQ:processing is committed, delete it), then the dead entries of that batch.
// Returns {replayed (0/1), entries (newest first)}: with done = 0 a batch left
// in MQ:processing comes back whole, else the oldest entries of MQ move there
// (none with batch size 0: the last delete before an exit).
const CLAIM = `
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[2])
  for i = 3, #ARGV do redis.call('LPUSH', KEYS[3], ARGV[i]) end
else
  local left = redis.call('LRANGE', KEYS[2], 0, -1)
  if #left > 0 then return {1, left} end
end
local n = tonumber(ARGV[1])
if n < 1 then return {0, {}} end
local entries = redis.call('LRANGE', KEYS[1], -n, -1)
if #entries > 0 then
  redis.call('LTRIM', KEYS[1], 0, -n - 1)
  for i = 1, #entries, 1000 do
    redis.call('RPUSH', KEYS[2], unpack(entries, i, math.min(i + 999, #entries)))
  end
end
return {0, entries}
`;

const INSERT = 'INSERT IGNORE INTO message (msg_id, from_id, to_id, type, msg, ts) VALUES ?';

function parseArgs(argv) {
  const opts = { 'redis-port': 6379, 'redis-db': null, prefix: '', 'mysql-db': null, batch: 500, interval: 0.2 };
  for (let i = 2; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    opts[key] = key === 'prefix' || key === 'mysql-db' ? argv[i + 1] : Number(argv[i + 1]);
  }
  if (opts['redis-db'] === null || Number.isNaN(opts['redis-db'])) throw new Error('--redis-db is required');
  if (!opts['mysql-db']) throw new Error('--mysql-db is required');
  return opts;
}

const opts = parseArgs(process.argv);
const keys = [opts.prefix + 'MQ', opts.prefix + 'MQ:processing', opts.prefix + 'MQ:dead'];
// A claim that reached Redis but whose reply was lost must not be sent again
// on reconnect (ioredis does by default): sent twice with done = 1, the second
// would delete the batch the first one claimed.  After an error the loop
// claims with done = 0, which replays whatever MQ:processing holds.
const redis = new Redis({
  host: '127.0.0.1', port: opts['redis-port'], db: opts['redis-db'], autoResendUnfulfilledCommands: false,
});
redis.defineCommand('claim', { numberOfKeys: 3, lua: CLAIM });
redis.on('error', (e) => log(`redis: ${e.message}`));
const pool = mysql.createPool({
  host: '127.0.0.1', user: 'root', database: opts['mysql-db'], connectionLimit: 1, charset: 'utf8mb4',
}).promise();

function log(msg) { process.stdout.write(`migrator: ${msg}\n`); }
function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

// A stored packet as a row, or null (not one: it goes to MQ:dead).
function row(entry) {
  let p;
  try {
    p = JSON.parse(entry);
  } catch (e) {
    return null;
  }
  if (p === null || typeof p !== 'object' || p.id === undefined || p.id === null
      || !Number.isSafeInteger(p.from) || !Number.isSafeInteger(p.to) || typeof p.type !== 'string'
      || p.msg === undefined || !Number.isSafeInteger(p.ts)) return null;
  return [String(p.id), p.from, p.to, p.type, typeof p.msg === 'string' ? p.msg : JSON.stringify(p.msg), p.ts];
}

let stopping = false;
process.on('SIGTERM', () => { stopping = true; });

async function main() {
  let done = false;        // the batch in MQ:processing is committed
  let dead = [];
  let failures = 0;
  let migrated = 0, lastReport = Date.now();
  while (!stopping || done) {
    try {
      const ack = done, deadOfBatch = dead;
      done = false;     // until the next batch is committed (also when this call fails)
      dead = [];
      const [replayed, entries] = await redis.claim(...keys, stopping ? 0 : opts.batch, ack ? 1 : 0, ...deadOfBatch);
      if (stopping) break;
      if (replayed) log(`replaying ${entries.length} entries left in MQ:processing`);
      if (entries.length) {
        const rows = [];
        for (let i = entries.length - 1; i >= 0; i--) {   // oldest first
          const r = row(entries[i]);
          if (r) rows.push(r); else dead.push(entries[i]);
        }
        if (rows.length) await pool.query(INSERT, [rows]);
        done = true;
        migrated += rows.length;
      }
      failures = 0;
      if (Date.now() - lastReport >= 30000) {
        log(`${migrated} rows in the last ${((Date.now() - lastReport) / 1000).toFixed(0)} s`);
        migrated = 0;
        lastReport = Date.now();
      }
      if (!replayed && entries.length < opts.batch && !stopping) await sleep(opts.interval * 1000);
    } catch (e) {
      // the batch stays in MQ:processing (done is false): replayed next time
      failures++;
      log(`${e.message}; retrying`);
      await sleep(Math.min(opts.interval * 1000 * 2 ** failures, MAX_BACKOFF));
    }
  }
  await Promise.allSettled([redis.quit(), pool.end()]);
  process.exit(0);
}

log(`moving ${keys[0]} into ${opts['mysql-db']}.message, batches of ${opts.batch}`);
main();
