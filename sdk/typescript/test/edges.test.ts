/**
 * The corners production finds: batches refused as a whole, fire-and-forget calls during an outage,
 * and runtimes where only WebCrypto exists (browsers, edge workers). Each failed before its fix.
 */

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { afterEach, beforeEach, describe, test } from "node:test";

import {
  ValidationError,
  WebhookVerificationError,
  createClient,
  verifyWebhook,
  verifyWebhookAsync,
  type IngestlayerError,
  type WireEvent,
} from "../src/index.js";
import { FAST, FakeServer, batchAccepted, type Recorded, type Reply } from "../test-support/fake.js";

let fake: FakeServer;
beforeEach(async () => {
  fake = await FakeServer.start();
});
afterEach(async () => {
  await fake.close();
});

function runNode(args: string[], script: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [...args, "--input-type=module", "-e", script, fake.url], { stdio: "pipe" });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
  child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve) => child.on("exit", (code) => resolve({ code, stdout, stderr })));
}

describe("a batch the server refuses as a whole", () => {
  test("is split until the event at fault is alone; the others are delivered", async () => {
    // Like the real server for a number beyond 64 bits (a 422 naming no event), and like a proxy
    // with a smaller body limit (a 413 for the request).
    fake.fallback = (req: Recorded): Reply => {
      if (req.body.includes("100000000000000000000")) {
        return { status: 422, body: { error: { code: "number_out_of_range", message: "numbers must fit in 64 bits" } } };
      }
      if (req.body.length > 2000) return { status: 413, body: "<html>413 Request Entity Too Large</html>" };
      return batchAccepted(req);
    };
    const reported: Array<[IngestlayerError, WireEvent[]]> = [];
    const c = createClient({
      apiKey: "il_ingest_k",
      baseUrl: fake.url,
      ...FAST,
      batch: { size: 20, intervalMs: 10 },
      onError: (error, events) => reported.push([error, events]),
    });
    const results = Array.from({ length: 20 }, (_, n) =>
      c.ingest("split.batch", { n: n === 7 ? 1e20 : n, pad: "x".repeat(150) }).then(
        () => "ok",
        (err: unknown) => err,
      ),
    );
    await c.close();
    const outcomes = await Promise.all(results);
    assert.equal(outcomes.filter((o) => o === "ok").length, 19);
    assert.ok(outcomes[7] instanceof ValidationError && outcomes[7].status === 422);
    assert.deepEqual(
      reported.map(([, events]) => events.map((e) => e.payload.n)),
      [[1e20]],
    );
    const delivered = fake.requests
      .filter((r) => r.body.length <= 2000 && !r.body.includes("100000000000000000000"))
      .flatMap((r) => r.json().batch.map((e: WireEvent) => e.payload.n));
    assert.deepEqual(
      delivered.sort((a: number, b: number) => a - b),
      Array.from({ length: 20 }, (_, n) => n).filter((n) => n !== 7),
    );
  });
});

describe("fire and forget while batching", () => {
  test("a full queue during an outage goes to onError and never crashes the process", async () => {
    const index = new URL("../src/index.js", import.meta.url).href;
    const script = `
      import { createClient } from ${JSON.stringify(index)};
      const seen = [];
      const c = createClient({
        apiKey: "il_ingest_k", baseUrl: "http://127.0.0.1:9", maxRetries: 0,
        batch: { size: 1, maxQueue: 1 }, onError: (e, events) => seen.push(e.name + ":" + events[0].idempotency_key),
      });
      for (const key of ["a", "b", "c"]) c.ingest("outage.event", {}, { idempotencyKey: key }); // not awaited
      c.ingest("outage.event", "not an object", { idempotencyKey: "d" }); // a bug, not awaited either
      await c.close();
      console.log(JSON.stringify(seen.sort()));
    `;
    const { code, stdout, stderr } = await runNode([], script);
    assert.equal(code, 0, stderr);
    const seen = JSON.parse(stdout) as string[];
    assert.ok(seen.includes("QueueFullError:c"), stdout);
    assert.ok(seen.includes("ValidationError:d"), stdout);
  });
});

describe("where only WebCrypto exists (browsers, edge runtimes)", () => {
  const SECRET = "whsec_test";
  const T = 1717000000;
  const BODY = '{"type":"user.signed_up"}';
  const v1 = (secret: string): string => createHmac("sha256", secret).update(`${T}.${BODY}`).digest("hex");

  test("the package loads no node: module; ingest and verifyWebhookAsync work", async () => {
    // A resolve hook refuses every Node.js builtin the SDK's own files ask for, as a browser or an
    // edge bundle would; the "browser" condition picks the WebCrypto build (package.json imports).
    const hooks = `
      export async function resolve(specifier, context, next) {
        const builtin = specifier.startsWith("node:") || ["crypto", "buffer", "http", "https"].includes(specifier);
        if (builtin && context.parentURL && context.parentURL.includes("/dist/src/")) {
          throw new Error("the SDK imported " + specifier + " from " + context.parentURL);
        }
        return next(specifier, context);
      }`;
    const register = `import { register } from "node:module"; register(${JSON.stringify(
      "data:text/javascript," + encodeURIComponent(hooks),
    )});`;
    const index = new URL("../src/index.js", import.meta.url).href;
    const script = `
      const sdk = await import(${JSON.stringify(index)});
      const out = {};
      const c = sdk.createClient({ apiKey: "il_ingest_k", baseUrl: process.argv[1] });
      out.key = (await c.ingest("edge.event", { n: 1 })).idempotencyKey;
      const headers = new Headers({ "X-Ingestlayer-Signature": "t=${T},v1=${v1(SECRET)}" });
      out.verified = await sdk.verifyWebhookAsync(${JSON.stringify(SECRET)}, headers, ${JSON.stringify(BODY)}, { now: ${T} });
      out.refused = await sdk.verifyWebhookAsync("whsec_other", headers, ${JSON.stringify(BODY)}, { now: ${T} })
        .then(() => "accepted", (err) => err.name + ": " + err.message);
      try { sdk.verifyWebhook(${JSON.stringify(SECRET)}, headers, ${JSON.stringify(BODY)}, { now: ${T} }); }
      catch (err) { out.sync = err.message; }
      console.log(JSON.stringify(out));
    `;
    const { code, stdout, stderr } = await runNode(
      ["--conditions=browser", "--import", `data:text/javascript,${encodeURIComponent(register)}`],
      script,
    );
    assert.equal(code, 0, stderr);
    const out = JSON.parse(stdout) as Record<string, unknown>;
    assert.match(String(out.key), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.deepEqual(out.verified, { type: "user.signed_up" });
    assert.match(String(out.refused), /^WebhookVerificationError: no matching signature/);
    assert.match(String(out.sync), /verifyWebhookAsync/);
    assert.equal(fake.requests.length, 1);
  });

  test("verifyWebhookAsync agrees with verifyWebhook, errors included", async () => {
    const cases: Array<[Record<string, string>, string | Uint8Array]> = [
      [{ "x-ingestlayer-signature": `t=${T},v1=${v1("whsec_old")},v1=${v1(SECRET)}` }, BODY],
      [{ "x-ingestlayer-signature": `t=${T},v1=${v1(SECRET)}` }, new TextEncoder().encode(BODY)],
      [{ "x-ingestlayer-signature": `t=${T},v1=${v1(SECRET)}` }, `${BODY} `],
      [{ "x-ingestlayer-signature": `t=${T - 400},v1=${v1(SECRET)}` }, BODY],
      [{ "x-ingestlayer-signature": "t=abc,v1=00" }, BODY],
      [{ "webhook-id": "msg_1", "webhook-timestamp": String(T), "webhook-signature": "v1,AAAA" }, BODY],
      [{}, BODY],
    ];
    for (const [headers, body] of cases) {
      const sync = (() => {
        try {
          return verifyWebhook(SECRET, headers, body, { now: T });
        } catch (err) {
          return err;
        }
      })();
      const async_ = await verifyWebhookAsync(SECRET, headers, body, { now: T }).catch((err: unknown) => err);
      if (sync instanceof Error) {
        assert.ok(async_ instanceof WebhookVerificationError, String(async_));
        assert.equal(async_.message, sync.message);
      } else {
        assert.deepEqual(async_, sync);
      }
    }
  });
});

describe("values JSON.stringify would silently change", () => {
  // JSON.stringify sends NaN and ±Infinity as null, drops functions and symbols, sends undefined in
  // an array as null, and a Map, a Set or an Error as {}: the server would store something else than
  // what was sent. Like the Python SDK (json.dumps(allow_nan=False)), refuse before sending.
  const client = (options: Parameters<typeof createClient>[0] = {}) =>
    createClient({ apiKey: "il_ingest_k", baseUrl: fake.url, ...FAST, ...options });

  const refused: Array<[string, Record<string, unknown>, string]> = [
    ["NaN", { n: NaN }, "payload.n is NaN"],
    ["Infinity in a nested object", { stats: { ratio: Infinity } }, "payload.stats.ratio is Infinity"],
    ["-Infinity in an array", { values: [1, 2, -Infinity] }, "payload.values[2] is -Infinity"],
    ["NaN in an object in an array", { rows: [{ ok: 1 }, { v: 0 / 0 }] }, "payload.rows[1].v is NaN"],
    ["NaN under keys that are not identifiers", { "a b": { "": NaN } }, 'payload["a b"][""] is NaN'],
    ["a boxed NaN", { n: new Number(NaN) }, "payload.n is NaN"],
    ["NaN returned by toJSON", { m: { toJSON: () => ({ v: NaN }) } }, "payload.m.v is NaN"],
    ["an invalid Date", { at: new Date("not a date") }, "payload.at is an invalid Date"],
    ["undefined in an array", { tags: ["a", undefined] }, "payload.tags[1] is undefined"],
    ["a hole in an array", { tags: new Array<string>(2) }, "payload.tags[0] is undefined"],
    ["a function", { callback: () => 1 }, "payload.callback is a function"],
    ["a symbol", { s: Symbol("x") }, "payload.s is a symbol"],
    ["a Map", { m: new Map([["a", 1]]) }, "payload.m is a Map"],
    ["a Set", { s: new Set([1]) }, "payload.s is a Set"],
    ["an Error", { error: new Error("boom") }, "payload.error is an Error"],
  ];
  for (const [name, payload, where] of refused) {
    test(`${name} is refused before sending, naming the payload`, async () => {
      const err = await client()
        .ingest("x.y", payload)
        .catch((e: unknown) => e);
      assert.ok(err instanceof ValidationError, `not refused (${String(err)}); sent: ${fake.requests[0]?.body}`);
      assert.equal(err.field, "payload");
      assert.equal(err.status, undefined);
      assert.equal(err.attempts, 0);
      assert.ok(err.message.startsWith("payload is not JSON-serializable: "), err.message);
      assert.ok(err.message.includes(where), err.message);
      assert.equal(fake.requests.length, 0);
    });
  }

  test("identify and group refuse them in traits, naming the traits", async () => {
    fake.fallback = { status: 200, body: { ok: true } };
    const c = client();
    const identified = await c.identify("u_1", { score: NaN }).catch((e: unknown) => e);
    assert.ok(identified instanceof ValidationError, String(identified));
    assert.equal(identified.field, "traits");
    assert.match(identified.message, /^traits are not JSON-serializable: traits\.score is NaN/);
    const grouped = await c.group("u_1", "acct_1", { usage: { seats: [3, Infinity] } }).catch((e: unknown) => e);
    assert.ok(grouped instanceof ValidationError, String(grouped));
    assert.equal(grouped.field, "traits");
    assert.ok(grouped.message.includes("traits.usage.seats[1] is Infinity"), grouped.message);
    assert.equal(fake.requests.length, 0);
  });

  test("while batching, the event goes to onError and the rest of its batch is sent", async () => {
    const reported: Array<[IngestlayerError, WireEvent[]]> = [];
    const c = client({ batch: { size: 3, intervalMs: 10 }, onError: (e, events) => reported.push([e, events]) });
    const first = c.ingest("nan.batch", { n: 1 });
    void c.ingest("nan.batch", { n: NaN }, { idempotencyKey: "bad" }); // fire and forget: must not crash
    const bad = c.ingest("nan.batch", { n: [-Infinity] }, { idempotencyKey: "bad2" });
    const last = c.ingest("nan.batch", { n: 2 });
    await c.close();
    const outcomes = await Promise.allSettled([first, bad, last]);
    assert.deepEqual(
      outcomes.map((o) => o.status),
      ["fulfilled", "rejected", "fulfilled"],
    );
    const rejection = (outcomes[1] as PromiseRejectedResult).reason;
    assert.ok(rejection instanceof ValidationError && rejection.field === "payload" && rejection.attempts === 0);
    assert.deepEqual(
      reported.map(([e, events]) => [e.name, e.field, events.map((ev) => ev.idempotency_key)]),
      [
        ["ValidationError", "payload", ["bad"]],
        ["ValidationError", "payload", ["bad2"]],
      ],
    );
    assert.ok(Number.isNaN(reported[0]![1][0]!.payload.n), "onError gets the payload as given");
    assert.deepEqual(
      fake.bodies().flatMap((b) => b.batch.map((e: WireEvent) => e.payload)),
      [{ n: 1 }, { n: 2 }],
    );
  });

  test("what JSON carries is still sent as given: null, Dates, toJSON, class instances, undefined keys", async () => {
    class Point {
      constructor(
        readonly x: number,
        readonly y: number,
      ) {}
    }
    const at = new Date(Date.UTC(2026, 2, 1, 12, 30));
    const optional: string | undefined = undefined;
    await client().ingest("x.y", {
      nothing: null,
      at,
      plan: optional, // an optional field left undefined is an absent key, as in JSON.stringify
      point: new Point(1, 2),
      extremes: [Number.MAX_VALUE, Number.MIN_VALUE, -Number.MAX_SAFE_INTEGER],
      nested: { list: [null, 0, "", false, [[]], {}] },
      money: { toJSON: () => "12.30" },
    });
    assert.deepEqual(fake.bodies()[0].payload, {
      nothing: null,
      at: "2026-03-01T12:30:00.000Z",
      point: { x: 1, y: 2 },
      extremes: [Number.MAX_VALUE, Number.MIN_VALUE, -Number.MAX_SAFE_INTEGER],
      nested: { list: [null, 0, "", false, [[]], {}] },
      money: "12.30",
    });
  });

  test("a payload nested too deeply for JSON.stringify is refused as before; a deep one is sent", async () => {
    let deep: Record<string, unknown> = { leaf: 1 };
    for (let i = 0; i < 300; i++) deep = { d: deep };
    await client().ingest("x.deep", deep); // the server judges depth (64 levels): sent, not a crash
    assert.equal(fake.requests.length, 1);
    let tooDeep: Record<string, unknown> = {};
    for (let i = 0; i < 100_000; i++) tooDeep = { d: tooDeep };
    const err = await client()
      .ingest("x.deep", tooDeep)
      .catch((e: unknown) => e);
    assert.ok(err instanceof ValidationError && err.field === "payload", String(err));
    assert.equal(fake.requests.length, 1);
  });
});

describe("a refused baseUrl", () => {
  // Errors end up in logs, and a baseUrl may hold a credential: the error names the problem (and
  // the host at most). A user name and password used to be dropped without a word.
  const cases: Array<[string, string]> = [
    ["ftp://events.example.com?token=sekrit-token", "must be an http(s) URL with a host"],
    ["https://events.example.com/?token=sekrit-token", "must not carry a query or fragment (host events.example.com)"],
    ["https://events.example.com/#sekrit-token", "must not carry a query or fragment"],
    ["https://ingest:sekrit-token@events.example.com", "must not carry a user name or password"],
    ["https://sekrit-token@events.example.com", "must not carry a user name or password"],
    ["https://ingest:sekrit-token/v1", "must be an http(s) URL with a host"],
    ["sekrit-token", "must be an http(s) URL with a host"],
  ];
  for (const [baseUrl, says] of cases) {
    test(`is not repeated in its error: ${says}`, () => {
      assert.throws(
        () => createClient({ apiKey: "il_ingest_k", baseUrl }),
        (err: Error) => {
          assert.ok(err instanceof TypeError, String(err));
          assert.ok(err.message.includes(says), err.message);
          assert.ok(!err.message.includes("sekrit"), err.message);
          return true;
        },
      );
    });
  }
});
