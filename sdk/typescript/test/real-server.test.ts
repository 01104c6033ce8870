/**
 * Against a real ingestlayer server (INGESTLAYER_URL, INGESTLAYER_INGEST_KEY, given by
 * tests/e2e/test_sdk_typescript.py, which then checks what the server stored). Skipped without them.
 */

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { AuthenticationError, ValidationError, createClient, ingest, init, close } from "../src/index.js";
import { realServer } from "../test-support/fake.js";

const server = realServer();
const skip = typeof server === "string" ? server : false;
const url = typeof server === "string" ? "" : server.url;
const apiKey = typeof server === "string" ? "" : server.apiKey;

/** What the recipes pass around. */
const ctx = { user: { id: "u_ctx", plan: "pro" } };
const user = { id: "u_signup", email: "ada@acme.com", plan: "pro" };

describe("real server", { skip }, () => {
  test("the recipes' calls, word for word, with init()", async () => {
    init({ apiKey, baseUrl: url });
    const used = await ingest("feature.used", {
      user_id: ctx.user.id,
      feature: "csv.export",
      count: 1,
      plan: ctx.user.plan,
    });
    assert.match(used.id, /^evt_/);
    assert.equal(used.duplicate, false);

    const signup = () =>
      ingest(
        "user.signed_up",
        {
          user_id: user.id,
          email: user.email,
          plan: user.plan,
          source: "marketing-site",
        },
        {
          idempotencyKey: user.id, // one signup per user, ever
        },
      );
    const first = await signup();
    const second = await signup();
    assert.deepEqual(first, { id: first.id, duplicate: false, idempotencyKey: user.id });
    assert.deepEqual(second, { id: first.id, duplicate: true, idempotencyKey: user.id });
    await close();
  });

  test("server-side validation names the field, and is not retried", async () => {
    const c = createClient({ apiKey, baseUrl: url });
    const err = await c.ingest("feature used", {}).catch((e: unknown) => e);
    assert.ok(err instanceof ValidationError);
    assert.equal(err.status, 422);
    assert.equal(err.field, "type");
    assert.equal(err.attempts, 1);
    const big = await c.ingest("ts.big", { blob: "x".repeat(300 * 1024) }).catch((e: unknown) => e);
    assert.ok(big instanceof ValidationError);
    assert.equal(big.status, 413);
    assert.equal(big.field, "payload");
  });

  test("NaN and Infinity are refused before sending, so the server never stores null for them", async () => {
    const c = createClient({ apiKey, baseUrl: url });
    const err = await c.ingest("ts.nan", { n: NaN }).catch((e: unknown) => e);
    assert.ok(err instanceof ValidationError, String(err));
    assert.equal(err.field, "payload");
    assert.equal(err.attempts, 0);
    const refused: unknown[] = [];
    const batching = createClient({
      apiKey,
      baseUrl: url,
      batch: { size: 10, intervalMs: 20 },
      onError: (e) => refused.push(e),
    });
    void batching.ingest("ts.nan", { nested: { values: [1, Infinity] } });
    await batching.close();
    assert.equal(refused.length, 1);
    assert.ok(refused[0] instanceof ValidationError && refused[0].field === "payload");
  });

  test("a wrong key is an AuthenticationError at once", async () => {
    const err = await createClient({ apiKey: "il_ingest_wrong", baseUrl: url })
      .ingest("ts.auth", {})
      .catch((e: unknown) => e);
    assert.ok(err instanceof AuthenticationError);
    assert.equal(err.status, 401);
    assert.equal(err.attempts, 1);
  });

  test("batching stores every event exactly once", async () => {
    const batching = createClient({ apiKey, baseUrl: url, batch: { size: 25, intervalMs: 50 } });
    const keys = Array.from({ length: 120 }, (_, n) => `ts-batch-${n}`);
    const results = await Promise.all(keys.map((key, n) => batching.ingest("ts.batch", { n }, { idempotencyKey: key })));
    await batching.close();
    assert.equal(new Set(results.map((r) => r.id)).size, 120);
    assert.ok(results.every((r) => !r.duplicate));
    // Sending them all again proves each was stored once, under the id the batch reported.
    const again = createClient({ apiKey, baseUrl: url, batch: { size: 120, intervalMs: 10_000 } });
    const repeated = await Promise.all(keys.map((key, n) => again.ingest("ts.batch", { n }, { idempotencyKey: key })));
    assert.deepEqual(
      repeated,
      results.map((r, n) => ({ id: r.id, duplicate: true, idempotencyKey: keys[n] })),
    );
  });

  test("several clients side by side, generated keys never collide", async () => {
    const a = createClient({ apiKey, baseUrl: url });
    const b = createClient({ apiKey, baseUrl: url, batch: { size: 5, intervalMs: 20 } });
    const results = await Promise.all([
      ...Array.from({ length: 5 }, (_, n) => a.ingest("ts.multi", { client: "a", n })),
      ...Array.from({ length: 5 }, (_, n) => b.ingest("ts.multi", { client: "b", n })),
    ]);
    await b.close();
    assert.equal(new Set(results.map((r) => r.id)).size, 10);
    assert.equal(new Set(results.map((r) => r.idempotencyKey)).size, 10);
  });
});
