/**
 * verifyWebhook: pinned vectors (computed independently of ingestlayer, the same literals as
 * tests/unit/test_signing.py), edge cases, and requests signed by the Python server code
 * (INGESTLAYER_WEBHOOK_CASES, written by tests/e2e/test_sdk_typescript.py).
 */

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";

import { WebhookVerificationError, verifyWebhook } from "../src/index.js";

const SECRET = "whsec_test";
const OLD_SECRET = "whsec_old";
const T = 1717000000;
const BODY = '{"type":"user.signed_up","payload":{"email":"ada@acme.com","plan":"pro"}}';
const GOLDEN_V1 = "90654a5ef552884e4a0156eb75a22d2e71fc524ff3e673f254a86ad1327a675d";
const GOLDEN_V1_OLD = "e5785f5bdb1dac0654d2524c22e334d09c007daa4ef211713b7f5439ca8a54f3";
const MSG_ID = "msg_2Qx7";
const GOLDEN_STD = "v1,PdqLgZOVfL1NLlJgpGZQ/Fr84GzTlQkdcG3J0t+hi+U=";
const PARSED = { type: "user.signed_up", payload: { email: "ada@acme.com", plan: "pro" } };
const at = { now: T + 10 };

function sign(secret: string, t: number, body: string): string {
  return createHmac("sha256", secret).update(`${t}.${body}`).digest("hex");
}

function rejects(fn: () => unknown, fragment: string): void {
  assert.throws(fn, (err: unknown) => err instanceof WebhookVerificationError && err.message.includes(fragment));
}

describe("X-Ingestlayer-Signature", () => {
  test("pinned vector", () => {
    const headers = { "X-Ingestlayer-Signature": `t=${T},v1=${GOLDEN_V1}` };
    assert.deepEqual(verifyWebhook(SECRET, headers, BODY, at), PARSED);
    assert.equal(sign(SECRET, T, BODY), GOLDEN_V1);
  });

  test("rotation: several v1= entries, either secret verifies", () => {
    const headers = { "x-ingestlayer-signature": `t=${T},v1=${GOLDEN_V1},v1=${GOLDEN_V1_OLD}` };
    assert.deepEqual(verifyWebhook(SECRET, headers, BODY, at), PARSED);
    assert.deepEqual(verifyWebhook(OLD_SECRET, headers, BODY, at), PARSED);
    assert.deepEqual(verifyWebhook(["whsec_new", OLD_SECRET], headers, BODY, at), PARSED);
    rejects(() => verifyWebhook("whsec_other", headers, BODY, at), "no matching signature");
  });

  test("every header and body shape a server framework hands over", () => {
    const value = `t=${T},v1=${GOLDEN_V1}`;
    const shapes = [
      new Headers({ "X-Ingestlayer-Signature": value }),
      new Map([["x-ingestlayer-signature", value]]),
      [["X-INGESTLAYER-SIGNATURE", value]] as Array<[string, string]>,
      { "x-ingestlayer-signature": [value, value] },
    ];
    for (const headers of shapes) assert.deepEqual(verifyWebhook(SECRET, headers, BODY, at), PARSED);
    const bytes = Buffer.from(BODY);
    for (const body of [bytes, new Uint8Array(bytes), bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length)]) {
      assert.deepEqual(verifyWebhook(SECRET, { "x-ingestlayer-signature": value }, body, at), PARSED);
    }
  });

  test("rejections say why", () => {
    const good = `t=${T},v1=${GOLDEN_V1}`;
    rejects(() => verifyWebhook(SECRET, { "x-ingestlayer-signature": good }, BODY + " ", at), "no matching signature");
    rejects(() => verifyWebhook(SECRET, { "x-ingestlayer-signature": good }, BODY, { now: T + 301 }), "301s old");
    rejects(() => verifyWebhook(SECRET, { "x-ingestlayer-signature": good }, BODY, { now: T - 301 }), "in the future");
    assert.deepEqual(verifyWebhook(SECRET, { "x-ingestlayer-signature": good }, BODY, { now: T + 301, tolerance: 400 }), PARSED);
    rejects(() => verifyWebhook(SECRET, {}, BODY, at), "missing header");
    rejects(() => verifyWebhook(SECRET, { "x-ingestlayer-signature": `v1=${GOLDEN_V1}` }, BODY, at), "no t=");
    rejects(() => verifyWebhook(SECRET, { "x-ingestlayer-signature": `t=${T}` }, BODY, at), "no v1=");
    rejects(() => verifyWebhook(SECRET, { "x-ingestlayer-signature": `t=${T},v1=abc` }, BODY, at), "not a hex SHA-256");
    rejects(() => verifyWebhook(SECRET, { "x-ingestlayer-signature": `t=1e9,v1=${GOLDEN_V1}` }, BODY, at), "not unix seconds");
    rejects(() => verifyWebhook(SECRET, { "x-ingestlayer-signature": `t=${T},t=${T},v1=${GOLDEN_V1}` }, BODY, at), "several t=");
    rejects(() => verifyWebhook(SECRET, { "x-ingestlayer-signature": [good, `t=${T},v1=${GOLDEN_V1_OLD}`] }, BODY, at), "conflicting");
    // Another scheme's entry is ignored, as the sender may add one.
    assert.deepEqual(verifyWebhook(SECRET, { "x-ingestlayer-signature": `t=${T},v0=zz,v1=${GOLDEN_V1}` }, BODY, at), PARSED);
    // A valid signature over a body that is not JSON.
    const text = "not json";
    rejects(
      () => verifyWebhook(SECRET, { "x-ingestlayer-signature": `t=${T},v1=${sign(SECRET, T, text)}` }, text, at),
      "body is not JSON",
    );
  });

  test("our header wins: a failing X-Ingestlayer-Signature never falls back to Standard Webhooks", () => {
    const headers = {
      "x-ingestlayer-signature": `t=${T},v1=${"0".repeat(64)}`,
      "webhook-id": MSG_ID,
      "webhook-timestamp": String(T),
      "webhook-signature": GOLDEN_STD,
    };
    rejects(() => verifyWebhook(SECRET, headers, BODY, at), "no matching signature");
  });

  test("misconfiguration is a plain error, not a verification failure", () => {
    const headers = { "x-ingestlayer-signature": `t=${T},v1=${GOLDEN_V1}` };
    assert.throws(() => verifyWebhook("", headers, BODY, at), /empty/);
    assert.throws(() => verifyWebhook([], headers, BODY, at), /at least one/);
    assert.throws(() => verifyWebhook(SECRET, headers, BODY, { tolerance: -1 }), RangeError);
    assert.throws(() => verifyWebhook(SECRET, headers, PARSED as unknown as string, at), TypeError);
  });
});

describe("Standard Webhooks", () => {
  const headers = { "webhook-id": MSG_ID, "webhook-timestamp": String(T), "webhook-signature": GOLDEN_STD };

  test("pinned vector", () => {
    assert.deepEqual(verifyWebhook(SECRET, headers, BODY, at), PARSED);
    assert.deepEqual(verifyWebhook(SECRET, { ...headers, "webhook-signature": `v1a,xyz ${GOLDEN_STD}` }, BODY, at), PARSED);
  });

  test("rejections", () => {
    rejects(() => verifyWebhook("whsec_b3RoZXI=", headers, BODY, at), "no matching signature");
    rejects(() => verifyWebhook(SECRET, { ...headers, "webhook-id": "msg_other" }, BODY, at), "no matching signature");
    rejects(() => verifyWebhook(SECRET, { "webhook-id": MSG_ID }, BODY, at), "missing header: webhook-timestamp, webhook-signature");
    rejects(() => verifyWebhook(SECRET, headers, BODY, { now: T + 1000 }), "timestamp outside tolerance");
    rejects(() => verifyWebhook(SECRET, { ...headers, "webhook-signature": "v1" }, BODY, at), "is not '<version>,<signature>'");
    rejects(() => verifyWebhook(SECRET, { ...headers, "webhook-signature": "v1,@@@" }, BODY, at), "not base64");
    // A secret that is not base64 cannot have signed in this scheme: no match, never a plain Error
    // (one request with these headers crashed a receiver keyed with an hmac secret).
    rejects(() => verifyWebhook("whsec_not-base64!", headers, BODY, at), "no secret given is one");
    rejects(() => verifyWebhook("acme-hooks-secret-2024!", headers, BODY, at), "no secret given is one");
    assert.deepEqual(verifyWebhook(["acme-hooks-secret-2024!", SECRET], headers, BODY, at), PARSED);
  });
});

interface PythonCase {
  name: string;
  secret: string | string[];
  headers: Record<string, string>;
  body: string;
  valid: boolean;
  expected?: unknown;
  error?: string;
}

const casesFile = process.env.INGESTLAYER_WEBHOOK_CASES;

describe("signed by the Python server code", { skip: casesFile ? false : "INGESTLAYER_WEBHOOK_CASES is not set" }, () => {
  const cases = casesFile ? (JSON.parse(readFileSync(casesFile, "utf8")) as PythonCase[]) : [];
  test("the fixture has cases", () => {
    assert.ok(cases.length >= 5);
  });
  for (const c of cases) {
    test(c.name, () => {
      const body = Buffer.from(c.body, "utf8");
      if (c.valid) {
        assert.deepEqual(verifyWebhook(c.secret, c.headers, body), c.expected);
      } else {
        rejects(() => verifyWebhook(c.secret, c.headers, body), c.error ?? "");
      }
    });
  }
});
