/**
 * The cryptography the SDK needs where only the standard WebCrypto exists (browsers, Cloudflare
 * Workers, Vercel Edge and other edge runtimes): `globalThis.crypto`. Picked by the `#crypto` import
 * in package.json instead of ./crypto-node.js, so nothing here loads a `node:` module.
 *
 * WebCrypto's HMAC is asynchronous only: here `verifyWebhook` (synchronous) says to use
 * `verifyWebhookAsync`.
 */

import type { webcrypto } from "node:crypto"; // types only: erased from the JavaScript

function webCrypto(): webcrypto.Crypto {
  const crypto = (globalThis as { crypto?: webcrypto.Crypto }).crypto;
  if (crypto === undefined || typeof crypto.getRandomValues !== "function") {
    throw new Error("this runtime has no WebCrypto (globalThis.crypto), which @ingestlayer/sdk needs");
  }
  return crypto;
}

/** A random (v4) UUID: the idempotency key of an event sent without one. */
export function randomUUID(): string {
  const crypto = webCrypto();
  // randomUUID is missing from insecure (http://) browser pages and some older runtimes.
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6]! & 0x0f) | 0x40; // version 4
  b[8] = (b[8]! & 0x3f) | 0x80; // RFC 4122 variant
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** HMAC-SHA256, synchronously; `undefined` where the runtime only has the asynchronous WebCrypto. */
export const hmacSha256Sync: ((key: Uint8Array, data: Uint8Array) => Uint8Array) | undefined = undefined;

/** HMAC-SHA256 with WebCrypto. */
export async function hmacSha256(key: Uint8Array, data: Uint8Array): Promise<Uint8Array> {
  const { subtle } = webCrypto();
  if (subtle === undefined) {
    throw new Error("this runtime has no crypto.subtle (a browser page must be served over https)");
  }
  const hmacKey = await subtle.importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await subtle.sign("HMAC", hmacKey, data));
}
