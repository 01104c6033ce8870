/**
 * Retries, errors, identify/group and batching against a node:http fake that injects failures on cue.
 */

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { afterEach, beforeEach, describe, test } from "node:test";

import {
  APIError,
  AuthenticationError,
  ConnectionError,
  IngestlayerError,
  RateLimitError,
  ServerError,
  ValidationError,
  createClient,
  type WireEvent,
} from "../src/index.js";
import { FAST, FakeServer, batchAccepted, freePort } from "../test-support/fake.js";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

let fake: FakeServer;
beforeEach(async () => {
  fake = await FakeServer.start();
});
afterEach(async () => {
  await fake.close();
});

function client(options: Parameters<typeof createClient>[0] = {}) {
  return createClient({ apiKey: "il_ingest_k", baseUrl: fake.url, ...FAST, ...options });
}

describe("retries", () => {
  test("503s then 202: one result, the same generated key on every attempt", async () => {
    fake.failTimes(3, 503);
    const result = await client().ingest("feature.used", { n: 1 });
    assert.equal(result.id, "evt_fake");
    assert.equal(result.duplicate, false);
    assert.match(result.idempotencyKey, UUID);
    assert.equal(fake.requests.length, 4);
    assert.deepEqual(
      fake.bodies().map((b) => b.idempotency_key),
      Array(4).fill(result.idempotencyKey),
    );
    const first = fake.requests[0]!;
    assert.equal(first.path, "/v1/events");
    assert.equal(first.method, "POST");
    assert.equal(first.headers.authorization, "Bearer il_ingest_k");
    assert.equal(first.headers["content-type"], "application/json");
    assert.match(first.headers["user-agent"] ?? "", /^ingestlayer-node\//);
    assert.deepEqual(first.json(), {
      type: "feature.used",
      payload: { n: 1 },
      idempotency_key: result.idempotencyKey,
    });
  });

  test("the caller's idempotency key is kept across retries", async () => {
    fake.failTimes(2, 502);
    const result = await client().ingest("user.signed_up", { user_id: "u_1" }, { idempotencyKey: "u_1" });
    assert.equal(result.idempotencyKey, "u_1");
    assert.deepEqual(
      fake.bodies().map((b) => b.idempotency_key),
      ["u_1", "u_1", "u_1"],
    );
  });

  test("429 waits exactly as long as Retry-After asks", async () => {
    fake.plan = [{ status: 429, headers: { "retry-after": "1" }, body: { error: { code: "rate_limited" } } }];
    const started = Date.now();
    const result = await client().ingest("feature.used", {});
    assert.equal(result.id, "evt_fake");
    assert.equal(fake.requests.length, 2);
    assert.ok(Date.now() - started >= 950);
    assert.ok(fake.requests[1]!.at - fake.requests[0]!.at >= 950);
  });

  test("a Retry-After beyond maxRetryWaitMs fails at once", async () => {
    fake.fallback = { status: 429, headers: { "retry-after": "120" }, body: { error: { message: "slow down" } } };
    const err = await client({ maxRetryWaitMs: 5000 }).ingest("feature.used", {}).catch((e: unknown) => e);
    assert.ok(err instanceof RateLimitError);
    assert.equal(err.retryAfter, 120);
    assert.equal(err.attempts, 1);
  });

  for (const [status, cls] of [
    [400, ValidationError],
    [401, AuthenticationError],
    [403, AuthenticationError],
    [404, APIError],
    [409, APIError],
    [413, ValidationError],
    [422, ValidationError],
  ] as const) {
    test(`${status} is never retried and raises ${cls.name}`, async () => {
      fake.fallback = { status, body: { error: { code: "nope", message: "refused on purpose", field: "payload.email" } } };
      const err = await client().ingest("feature.used", {}).catch((e: unknown) => e);
      assert.ok(err instanceof cls, String(err));
      assert.equal(err.constructor, cls);
      assert.equal(err.name, cls.name);
      assert.equal(err.status, status);
      assert.equal(err.code, "nope");
      assert.equal(err.field, "payload.email");
      assert.equal(err.message, "refused on purpose");
      assert.equal(err.attempts, 1);
      assert.equal(fake.requests.length, 1);
    });
  }

  test("exhausted retries raise ServerError with the attempt count", async () => {
    fake.fallback = { status: 503, body: { error: { code: "unavailable", message: "db down" } } };
    const err = await client({ maxRetries: 2 }).ingest("feature.used", {}).catch((e: unknown) => e);
    assert.ok(err instanceof ServerError);
    assert.equal(err.status, 503);
    assert.equal(err.attempts, 3);
    assert.equal(new Set(fake.bodies().map((b) => b.idempotency_key)).size, 1);
  });

  test("connection refused is retried, then raises ConnectionError", async () => {
    const port = await freePort();
    const c = createClient({ apiKey: "il_ingest_k", baseUrl: `http://127.0.0.1:${port}`, maxRetries: 3, ...FAST });
    const err = await c.ingest("feature.used", {}).catch((e: unknown) => e);
    assert.ok(err instanceof ConnectionError);
    assert.ok(err instanceof IngestlayerError);
    assert.equal(err.attempts, 4);
    assert.equal(err.status, undefined);
    assert.match(err.message, /could not reach http:\/\/127\.0\.0\.1:\d+: ECONNREFUSED/);
  });

  test("a server that comes up during the retries gets the event once", async () => {
    const port = await freePort();
    const c = createClient({ apiKey: "il_ingest_k", baseUrl: `http://127.0.0.1:${port}`, maxRetries: 60, ...FAST });
    const pending = c.ingest("feature.used", { n: 1 });
    await new Promise((r) => setTimeout(r, 300));
    const late = await FakeServer.start(port);
    try {
      const result = await pending;
      assert.equal(result.id, "evt_fake");
      assert.equal(late.requests.length, 1);
      assert.equal(late.bodies()[0].idempotency_key, result.idempotencyKey);
    } finally {
      await late.close();
    }
  });

  test("a timed-out request is sent again with the same key", async () => {
    const stored = { id: "evt_slow", duplicate: false };
    const again = { id: "evt_slow", duplicate: true };
    const c = client({ timeoutMs: 400 });
    fake.plan = [{ status: 202, body: stored, delayMs: 1000 }, { status: 200, body: again }];
    const generated = await c.ingest("feature.used", { n: 1 });
    fake.plan = [{ status: 202, body: stored, delayMs: 1000 }, { status: 200, body: again }];
    const explicit = await c.ingest("feature.used", { n: 1 }, { idempotencyKey: "order-9" });
    assert.deepEqual(
      fake.bodies().map((b) => b.idempotency_key),
      [generated.idempotencyKey, generated.idempotencyKey, "order-9", "order-9"],
    );
    // A generated key is unique to the call: the server's "duplicate" is our own lost first attempt.
    assert.deepEqual(generated, { id: "evt_slow", duplicate: false, idempotencyKey: generated.idempotencyKey });
    // With the caller's key we cannot tell, so the server's answer stands.
    assert.deepEqual(explicit, { id: "evt_slow", duplicate: true, idempotencyKey: "order-9" });
  });
});

describe("identify and group", () => {
  test("post the documented bodies, retried like events", async () => {
    fake.fallback = { status: 200, body: { ok: true } };
    fake.failTimes(1, 503);
    const c = client({ baseUrl: fake.url + "/" });
    assert.deepEqual(await c.identify("u_1", { email: "ada@acme.com", plan: "pro" }), { ok: true });
    assert.deepEqual(await c.group("u_1", "acct_acme", { name: "Acme", seats: 12 }), { ok: true });
    assert.deepEqual(
      fake.requests.map((r) => r.path),
      ["/v1/identify", "/v1/identify", "/v1/group"],
    );
    assert.deepEqual(fake.bodies()[1], { user_id: "u_1", traits: { email: "ada@acme.com", plan: "pro" } });
    assert.deepEqual(fake.bodies()[2], { user_id: "u_1", account_id: "acct_acme", traits: { name: "Acme", seats: 12 } });
    assert.ok(fake.requests.every((r) => r.headers.authorization === "Bearer il_ingest_k"));
    const err = await c.group("u_1", "", {}).catch((e: unknown) => e);
    assert.ok(err instanceof ValidationError);
    assert.equal(err.field, "account_id");
    assert.equal(fake.requests.length, 3);
  });
});

describe("batching", () => {
  test("sends full batches at once and the rest after intervalMs", async () => {
    const c = client({ batch: { size: 10, intervalMs: 600 } });
    const queued = Date.now();
    const results = Array.from({ length: 25 }, (_, n) => c.ingest("feature.used", { n }));
    const settled = await Promise.all(results); // all three batches sent
    assert.deepEqual(
      fake.bodies().map((b) => b.batch.length),
      [10, 10, 5],
    );
    assert.ok(fake.requests[1]!.at - queued < 500, "full batches leave at once");
    assert.ok(fake.requests[2]!.at - queued >= 590, "the remainder waits for intervalMs");
    assert.equal(new Set(settled.map((r) => r.id)).size, 25);
    const items = fake.bodies().flatMap((b) => b.batch);
    assert.deepEqual(
      items.map((i: WireEvent) => i.payload.n),
      Array.from({ length: 25 }, (_, n) => n),
    );
    assert.equal(new Set(items.map((i: WireEvent) => i.idempotency_key)).size, 25);
    await c.close();
  });

  test("flush() resolves while events keep coming: it waits for those queued before it", async () => {
    // Each request takes 100 ms and an event arrives every 5 ms: waiting for an empty queue, flush
    // never resolved until ingestion stopped.
    fake.fallback = (req) => ({ ...batchAccepted(req), delayMs: 100 });
    const c = client({ batch: { size: 10, intervalMs: 50 } });
    let sentBefore = 0;
    for (const n of [0, 1, 2]) {
      c.ingest("stream.event", { n }).then(
        () => sentBefore++,
        () => sentBefore++,
      );
    }
    let n = 3;
    const stream = setInterval(() => void c.ingest("stream.event", { n: n++ }), 5);
    try {
      const flushed = await Promise.race([
        c.flush().then(() => "flushed"),
        new Promise((resolve) => setTimeout(() => resolve("still waiting after 3 s"), 3000)),
      ]);
      assert.equal(flushed, "flushed");
      assert.equal(sentBefore, 3, "flush() resolved before the events queued before it were sent");
    } finally {
      clearInterval(stream);
      await c.close();
    }
  });

  test("maxQueue counts the batch being sent", async () => {
    // The sender takes a batch out of the queue; while the server fails they are still unsent,
    // but they freed their places: maxQueue 5 let 10 in.
    fake.fallback = { status: 503, body: { error: { code: "unavailable", message: "down" } } };
    const reported: string[] = [];
    const c = client({
      batch: { size: 5, intervalMs: 10, maxQueue: 5 },
      maxRetries: 50,
      backoff: { baseMs: 200, maxMs: 200 },
      onError: (e) => reported.push(e.name),
    });
    let accepted = 0;
    for (let n = 0; n < 12; n++) {
      const pending = c.ingest("bounded.queue", { n });
      const full = await Promise.race([
        pending.then(
          () => false,
          (e: unknown) => e instanceof Error && e.name === "QueueFullError",
        ),
        new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 30)),
      ]);
      if (full) break;
      accepted++;
    }
    assert.equal(accepted, 5);
    fake.fallback = batchAccepted;
    await c.close();
  });

  test("a failed batch is retried with the same keys", async () => {
    const errors: unknown[] = [];
    fake.failTimes(2, 500);
    const c = client({ batch: true, onError: (e) => errors.push(e) });
    const pending = [0, 1, 2].map((n) => c.ingest("feature.used", { n }));
    await c.flush();
    await Promise.all(pending);
    assert.equal(fake.requests.length, 3);
    assert.equal(new Set(fake.requests.map((r) => r.body)).size, 1);
    assert.deepEqual(errors, []);
  });

  test("an event the server rejects is reported; the rest of its batch is delivered", async () => {
    const reported: Array<[IngestlayerError, WireEvent[]]> = [];
    fake.plan = [
      { status: 422, body: { error: { code: "validation_error", message: "bad type", field: "batch[1].type" } } },
    ];
    const c = client({ batch: { size: 3, intervalMs: 10_000 }, onError: (e, events) => reported.push([e, events]) });
    const [a, b, d] = [c.ingest("ok.one", {}), c.ingest("bad type", {}), c.ingest("ok.two", {})];
    const outcome = await Promise.allSettled([a, b, d]);
    assert.deepEqual(
      outcome.map((o) => o.status),
      ["fulfilled", "rejected", "fulfilled"],
    );
    const rejection = (outcome[1] as PromiseRejectedResult).reason;
    assert.ok(rejection instanceof ValidationError);
    assert.equal(rejection.field, "batch[1].type");
    assert.equal(reported.length, 1);
    assert.deepEqual(
      reported[0]![1].map((e) => e.type),
      ["bad type"],
    );
    assert.deepEqual(
      fake.bodies().map((body) => body.batch.map((e: WireEvent) => e.type)),
      [
        ["ok.one", "bad type", "ok.two"],
        ["ok.one", "ok.two"],
      ],
    );
    await c.close();
  });

  test("a batch that cannot be sent goes to onError and never crashes the process", async () => {
    const reported: WireEvent[][] = [];
    fake.fallback = { status: 401, body: { error: { code: "unauthorized", message: "revoked" } } };
    const c = client({ batch: { size: 2, intervalMs: 10 }, onError: (_e, events) => reported.push(events) });
    // Fire and forget: not awaited, so an unhandled rejection would fail this test run.
    void c.ingest("feature.used", {}, { idempotencyKey: "k0" });
    void c.ingest("feature.used", {}, { idempotencyKey: "k1" });
    await c.close();
    assert.deepEqual(
      reported.map((events) => events.map((e) => e.idempotency_key)),
      [["k0", "k1"]],
    );
    const err = await c.ingest("feature.used", {}).catch((e: unknown) => e);
    assert.ok(err instanceof IngestlayerError);
    assert.match(err.message, /closed/);
  });

  test("a script that just ends still sends its queued events", async () => {
    const index = new URL("../src/index.js", import.meta.url).href;
    const script = `
      import { init, ingest } from ${JSON.stringify(index)};
      init({ apiKey: "il_ingest_k", baseUrl: process.argv[1], batch: { size: 1000, intervalMs: 200 } });
      for (let n = 0; n < 30; n++) ingest("exit.flush", { n }); // not awaited, no close()
    `;
    const child = spawn(process.execPath, ["--input-type=module", "-e", script, fake.url], { stdio: "pipe" });
    let stderr = "";
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
    assert.equal(code, 0, stderr);
    assert.equal(fake.requests.length, 1); // one batch, sent when the interval passed
    assert.deepEqual(
      fake.bodies().flatMap((b) => b.batch.map((e: WireEvent) => e.payload.n)),
      Array.from({ length: 30 }, (_, n) => n),
    );
  });
});

describe("local validation", () => {
  const cases: Array<[string, () => Promise<unknown>, string]> = [
    ["an empty type", () => client().ingest("", {}), "type"],
    ["an array payload", () => client().ingest("x.y", [] as unknown as Record<string, unknown>), "payload"],
    ["a BigInt in the payload", () => client().ingest("x.y", { n: 1n }), "payload"],
    ["an empty key", () => client().ingest("x.y", {}, { idempotencyKey: "" }), "idempotency_key"],
    ["a long key", () => client().ingest("x.y", {}, { idempotencyKey: "k".repeat(256) }), "idempotency_key"],
    ["an invalid date", () => client().ingest("x.y", {}, { occurredAt: new Date("nope") }), "occurred_at"],
  ];
  for (const [name, call, field] of cases) {
    test(`${name} is rejected before sending`, async () => {
      const err = await call().catch((e: unknown) => e);
      assert.ok(err instanceof ValidationError, String(err));
      assert.equal(err.field, field);
      assert.equal(err.attempts, 0);
      assert.equal(fake.requests.length, 0);
    });
  }

  test("occurredAt accepts a Date, epoch milliseconds or an ISO string", async () => {
    const c = client();
    await c.ingest("x.y", {}, { occurredAt: new Date(Date.UTC(2026, 2, 1, 12, 30)) });
    await c.ingest("x.y", {}, { occurredAt: Date.UTC(2026, 2, 1, 12, 30) });
    await c.ingest("x.y", {}, { occurredAt: "2026-03-01T12:30:00+02:00" });
    assert.deepEqual(
      fake.bodies().map((b) => b.occurred_at),
      ["2026-03-01T12:30:00.000Z", "2026-03-01T12:30:00.000Z", "2026-03-01T12:30:00+02:00"],
    );
  });

  test("options are checked when the client is created", () => {
    assert.throws(() => createClient({ apiKey: "" }), IngestlayerError);
    assert.throws(() => createClient({ apiKey: "k", baseUrl: "ftp://x" }), TypeError);
    assert.throws(() => createClient({ apiKey: "k", batch: { size: 1001 } }), RangeError);
    assert.throws(() => createClient({ apiKey: "k", timeoutMs: 0 }), RangeError);
  });
});
