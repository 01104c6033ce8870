/**
 * The cryptography the SDK needs, on Node.js (and Bun and Deno): `node:crypto`, which also gives the
 * synchronous HMAC behind `verifyWebhook`. Picked by the `#crypto` import in package.json; runtimes
 * without `node:crypto` (browsers, edge workers) get ./crypto-web.js instead.
 */

import { createHmac, randomUUID as nodeRandomUUID } from "node:crypto";

/** A random (v4) UUID: the idempotency key of an event sent without one. */
export function randomUUID(): string {
  return nodeRandomUUID();
}

/** HMAC-SHA256, synchronously; `undefined` where the runtime only has the asynchronous WebCrypto. */
export const hmacSha256Sync: ((key: Uint8Array, data: Uint8Array) => Uint8Array) | undefined = (key, data) =>
  createHmac("sha256", key).update(data).digest();

/** HMAC-SHA256. */
export async function hmacSha256(key: Uint8Array, data: Uint8Array): Promise<Uint8Array> {
  return createHmac("sha256", key).update(data).digest();
}
