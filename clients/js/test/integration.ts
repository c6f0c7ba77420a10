// The SDK against a REAL imd, through a TCP proxy that cuts connections.
//
// Not a unit test (node --test does not pick it up): tests/test_sdk_integration.py
// starts imd (ws + http, one node) and a separate migrator process, then runs
//
//   node build/integration.js --http http://127.0.0.1:H --ws 127.0.0.1:W \
//        --seeds 1,2,3 --messages 500 --first-uid 5000
//
// For each seed, two ImdClients (uids first-uid + 2k and + 2k + 1, friends)
// using the ws package exchange --messages messages in each direction, each
// through its own proxy (node:net on 127.0.0.1) that cuts its connections at
// random moments every 0.2-1 s: at once, or in the middle of the next chunk in
// either direction (a prefix of it is forwarded, then both sockets are
// destroyed: mid-frame). Tokens come from POST /IM/token (dev auth), a fresh
// one per connection. Halfway through a seed it writes the line
// {"event": "kill-migrator", "seed": S} on stdout: the Python side kills the
// migrator with SIGKILL and starts another.
//
// Then it checks what the app sees: each side's "message" events hold every
// message of the other exactly once, in the order sent, in pos order, and no
// other; every send() resolved; and after one more cut and reconnect (with
// its sync) still nothing more. One JSON line per seed on stdout
// ({"event": "seed", "ok": ..., figures, the acked (from, id) pairs for the
// MySQL check}); a failure names its seed on stderr too. Exit status 1 when
// a seed failed.
import net from "node:net";
import { performance } from "node:perf_hooks";

import WebSocket from "ws";

import { ImdClient } from "../dist/index.js";
import type { AckPacket, MessagePacket, StateEvent, WebSocketConstructor } from "../dist/index.js";

interface Options {
  http: string;
  ws: string;
  seeds: number[];
  messages: number;
  firstUid: number;
  seedTimeoutMs: number;
  /** Bounds of the wait between two cuts (200 and 1000 ms unless given). */
  cutMinMs: number;
  cutMaxMs: number;
}

function parseArgs(argv: string[]): Options {
  const values = new Map<string, string>();
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i];
    const value = argv[i + 1];
    if (!key?.startsWith("--") || value === undefined) throw new Error(`usage: --http URL --ws HOST:PORT --seeds a,b,... [--messages N] [--first-uid U]; got ${argv.join(" ")}`);
    values.set(key.slice(2), value);
  }
  const need = (key: string): string => {
    const value = values.get(key);
    if (value === undefined) throw new Error(`--${key} is required`);
    return value;
  };
  const seeds = need("seeds").split(",").map((s) => Number(s));
  if (seeds.some((s) => !Number.isInteger(s) || s < 0)) throw new Error("--seeds: non-negative integers, comma-separated");
  return {
    http: need("http").replace(/\/+$/, ""),
    ws: need("ws"),
    seeds,
    messages: Number(values.get("messages") ?? "500"),
    firstUid: Number(values.get("first-uid") ?? "5000"),
    seedTimeoutMs: Number(values.get("seed-timeout-ms") ?? "60000"),
    cutMinMs: Number(values.get("cut-min-ms") ?? "200"),
    cutMaxMs: Number(values.get("cut-max-ms") ?? "1000"),
  };
}

/** mulberry32: a small seeded generator, so a seed replays the same choices. */
function generator(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function emit(line: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify(line) + "\n");
}

// ---- the proxy ---------------------------------------------------------------

interface CutFigures {
  /** Cuts that found a connection open. */
  cuts: number;
  /** Of those, cut after a prefix of a chunk going to imd / coming from imd. */
  partialUp: number;
  partialDown: number;
  /** Connections the proxy accepted. */
  connections: number;
}

type Pending = "up" | "down" | null;

interface Pair {
  client: net.Socket;
  upstream: net.Socket;
  /** Cut in the middle of the next chunk going this way. */
  pending: Pending;
  /** Being cut: nothing more is forwarded. */
  cutting: boolean;
}

/** A TCP proxy on 127.0.0.1 in front of imd's ws port that cuts its connections at random moments. */
class CuttingProxy {
  readonly figures: CutFigures = { cuts: 0, partialUp: 0, partialDown: 0, connections: 0 };
  private readonly server: net.Server;
  private readonly pairs = new Set<Pair>();
  private timer: NodeJS.Timeout | null = null;
  private running = false;

  constructor(
    private readonly target: { host: string; port: number },
    private readonly random: () => number,
    private readonly between: { min: number; max: number },
  ) {
    this.server = net.createServer((client) => this.accept(client));
  }

  async listen(): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    return (this.server.address() as net.AddressInfo).port;
  }

  start(): void {
    this.running = true;
    this.schedule();
  }

  stop(): void {
    this.running = false;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  /** Cuts every open connection at once; resolves to how many it cut. */
  cutNow(): number {
    let cut = 0;
    for (const pair of [...this.pairs]) {
      this.destroy(pair);
      cut++;
    }
    return cut;
  }

  async close(): Promise<void> {
    this.stop();
    this.cutNow();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private schedule(): void {
    if (!this.running) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.cut();
      this.schedule();
    }, this.between.min + this.random() * (this.between.max - this.between.min));
  }

  private cut(): void {
    const mode = this.random();
    for (const pair of this.pairs) {
      this.figures.cuts++;
      if (mode < 1 / 3) {
        this.destroy(pair);
      } else {
        // in the middle of the next chunk in that direction; at once if none comes soon
        pair.pending = mode < 2 / 3 ? "up" : "down";
        setTimeout(() => {
          if (this.pairs.has(pair) && !pair.cutting) this.destroy(pair);
        }, 100);
      }
    }
  }

  private accept(client: net.Socket): void {
    this.figures.connections++;
    const upstream = net.connect(this.target.port, this.target.host);
    const pair: Pair = { client, upstream, pending: null, cutting: false };
    this.pairs.add(pair);
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    const forward = (from: net.Socket, to: net.Socket, direction: "up" | "down") => {
      from.on("data", (chunk: Buffer) => {
        if (!this.pairs.has(pair) || pair.cutting) return;
        if (pair.pending === direction) {
          pair.pending = null;
          pair.cutting = true;
          if (chunk.length > 1) {
            const keep = 1 + Math.floor(this.random() * (chunk.length - 1));
            to.write(chunk.subarray(0, keep));
            if (direction === "up") this.figures.partialUp++;
            else this.figures.partialDown++;
          }
          // the prefix leaves before the connection is torn down
          to.end(() => this.destroy(pair));
          setTimeout(() => this.destroy(pair), 20);
          return;
        }
        if (!to.write(chunk)) {
          from.pause();
          to.once("drain", () => from.resume());
        }
      });
    };
    forward(client, upstream, "up");
    forward(upstream, client, "down");
    for (const socket of [client, upstream]) {
      socket.on("error", () => this.destroy(pair));
      socket.on("close", () => this.destroy(pair));
    }
  }

  private destroy(pair: Pair): void {
    this.pairs.delete(pair);
    pair.cutting = true;
    pair.client.destroy();
    pair.upstream.destroy();
  }
}

// ---- one seed ------------------------------------------------------------------

interface Side {
  uid: number;
  client: ImdClient;
  proxy: CuttingProxy;
  /** The other side's messages as the "message" handler saw them. */
  received: MessagePacket[];
  /** Anything else the handler saw (must stay empty). */
  unexpected: MessagePacket[];
  acks: AckPacket[];
  /** Text of the n-th message sent -> its A (once resolved). */
  sent: Array<AckPacket | null>;
  rejected: string[];
  tokens: number;
  logins: number;
  /** H sync requests, and H after pages of them (the client sends no other H here). */
  counts: Counts;
  warnings: string[];
  lastState: string;
}

class Failure extends Error {}

interface Counts {
  syncs: number;
  syncPages: number;
  /** E packets the server sent, by code. */
  errors: Record<string, number>;
}

/** The ws package's WebSocket, counting the sync requests the client sends (its first page, and the pages after). */
function countingWebSocket(counts: Counts): WebSocketConstructor {
  class Counting extends WebSocket {
    constructor(...args: ConstructorParameters<typeof WebSocket>) {
      super(...args);
      this.on("message", (data: Buffer) => {
        const text = String(data);
        if (!text.includes('"type":"E"') && !text.includes('"type": "E"')) return;
        const packet = JSON.parse(text) as { code?: string };
        const code = String(packet.code);
        counts.errors[code] = (counts.errors[code] ?? 0) + 1;
      });
    }

    override send(data: unknown, ...rest: unknown[]): void {
      if (typeof data === "string" && data.includes('"type":"H"')) {
        const packet = JSON.parse(data) as { msg?: { sync?: unknown; after?: unknown } };
        if (packet.msg && packet.msg.sync !== undefined) counts.syncs++;
        else if (packet.msg && packet.msg.after !== undefined) counts.syncPages++;
      }
      (super.send as (...args: unknown[]) => void)(data, ...rest);
    }
  }
  return Counting as unknown as WebSocketConstructor;
}

async function token(http: string, uid: number): Promise<string> {
  const res = await fetch(`${http}/IM/token`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ id: uid }),
  });
  if (!res.ok) throw new Error(`POST /IM/token for ${uid}: ${res.status} ${await res.text()}`);
  return ((await res.json()) as { token: string }).token;
}

function makeSide(options: Options, uid: number, proxy: CuttingProxy, proxyPort: number, random: () => number): Side {
  const counts: Counts = { syncs: 0, syncPages: 0, errors: {} };
  const side: Side = {
    uid,
    proxy,
    received: [],
    unexpected: [],
    acks: [],
    sent: [],
    rejected: [],
    tokens: 0,
    logins: 0,
    counts,
    warnings: [],
    lastState: "idle",
    client: new ImdClient({
      token: async () => {
        side.tokens++;
        return token(options.http, uid);
      },
      url: `ws://127.0.0.1:${proxyPort}`,
      WebSocket: countingWebSocket(counts),
      reconnect: { minDelayMs: 20, maxDelayMs: 400 },
      pingIntervalMs: 5000,
      pingTimeoutMs: 5000,
      loginTimeoutMs: 5000,
      syncPageSize: 25, // small pages (200 by default): a sync after a cut often pages, and may be cut in the middle
      random,
    }),
  };
  side.client.on("state", (event: StateEvent) => {
    if (event.warning) side.warnings.push(event.warning);
    else side.lastState = event.state;
    if (event.state === "syncing" && !event.warning) side.logins++;
  });
  return side;
}

function textOf(seed: number, uid: number, n: number): string {
  return `seed ${seed} from ${uid} #${n}`;
}

/** Sends `count` messages to `to` in random bursts with random pauses; resolves when every send() has settled. */
async function sendAll(seed: number, side: Side, to: number, count: number, random: () => number, onAck: () => void): Promise<void> {
  const settled: Array<Promise<void>> = [];
  let n = 0;
  while (n < count) {
    const burst = Math.min(count - n, 1 + Math.floor(random() * 8));
    for (let k = 0; k < burst; k++, n++) {
      const index = n;
      side.sent.push(null);
      settled.push(
        side.client.send({ to, type: "t", msg: textOf(seed, side.uid, index) }).then(
          (ack) => {
            side.sent[index] = ack;
            side.acks.push(ack);
            onAck();
          },
          (err: unknown) => {
            side.rejected.push(`#${index}: ${String(err)}`);
          },
        ),
      );
    }
    await sleep(random() * 40);
  }
  await Promise.all(settled);
}

function check(seed: number, from: Side, to: Side, count: number): void {
  const where = `seed ${seed}, ${from.uid} -> ${to.uid}`;
  if (from.rejected.length) throw new Failure(`${where}: ${from.rejected.length} send() rejected: ${from.rejected.slice(0, 3).join("; ")}`);
  const missing = from.sent.findIndex((ack) => ack === null);
  if (missing >= 0) throw new Failure(`${where}: send() #${missing} never resolved`);
  if (to.unexpected.length) {
    throw new Failure(`${where}: ${to.unexpected.length} unexpected message events, the first ${JSON.stringify(to.unexpected[0])}`);
  }
  const texts = to.received.map((p) => String(p.msg));
  const expected = Array.from({ length: count }, (_, n) => textOf(seed, from.uid, n));
  if (texts.length !== count || texts.some((t, i) => t !== expected[i])) {
    const seen = new Map<string, number>();
    for (const t of texts) seen.set(t, (seen.get(t) ?? 0) + 1);
    const doubled = [...seen.entries()].filter(([, c]) => c > 1).length;
    const lost = expected.filter((t) => !seen.has(t)).length;
    const firstOff = texts.findIndex((t, i) => t !== expected[i]);
    throw new Failure(
      `${where}: ${texts.length} message events for ${count} sent: ${lost} lost, ${doubled} doubled, ` +
        `first out of place at ${firstOff} (${texts[firstOff]})`,
    );
  }
  // the ids the receiver saw are the ids the sender's A's answered, and each came with a higher pos
  const ids = from.sent.map((ack) => String((ack as AckPacket).id));
  const seenIds = to.received.map((p) => String(p.id));
  const wrongId = ids.findIndex((id, i) => id !== seenIds[i]);
  if (wrongId >= 0) throw new Failure(`${where}: message #${wrongId} came with id ${seenIds[wrongId]}, its A had ${ids[wrongId]}`);
  for (let i = 1; i < to.received.length; i++) {
    const before = to.received[i - 1]?.pos;
    const now = to.received[i]?.pos;
    if (typeof before !== "number" || typeof now !== "number" || now <= before) {
      throw new Failure(`${where}: message events out of pos order at #${i}: ${before} then ${now}`);
    }
  }
  const senderPos = from.sent.map((ack) => (ack as AckPacket).pos);
  for (let i = 1; i < senderPos.length; i++) {
    if (!((senderPos[i] as number) > (senderPos[i - 1] as number))) {
      throw new Failure(`${where}: A #${i} has pos ${senderPos[i]} after ${senderPos[i - 1]}`);
    }
  }
}

function waitFor(what: string, predicate: () => boolean, deadline: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const poll = () => {
      if (predicate()) resolve();
      else if (performance.now() > deadline) reject(new Failure(`no ${what} before the seed's deadline`));
      else setTimeout(poll, 10);
    };
    poll();
  });
}

async function runSeed(options: Options, seed: number, index: number): Promise<Record<string, unknown>> {
  const started = performance.now();
  const deadline = started + options.seedTimeoutMs;
  const random = generator(seed);
  const target = { host: options.ws.split(":")[0] ?? "127.0.0.1", port: Number(options.ws.split(":")[1]) };
  const aliceUid = options.firstUid + 2 * index;
  const bobUid = aliceUid + 1;
  const between = { min: options.cutMinMs, max: options.cutMaxMs };
  const proxies = [new CuttingProxy(target, generator(seed ^ 0x1111), between), new CuttingProxy(target, generator(seed ^ 0x2222), between)];
  const ports = await Promise.all(proxies.map((p) => p.listen()));
  const alice = makeSide(options, aliceUid, proxies[0] as CuttingProxy, ports[0] as number, generator(seed ^ 0x3333));
  const bob = makeSide(options, bobUid, proxies[1] as CuttingProxy, ports[1] as number, generator(seed ^ 0x4444));
  for (const [me, other] of [[alice, bob], [bob, alice]] as const) {
    me.client.on("message", (packet) => {
      if (packet.type === "t" && packet.from === other.uid && packet.to === me.uid) me.received.push(packet);
      else me.unexpected.push(packet);
    });
  }
  let killed = false;
  const total = 2 * options.messages;
  const onAck = () => {
    if (!killed && alice.acks.length + bob.acks.length >= total / 2) {
      killed = true;
      emit({ event: "kill-migrator", seed });
    }
  };
  try {
    await Promise.all([alice.client.connect(), bob.client.connect()]);
    for (const proxy of proxies) proxy.start();
    const sending = Promise.all([
      sendAll(seed, alice, bobUid, options.messages, random, onAck),
      sendAll(seed, bob, aliceUid, options.messages, generator(seed ^ 0x5555), onAck),
    ]);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Failure("the sends did not all settle before the seed's deadline")), options.seedTimeoutMs);
    });
    try {
      await Promise.race([sending, timeout]);
    } finally {
      clearTimeout(timer);
    }
    await waitFor(
      "complete delivery",
      () => alice.received.length + alice.unexpected.length >= options.messages && bob.received.length + bob.unexpected.length >= options.messages,
      deadline,
    );
    // A short seed whose few cuts came while a client was away between two
    // connections: its proxies cut on until each has cut an open one twice.
    await waitFor("two cuts of each side's connection", () => proxies.every((p) => p.figures.cuts >= 2), deadline);
    for (const proxy of proxies) proxy.stop();
    // One more cut and reconnect: its sync must bring nothing again.
    const logins = [alice.logins, bob.logins];
    for (const proxy of proxies) proxy.cutNow();
    await waitFor(
      "reconnect after the last cut",
      () => alice.logins > (logins[0] as number) && bob.logins > (logins[1] as number) && alice.client.state === "connected" && bob.client.state === "connected",
      deadline,
    );
    check(seed, alice, bob, options.messages);
    check(seed, bob, alice, options.messages);
    if (!killed) throw new Failure(`seed ${seed}: the migrator was never asked to be killed`);
    const figures = (side: Side) => ({
      uid: side.uid,
      connections: side.proxy.figures.connections,
      cuts: side.proxy.figures.cuts,
      partial_up: side.proxy.figures.partialUp,
      partial_down: side.proxy.figures.partialDown,
      logins: side.logins,
      tokens: side.tokens,
      syncs: side.counts.syncs,
      sync_pages: side.counts.syncPages,
      errors: side.counts.errors,
      dup_acks: side.acks.filter((a) => a.dup === true).length,
      warnings: side.warnings,
    });
    return {
      event: "seed",
      seed,
      ok: true,
      messages: total,
      ms: Math.round(performance.now() - started),
      sides: [figures(alice), figures(bob)],
      acked: [
        ...alice.sent.map((ack) => [aliceUid, String((ack as AckPacket).id)]),
        ...bob.sent.map((ack) => [bobUid, String((ack as AckPacket).id)]),
      ],
    };
  } catch (err) {
    const state = (side: Side) =>
      `${side.uid}: state ${side.client.state}, ${side.acks.length} acked, ${side.rejected.length} rejected, ` +
      `outbox ${side.client.outboxSize}, ${side.received.length} received, position ${side.client.position}, ` +
      `${side.logins} logins, warnings ${side.warnings.join(",")}`;
    const error = `${err instanceof Error ? err.message : String(err)} [${state(alice)}; ${state(bob)}]`;
    process.stderr.write(`FAILED seed ${seed}: ${error}\n`);
    return { event: "seed", seed, ok: false, error, ms: Math.round(performance.now() - started) };
  } finally {
    alice.client.close();
    bob.client.close();
    await Promise.all(proxies.map((p) => p.close()));
  }
}

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  let failed = 0;
  for (const [index, seed] of options.seeds.entries()) {
    const result = await runSeed(options, seed, index);
    if (!result.ok) failed++;
    emit(result);
  }
  process.exitCode = failed ? 1 : 0;
}

main().catch((err: unknown) => {
  process.stderr.write(`integration: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 2;
});
