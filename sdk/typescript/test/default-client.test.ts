/** The module-level default client: init(), environment variables, and the error without either. */

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { close, flush, group, identify, IngestlayerError, ingest, init } from "../src/index.js";
import { FakeServer, batchAccepted } from "../test-support/fake.js";

let fake: FakeServer;
before(async () => {
  fake = await FakeServer.start();
  fake.fallback = (req) => {
    if (req.path !== "/v1/events") return { body: { ok: true } };
    return "batch" in req.json() ? batchAccepted(req) : { status: 202, body: { id: "evt_default", duplicate: false } };
  };
});
after(async () => {
  await fake.close();
});

test("without init() or INGESTLAYER_API_KEY, ingest rejects with a clear error", async () => {
  delete process.env.INGESTLAYER_API_KEY;
  const err = await ingest("feature.used", {}).catch((e: unknown) => e);
  assert.ok(err instanceof IngestlayerError);
  assert.match(err.message, /call init\(\{ apiKey \}\) first, or set INGESTLAYER_API_KEY/);
});

test("INGESTLAYER_API_KEY and INGESTLAYER_BASE_URL configure the default client", async () => {
  process.env.INGESTLAYER_API_KEY = "il_ingest_from_env";
  process.env.INGESTLAYER_BASE_URL = fake.url;
  try {
    const result = await ingest("feature.used", { user_id: "u_1", feature: "api", count: 1, plan: "pro" });
    assert.equal(result.id, "evt_default");
    assert.equal(fake.requests.at(-1)?.headers.authorization, "Bearer il_ingest_from_env");
  } finally {
    await close();
    delete process.env.INGESTLAYER_API_KEY;
    delete process.env.INGESTLAYER_BASE_URL;
  }
});

test("init() configures ingest, identify, group, flush and close", async () => {
  const client = init({ apiKey: "il_ingest_init", baseUrl: fake.url, batch: { size: 50, intervalMs: 10_000 } });
  const pending = ingest("feature.used", { user_id: "u_2", feature: "csv.export", count: 2, plan: "free" });
  assert.equal(client.pending, 1);
  await flush();
  assert.equal((await pending).idempotencyKey.length, 36);
  assert.deepEqual(await identify("u_2", { plan: "free" }), { ok: true });
  assert.deepEqual(await group("u_2", "acct_2", { name: "Two" }), { ok: true });
  await close();
  const paths = fake.requests.slice(-3).map((r) => r.path);
  assert.deepEqual(paths, ["/v1/events", "/v1/identify", "/v1/group"]);
  assert.equal(fake.requests.at(-1)?.headers.authorization, "Bearer il_ingest_init");
});
