/**
 * Verify webhooks delivered by ingestlayer, in your receiver (HMAC-SHA256, constant-time comparison).
 * Byte-for-byte the rules of the Python `ingestlayer.sdk.webhooks.verify`.
 *
 * - {@link verifyWebhook} is synchronous: it needs `node:crypto` (Node.js, Bun, Deno).
 * - {@link verifyWebhookAsync} returns a promise and runs anywhere: on the standard WebCrypto
 *   (`globalThis.crypto.subtle`) in browsers and edge runtimes (Cloudflare Workers, Vercel Edge),
 *   on `node:crypto` elsewhere. Same arguments, same result, same errors (as rejections).
 *
 * Two schemes are understood:
 * - `X-Ingestlayer-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…]`: the hex HMAC-SHA256 of
 *   `"<t>." + rawBody` keyed with the secret's UTF-8 bytes (the whole secret, `whsec_` included), as
 *   Stripe signs. Several `v1=` appear while a secret is rotated; entries of other schemes are ignored.
 * - Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64> …`),
 *   used only when `X-Ingestlayer-Signature` is absent. The key is the base64-decoded secret after an
 *   optional `whsec_` prefix.
 */

import { hmacSha256, hmacSha256Sync } from "#crypto";

import { WebhookVerificationError } from "./errors.js";

export const SIGNATURE_HEADER = "X-Ingestlayer-Signature";
export const DEFAULT_TOLERANCE = 300;

const SIG = SIGNATURE_HEADER.toLowerCase();
const STD_ID = "webhook-id";
const STD_TS = "webhook-timestamp";
const STD_SIG = "webhook-signature";
const WANTED = new Set([SIG, STD_ID, STD_TS, STD_SIG]);
const TIMESTAMP = /^[0-9]{1,15}$/;
const HEX_SHA256 = /^[0-9a-fA-F]{64}$/;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** Request headers in any common shape: a fetch `Headers`, Node's `req.headers`, a `Map` or pairs. */
export type WebhookHeaders =
  | Headers
  | Map<string, string>
  | Iterable<readonly [string, string]>
  | Record<string, string | string[] | undefined>;

export interface VerifyOptions {
  /** Reject timestamps more than this many seconds away from now (default 300). */
  tolerance?: number;
  /** "Now" in unix seconds, for tests (default: the current time). */
  now?: number;
}

function secretList(secret: string | readonly string[]): string[] {
  const secrets = typeof secret === "string" ? [secret] : [...secret];
  if (secrets.length === 0) throw new Error("at least one webhook secret is required");
  secrets.forEach((item, i) => {
    if (typeof item !== "string") throw new TypeError(`secret[${i}] must be a string`);
    // An empty key would accept anything signed with an empty key: refuse the misconfiguration.
    if (item === "") throw new Error(`secret[${i}] is empty; check your configuration`);
  });
  return secrets;
}

const utf8 = new TextEncoder();

function bodyBytes(rawBody: unknown): Uint8Array {
  if (typeof rawBody === "string") return utf8.encode(rawBody);
  if (rawBody instanceof Uint8Array) return rawBody; // a Buffer too
  if (rawBody instanceof ArrayBuffer) return new Uint8Array(rawBody);
  // A parsed object would have to be re-serialised, which cannot reproduce the signed bytes.
  throw new TypeError(
    "rawBody must be the raw request body (string, Buffer, Uint8Array or ArrayBuffer), not parsed JSON",
  );
}

function concat(head: string, body: Uint8Array): Uint8Array {
  const prefix = utf8.encode(head);
  const out = new Uint8Array(prefix.length + body.length);
  out.set(prefix);
  out.set(body, prefix.length);
  return out;
}

function fromHex(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Decode base64 already checked against BASE64 (atob: standard in every runtime, unlike Buffer). */
function fromBase64(data: string): Uint8Array {
  const padded = data.replace(/=+$/, "");
  const binary = atob(padded + "=".repeat((4 - (padded.length % 4)) % 4));
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

/** Constant time for equal lengths: the time taken must not reveal how much of a guess matched. */
function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

function entries(headers: WebhookHeaders): Iterable<readonly [string, string | string[] | undefined]> {
  if (typeof Headers !== "undefined" && headers instanceof Headers) return headers.entries();
  if (headers instanceof Map) return headers.entries();
  if (typeof (headers as Iterable<unknown>)[Symbol.iterator] === "function") {
    return headers as Iterable<readonly [string, string]>;
  }
  return Object.entries(headers as Record<string, string | string[] | undefined>);
}

/** Pick the headers we care about, case-insensitively; conflicting duplicates are refused. */
function findHeaders(headers: WebhookHeaders): Map<string, string> {
  const found = new Map<string, string>();
  for (const [name, raw] of entries(headers)) {
    const key = name.toLowerCase();
    if (!WANTED.has(key) || raw === undefined) continue;
    for (const value of Array.isArray(raw) ? raw : [raw]) {
      const seen = found.get(key);
      // If two copies disagree we cannot know which one the proxy chain meant; guessing lets an attacker pick.
      if (seen !== undefined && seen !== value) {
        throw new WebhookVerificationError(`malformed header: conflicting values for ${key}`);
      }
      found.set(key, value);
    }
  }
  return found;
}

function checkTimestamp(timestamp: number, tolerance: number, now: number): void {
  const age = now - timestamp;
  if (age > tolerance) {
    throw new WebhookVerificationError(
      `timestamp outside tolerance: ${age.toFixed(0)}s old (tolerance ${tolerance}s); replayed or clock skew?`,
    );
  }
  if (-age > tolerance) {
    throw new WebhookVerificationError(
      `timestamp outside tolerance: ${(-age).toFixed(0)}s in the future (tolerance ${tolerance}s); clock skew?`,
    );
  }
}

/**
 * What a valid request was signed with: the signed bytes, a key per configured secret (made when
 * reached, so a later misconfigured secret does not hide an earlier match), and the signatures sent.
 */
interface Check {
  signed: Uint8Array;
  keys: Array<() => Uint8Array>;
  signatures: Uint8Array[];
}

function checkIngestlayer(secrets: string[], header: string, body: Uint8Array, tolerance: number, now: number): Check {
  let timestamp: number | undefined;
  const signatures: Uint8Array[] = [];
  for (const item of header.split(",")) {
    const entry = item.trim();
    const eq = entry.indexOf("=");
    if (eq < 0) throw new WebhookVerificationError(`malformed header: ${SIGNATURE_HEADER} entry without '='`);
    const key = entry.slice(0, eq);
    const value = entry.slice(eq + 1);
    if (key === "t") {
      if (timestamp !== undefined) {
        throw new WebhookVerificationError(`malformed header: ${SIGNATURE_HEADER} has several t= entries`);
      }
      if (!TIMESTAMP.test(value)) {
        throw new WebhookVerificationError(`malformed header: ${SIGNATURE_HEADER} t= is not unix seconds`);
      }
      timestamp = Number(value);
    } else if (key === "v1") {
      if (!HEX_SHA256.test(value)) {
        throw new WebhookVerificationError(`malformed header: ${SIGNATURE_HEADER} v1= is not a hex SHA-256`);
      }
      signatures.push(fromHex(value));
    }
    // Other schemes (v0=, a future v2=) are skipped so the sender can add them without breaking us.
  }
  if (timestamp === undefined) {
    throw new WebhookVerificationError(`malformed header: ${SIGNATURE_HEADER} has no t= timestamp`);
  }
  if (signatures.length === 0) {
    throw new WebhookVerificationError(`malformed header: ${SIGNATURE_HEADER} has no v1= signature`);
  }
  checkTimestamp(timestamp, tolerance, now);
  return {
    signed: concat(`${timestamp}.`, body),
    keys: secrets.map((secret) => () => utf8.encode(secret)),
    signatures,
  };
}

function standardKey(secret: string): Uint8Array {
  const raw = secret.startsWith("whsec_") ? secret.slice("whsec_".length) : secret;
  const data = raw.replace(/=+$/, "");
  if (!isStandardSecret(secret)) {
    // A configuration error on the receiver's side, not a bad request.
    throw new Error(
      "Standard Webhooks secret must be non-empty base64 (A-Z a-z 0-9 + /, optional '=' padding) " +
        "after an optional 'whsec_' prefix",
    );
  }
  return fromBase64(data);
}

function checkStandard(
  secrets: string[],
  found: Map<string, string>,
  body: Uint8Array,
  tolerance: number,
  now: number,
): Check {
  const missing = [STD_ID, STD_TS, STD_SIG].filter((name) => !found.get(name));
  if (missing.length > 0) throw new WebhookVerificationError(`missing header: ${missing.join(", ")}`);
  const msgId = found.get(STD_ID) ?? "";
  const rawTs = (found.get(STD_TS) ?? "").trim();
  if (!TIMESTAMP.test(rawTs)) throw new WebhookVerificationError(`malformed header: ${STD_TS} is not unix seconds`);
  const timestamp = Number(rawTs);
  const signatures: Uint8Array[] = [];
  for (const entry of (found.get(STD_SIG) ?? "").split(/\s+/).filter(Boolean)) {
    const comma = entry.indexOf(",");
    if (comma < 0) {
      throw new WebhookVerificationError(`malformed header: ${STD_SIG} entry is not '<version>,<signature>'`);
    }
    if (entry.slice(0, comma) !== "v1") continue; // e.g. v1a (ed25519): not ours to check here
    const value = entry.slice(comma + 1);
    if (!BASE64.test(value) || value.length % 4 !== 0) {
      throw new WebhookVerificationError(`malformed header: ${STD_SIG} v1 signature is not base64`);
    }
    signatures.push(fromBase64(value));
  }
  if (signatures.length === 0) throw new WebhookVerificationError(`malformed header: ${STD_SIG} has no v1 signature`);
  checkTimestamp(timestamp, tolerance, now);
  // A secret that is not base64 cannot have signed in this scheme (the sender refuses it for
  // `signing: standard`): it is no match, not an error of the receiver. Throwing a plain Error
  // here let one unsigned request with these headers crash a receiver keyed with such a secret.
  const keys = secrets.filter(isStandardSecret).map((secret) => () => standardKey(secret));
  if (keys.length === 0) {
    throw new WebhookVerificationError(
      "no matching signature: a Standard Webhooks signature, but no secret given is one " +
        "(base64, optionally 'whsec_'-prefixed)",
    );
  }
  return { signed: concat(`${msgId}.${timestamp}.`, body), keys, signatures };
}

function isStandardSecret(secret: string): boolean {
  const raw = secret.startsWith("whsec_") ? secret.slice("whsec_".length) : secret;
  const data = raw.replace(/=+$/, "");
  return BASE64.test(raw) && data !== "" && data.length % 4 !== 1;
}

/** Everything but the HMAC itself: arguments, headers, timestamp; then what to compute. */
function prepare(
  secret: string | readonly string[],
  headers: WebhookHeaders,
  rawBody: string | Uint8Array | ArrayBuffer,
  options: VerifyOptions,
): { check: Check; body: Uint8Array } {
  const secrets = secretList(secret);
  const tolerance = options.tolerance ?? DEFAULT_TOLERANCE;
  if (typeof tolerance !== "number" || !Number.isFinite(tolerance) || tolerance < 0) {
    throw new RangeError(`tolerance must be a non-negative number of seconds, got ${String(tolerance)}`);
  }
  const body = bodyBytes(rawBody);
  const now = options.now ?? Date.now() / 1000;
  const found = findHeaders(headers);
  // Our own header wins whenever present: falling back to another scheme after it failed would let
  // an attacker choose the weaker check.
  const ours = found.get(SIG);
  if (ours !== undefined) return { check: checkIngestlayer(secrets, ours, body, tolerance, now), body };
  if (found.has(STD_ID) || found.has(STD_TS) || found.has(STD_SIG)) {
    return { check: checkStandard(secrets, found, body, tolerance, now), body };
  }
  throw new WebhookVerificationError(
    `missing header: expected ${SIGNATURE_HEADER} (or Standard Webhooks webhook-id, webhook-timestamp and webhook-signature)`,
  );
}

const NO_MATCH = "no matching signature: wrong secret, or the body was modified";
// ignoreBOM: decode exactly what was signed; JSON.parse then refuses a BOM, as it always did.
const utf8Decoder = new TextDecoder("utf-8", { ignoreBOM: true });

function parse<T>(body: Uint8Array): T {
  try {
    return JSON.parse(utf8Decoder.decode(body)) as T;
  } catch (err) {
    throw new WebhookVerificationError(
      `signature is valid but the body is not JSON: ${err instanceof Error ? err.message : String(err)}`,
    );
  }
}

/**
 * Check that a webhook request came from ingestlayer and return its parsed JSON body.
 *
 * `secret` is the endpoint's signing secret, or several (new and old) while rotating: one matching
 * is enough. `headers` may be `req.headers` (Node), a fetch `Headers`, a `Map` or a plain object;
 * names are matched case-insensitively. `rawBody` must be the exact bytes received, before any JSON
 * parsing (with Express: `express.raw({ type: "application/json" })`).
 *
 * Throws {@link WebhookVerificationError} when the request must be rejected (answer 400), and a
 * plain `Error`/`TypeError` for a misconfiguration on your side (no secret, a negative tolerance,
 * a parsed body).
 *
 * Synchronous, so it needs `node:crypto` (Node.js, Bun, Deno). Where only WebCrypto exists
 * (browsers, Cloudflare Workers, Vercel Edge) it throws an `Error` saying to use
 * {@link verifyWebhookAsync}, which works everywhere.
 *
 * @example
 * const event = verifyWebhook<{ id: string; type: string; payload: Record<string, unknown> }>(
 *   process.env.INGESTLAYER_WEBHOOK_SECRET!, req.headers, rawBody,
 * );
 */
export function verifyWebhook<T = unknown>(
  secret: string | readonly string[],
  headers: WebhookHeaders,
  rawBody: string | Uint8Array | ArrayBuffer,
  options: VerifyOptions = {},
): T {
  const hmac = hmacSha256Sync;
  if (hmac === undefined) {
    throw new Error(
      "verifyWebhook is synchronous and needs node:crypto, which this runtime lacks: " +
        "use `await verifyWebhookAsync(...)` (WebCrypto) instead",
    );
  }
  const { check, body } = prepare(secret, headers, rawBody, options);
  for (const key of check.keys) {
    const expected = hmac(key(), check.signed);
    if (check.signatures.some((candidate) => equalBytes(expected, candidate))) return parse<T>(body);
  }
  throw new WebhookVerificationError(NO_MATCH);
}

/**
 * {@link verifyWebhook} for every runtime: the same arguments and checks, as a promise that rejects
 * with the same errors. It uses the standard WebCrypto (`crypto.subtle`) where `node:crypto` is not
 * available: browsers, service workers, Cloudflare Workers, Vercel Edge, Deno Deploy.
 *
 * @example
 * export default {
 *   async fetch(request: Request, env: { INGESTLAYER_WEBHOOK_SECRET: string }): Promise<Response> {
 *     const raw = await request.arrayBuffer();
 *     try {
 *       const event = await verifyWebhookAsync(env.INGESTLAYER_WEBHOOK_SECRET, request.headers, raw);
 *       return Response.json({ ok: true, type: (event as { type: string }).type });
 *     } catch (err) {
 *       if (err instanceof WebhookVerificationError) return new Response(err.message, { status: 400 });
 *       throw err;
 *     }
 *   },
 * };
 */
export async function verifyWebhookAsync<T = unknown>(
  secret: string | readonly string[],
  headers: WebhookHeaders,
  rawBody: string | Uint8Array | ArrayBuffer,
  options: VerifyOptions = {},
): Promise<T> {
  const { check, body } = prepare(secret, headers, rawBody, options);
  for (const key of check.keys) {
    const expected = await hmacSha256(key(), check.signed);
    if (check.signatures.some((candidate) => equalBytes(expected, candidate))) return parse<T>(body);
  }
  throw new WebhookVerificationError(NO_MATCH);
}
