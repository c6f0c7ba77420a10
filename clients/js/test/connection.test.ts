// Close codes, tokens, backoff, pings, and what each server packet becomes.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { backoffDelay, ImdError } from "../dist/index.js";
import type { HistoryPage } from "../dist/index.js";
import { connectAndSync, flush, msg, nextSocket, setup } from "./helpers.js";

describe("backoff", () => {
  it("draws each delay between the minimum and a ceiling that doubles up to the maximum", () => {
    const min = 500;
    const max = 30000;
    const ceilings = [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000];
    ceilings.forEach((ceiling, i) => {
      assert.equal(backoffDelay(i + 1, min, max, () => 0), min);
      assert.equal(backoffDelay(i + 1, min, max, () => 0.999999999), ceiling);
      for (let k = 0; k < 200; k++) {
        const d = backoffDelay(i + 1, min, max, Math.random);
        assert.ok(d >= min && d <= ceiling, `attempt ${i + 1}: ${d} outside [${min}, ${ceiling}]`);
      }
    });
    assert.equal(backoffDelay(1000, min, max, () => 0.999999999), max, "no overflow past the maximum");
  });

  it("spreads the delays over the whole range (full jitter)", () => {
    const delays = Array.from({ length: 2000 }, () => backoffDelay(5, 500, 30000, Math.random));
    const low = delays.filter((d) => d < 500 + (16000 - 500) / 4).length;
    const high = delays.filter((d) => d > 16000 - (16000 - 500) / 4).length;
    assert.ok(low > 300 && high > 300, `low ${low}, high ${high}`);
  });
});

describe("reconnect", () => {
  it("reconnects after 4008, 1001, 1006 and 4004 with growing delays within the bounds, and starts over after L", async () => {
    const bounds = { minDelayMs: 100, maxDelayMs: 1000 };
    const h = setup({ reconnect: bounds, random: () => 0.999999999 });
    let socket = await connectAndSync(h);
    const delays: number[] = [];
    for (const code of [4008, 1001, 1006, 4004, 1011]) {
      socket.serverClose(code, "bye");
      await flush();
      const state = h.states[h.states.length - 1]!;
      assert.equal(state.state, "reconnecting");
      assert.equal(state.code, code);
      delays.push(state.delayMs!);
      await h.clock.tick(state.delayMs!);
      socket = h.socket();
      socket.login(1);
      await flush();
      socket.syncPage([]);
      await flush();
    }
    assert.deepEqual(delays, [200, 200, 200, 200, 200], "each L resets the attempts");

    // attempts that fail before L grow to the maximum and stay there
    const growing: number[] = [];
    for (let i = 0; i < 6; i++) {
      socket.serverClose(1006);
      await flush();
      const state = h.states[h.states.length - 1]!;
      growing.push(state.delayMs!);
      await h.clock.tick(state.delayMs! - 1);
      assert.equal(h.sockets.indexOf(socket), h.sockets.length - 1, "not before the delay");
      await h.clock.tick(1);
      socket = h.socket();
      socket.open();
    }
    assert.deepEqual(growing, [200, 400, 800, 1000, 1000, 1000]);
    assert.equal(h.closed.length, 0);
  });

  it("fetches a new token for every attempt and never reuses one", async () => {
    const h = setup();
    let socket = await connectAndSync(h);
    for (const code of [1006, 4008, 1001]) {
      socket.serverClose(code);
      await flush();
      socket = await nextSocket(h);
    }
    assert.deepEqual(h.tokens, ["token-1", "token-2", "token-3", "token-4"]);
    assert.deepEqual(
      h.sockets.map((s) => s.url),
      h.tokens.map((t) => `ws://imd.test:8765/${t}`),
    );
  });

  it("on 4001 gets a fresh token once, at once; a second 4001 stops it with the reason", async () => {
    const h = setup();
    const connected = h.client.connect();
    const rejected = assert.rejects(connected, (err: unknown) => err instanceof ImdError && err.code === "unauthorized");
    await flush();
    h.socket().open();
    h.socket().kick(4001, "token expired");
    await flush();
    assert.equal(h.sockets.length, 2, "a new attempt without waiting");
    assert.deepEqual(h.tokens, ["token-1", "token-2"]);
    h.socket().open();
    h.socket().kick(4001, "token already used");
    await flush();
    assert.deepEqual(h.closed, [{ code: 4001, reason: "token already used" }]);
    assert.equal(h.client.state, "closed");
    await rejected;
    await h.clock.tick(600000);
    assert.equal(h.sockets.length, 2, "no more attempts");
    await assert.rejects(h.client.send({ to: 2, type: "t", msg: "x" }), (err: unknown) => err instanceof ImdError && err.code === "closed");
  });

  it("takes a 4001 after a successful login as a first one again", async () => {
    const h = setup();
    const socket = await connectAndSync(h);
    socket.serverClose(4001);
    await flush();
    h.socket().login(1);
    await flush();
    h.socket().syncPage([]);
    await flush();
    h.socket().serverClose(4001);
    await flush();
    assert.equal(h.sockets.length, 3);
    assert.equal(h.closed.length, 0);
  });

  for (const [code, errorCode, reason] of [
    [4002, "replaced", "replaced by a newer device"],
    [4003, "kicked", "kicked by an operator"],
  ] as const) {
    it(`stops on ${code} (${errorCode}): closed with the reason, no reconnect, pending calls rejected`, async () => {
      const h = setup();
      const socket = await connectAndSync(h);
      const sending = h.client.send({ to: 2, type: "t", msg: "x" });
      const rejected = assert.rejects(sending, (err: unknown) => err instanceof ImdError && err.code === errorCode);
      const pages = h.client.history({ with: 2 });
      const history = assert.rejects(pages.next(), (err: unknown) => err instanceof ImdError && err.code === errorCode);
      await flush();
      socket.kick(code, reason);
      await flush();
      assert.deepEqual(h.closed, [{ code, reason }]);
      assert.equal(h.client.state, "closed");
      await rejected;
      await history;
      await h.clock.tick(600000);
      assert.equal(h.sockets.length, 1);
      assert.equal(h.client.outboxSize, 1, "the unsent packet waits for a later connect()");
    });
  }

  it("connects again after a stop when connect() is called, resending what the outbox kept", async () => {
    const h = setup();
    const socket = await connectAndSync(h);
    const first = h.client.send({ to: 2, type: "t", msg: "x" }).catch((err: ImdError) => err.code);
    await flush();
    const id = socket.last("t").id;
    socket.kick(4002, "replaced");
    await flush();
    assert.equal(h.client.state, "closed");
    assert.equal(await first, "replaced");
    const again = await connectAndSync(h);
    assert.equal(again.last("t").id, id);
    again.ack(again.last("t"), { pos: 1, dup: true });
    await flush();
    assert.equal(h.outbox[0]!.ack?.dup, true);
  });

  it("close() stops for good: no reconnect, closed event, pending calls rejected with closed", async () => {
    const h = setup();
    const socket = await connectAndSync(h);
    const online = h.client.online(2);
    const rejected = assert.rejects(online, (err: unknown) => err instanceof ImdError && err.code === "closed");
    await flush();
    h.client.close();
    await rejected;
    assert.equal(socket.closedByClient, 1000);
    assert.deepEqual(h.closed, [{ code: 1000, reason: "closed by the client" }]);
    socket.serverClose(1006); // late close event of the old socket: ignored
    await h.clock.tick(600000);
    assert.equal(h.sockets.length, 1);
  });

  it("accepts a full ws(s):// URL or the body of POST /IM/token from token()", async () => {
    const urls = ["wss://chat.example.test/abc.def.ghi", { url: "ws://chat.example.test:8765/tok", token: "tok" }, { token: "only.token" }];
    for (const result of urls) {
      const h = setup({ token: () => result });
      h.client.connect().catch(() => {}); // closed below
      await flush();
      const expected = typeof result === "string" ? result : result.url ?? "ws://imd.test:8765/only.token";
      assert.equal(h.socket().url, expected);
      h.client.close();
    }
  });

  it("stops with a config error when token() returns a bare wstoken and no url was given", async () => {
    const h = setup({ url: undefined });
    const connected = h.client.connect();
    await assert.rejects(connected, (err: unknown) => err instanceof ImdError && err.code === "config");
    assert.equal(h.sockets.length, 0);
  });

  it("retries with backoff when token() fails", async () => {
    let calls = 0;
    const h = setup({
      token: async () => {
        calls++;
        if (calls < 3) throw new Error("token service down");
        return "good";
      },
    });
    const connected = h.client.connect();
    await flush();
    assert.equal(h.sockets.length, 0);
    assert.ok(h.states.some((s) => s.warning === "token_failed"));
    await h.clock.tick(750);
    assert.equal(h.sockets.length, 0);
    await h.clock.tick(1250);
    assert.equal(h.sockets.length, 1);
    assert.equal(h.socket().url, "ws://imd.test:8765/good");
    h.socket().login(1);
    await flush();
    h.socket().syncPage([]);
    await connected;
  });

  it("drops an attempt that gets no L in time and tries again", async () => {
    const h = setup({ loginTimeoutMs: 5000 });
    void h.client.connect();
    await flush();
    const socket = h.socket();
    socket.open();
    await h.clock.tick(4999);
    assert.equal(h.client.state, "connecting");
    await h.clock.tick(1);
    assert.equal(socket.closedByClient, 1000);
    assert.equal(h.client.state, "reconnecting");
    const again = await nextSocket(h);
    assert.equal(again.lastSync().msg.sync, 0);
  });
});

describe("pings", () => {
  it("sends P every interval while connected, none before L", async () => {
    const h = setup({ pingIntervalMs: 30000 });
    void h.client.connect();
    await flush();
    const socket = h.socket();
    socket.open();
    await h.clock.tick(14000);
    assert.equal(socket.ofType("P").length, 0);
    socket.login(1);
    await flush();
    socket.syncPage([]);
    await h.clock.tick(29999);
    assert.equal(socket.ofType("P").length, 0);
    await h.clock.tick(1);
    const ping = socket.last("P");
    assert.equal(ping.to, 0);
    socket.reply(ping, { type: "P", msg: "pong" });
    await h.clock.tick(30000);
    assert.equal(socket.ofType("P").length, 2);
    socket.reply(socket.last("P"), { type: "P", msg: "pong" });
    await h.clock.tick(30000);
    assert.equal(socket.ofType("P").length, 3);
    // no gap longer than the interval plus the reply time: well inside the server's 90 s
  });

  it("takes an unanswered ping as a dead connection: drops it and reconnects", async () => {
    const h = setup({ pingIntervalMs: 30000, pingTimeoutMs: 10000 });
    const socket = await connectAndSync(h);
    await h.clock.tick(30000);
    assert.equal(socket.ofType("P").length, 1);
    await h.clock.tick(9999);
    assert.equal(h.client.state, "connected");
    await h.clock.tick(1);
    assert.equal(socket.closedByClient, 1000);
    assert.equal(h.client.state, "reconnecting");
    await nextSocket(h);
    assert.equal(h.sockets.length, 2);
  });

  it("stops pinging once closed", async () => {
    const h = setup({ pingIntervalMs: 1000 });
    const socket = await connectAndSync(h);
    h.client.close();
    await h.clock.tick(10000);
    assert.equal(socket.ofType("P").length, 0);
    assert.deepEqual(h.clock.pending(), []);
  });
});

describe("server packets", () => {
  it("routes R (one-to-one and room), Y, S to their events and t, i, s, D to message", async () => {
    const h = setup();
    const socket = await connectAndSync(h);
    const packets = [
      msg(1),
      { id: "r1", from: 2, to: 1, type: "R", msg: { state: "read", ids: ["a"], ts: 5 } },
      { id: "r2", from: 3, room: "order:42", type: "R", msg: { state: "read", seq: 4, ts: 6 } },
      { id: "y1", from: 2, to: 1, type: "Y", msg: true },
      { id: "y2", from: 3, room: "order:42", type: "Y", msg: false },
      { id: "srv-9", from: 7, type: "S", msg: { longitude: 2.35, latitude: 48.85, ts: 7 } },
      { id: "d1", from: 2, to: 1, type: "D", msg: "m1", ts: 8, pos: 2 },
      { id: "i1", from: 2, to: 1, type: "i", msg: "img-7", ts: 9, pos: 3 },
      { id: "s1", from: 0, room: "order:42", type: "s", msg: { room: "order:42", event: "joined", uid: 9 }, ts: 10, pos: 4, seq: 5 },
      { id: "x1", from: 0, type: "Z", msg: "from a newer server" },
    ];
    for (const p of packets) socket.receive(p);
    assert.deepEqual(
      h.events.map(([kind, p]) => `${kind}:${p.id}`),
      ["message:m1", "receipt:r1", "receipt:r2", "typing:y1", "typing:y2", "position:srv-9", "message:d1", "message:i1", "message:s1"],
    );
  });

  it("matches every reply to its packet by id, whatever the order the replies come in", async () => {
    const h = setup();
    const socket = await connectAndSync(h);
    const read = h.client.markRead({ to: 2, ids: ["m1"] });
    const online = h.client.online(2);
    const pages = h.client.history({ with: 2, limit: 10 });
    const page = pages.next();
    const convs = h.client.conversations({ limit: 5 });
    await flush();
    const [r] = socket.ofType("R");
    const [o] = socket.ofType("O");
    const hs = socket.ofType("H");
    const hHistory = hs.find((p) => p.msg.with === 2)!;
    const hConvs = hs.find((p) => p.msg.conversations === true)!;
    const ids = [r!.id, o!.id, hHistory.id, hConvs.id];
    assert.equal(new Set(ids).size, 4);
    for (const id of ids) assert.match(id, /^\d{13}-[0-9a-z]+$/);
    socket.reply(hConvs, { type: "H", msg: [{ with: 2, last: msg(1), unread: 3 }], more: false });
    socket.reply(o!, { type: "O", msg: { uid: 2, online: true } });
    socket.reply(hHistory, { type: "H", msg: [msg(1)], more: false });
    socket.ack(r!);
    assert.equal((await read).type, "A");
    assert.equal(await online, true);
    const first = (await page).value as HistoryPage;
    assert.deepEqual(first.messages.map((m) => m.id), ["m1"]);
    assert.deepEqual(await convs, [{ with: 2, last: msg(1), unread: 3 }]);
  });

  it("reports an E that answers no packet of its own as a warning", async () => {
    const h = setup();
    const socket = await connectAndSync(h);
    socket.receive({ id: null, from: 0, type: "E", msg: "binary frames are not accepted", code: "bad_packet" });
    const warning = h.states.find((s) => s.warning === "server_error");
    assert.ok(warning);
    assert.equal((warning.error as ImdError).code, "bad_packet");
  });

  it("ignores frames that are not JSON objects", async () => {
    const h = setup();
    const socket = await connectAndSync(h);
    socket.onmessage?.({ data: "not json" });
    socket.onmessage?.({ data: "[1,2]" });
    socket.onmessage?.({ data: Buffer.from(JSON.stringify(msg(1))) });
    assert.deepEqual(h.messages.map((m) => m.id), ["m1"], "a text frame that arrives as bytes is decoded");
  });
});
