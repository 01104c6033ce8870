/** Pure helpers shared by the client: backoff, Retry-After, error bodies, batch splitting. */

/** The server's limits (SPEC §7): at most 1000 events and 5 MiB per request. */
export const MAX_BATCH_ITEMS = 1000;
export const MAX_REQUEST_BYTES = 5 * 1024 * 1024;
const BATCH_OVERHEAD = 64;

/**
 * Delay in milliseconds before retry number `retry` (1-based): exponential and capped, with "equal
 * jitter" (half fixed, half random) so clients that failed together spread out.
 */
export function backoffDelay(retry: number, baseMs: number, maxMs: number): number {
  const step = Math.min(maxMs, baseMs * 2 ** (retry - 1));
  return step / 2 + Math.random() * (step / 2);
}

/** Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date), or undefined. */
export function parseRetryAfter(value: string | null | undefined, nowMs: number = Date.now()): number | undefined {
  if (value === null || value === undefined || value.trim() === "") return undefined;
  const text = value.trim();
  let seconds: number;
  if (/^[+-]?\d+(\.\d+)?$/.test(text)) {
    seconds = Number(text);
  } else {
    const when = Date.parse(text);
    if (Number.isNaN(when)) return undefined;
    seconds = (when - nowMs) / 1000;
  }
  return Number.isFinite(seconds) ? Math.max(0, seconds) : undefined;
}

/** `{code, message, field}` from an ingestlayer error body; tolerant of anything else. */
export function errorDetails(body: string): { code?: string; message?: string; field?: string } {
  let doc: unknown;
  try {
    doc = JSON.parse(body);
  } catch {
    return {};
  }
  if (typeof doc !== "object" || doc === null) return {};
  const err = (doc as { error?: unknown }).error;
  if (typeof err !== "object" || err === null) return {};
  const out: { code?: string; message?: string; field?: string } = {};
  for (const key of ["code", "message", "field"] as const) {
    const value = (err as Record<string, unknown>)[key];
    if (typeof value === "string") out[key] = value;
  }
  return out;
}

/** The item index a batch validation error names (`batch[3].type` → 3). */
export function batchIndex(field: string | undefined): number | undefined {
  const match = field === undefined ? null : /^batch\[(\d+)\]/.exec(field);
  return match?.[1] === undefined ? undefined : Number(match[1]);
}

/**
 * Split events (by encoded byte size) into `[start, end)` ranges that each fit one batch request.
 * An event larger than `maxBytes` on its own still gets a range: the server answers 413 for it, so
 * it is reported rather than silently dropped.
 */
export function chunkRanges(sizes: number[], maxItems: number, maxBytes = MAX_REQUEST_BYTES): Array<[number, number]> {
  const ranges: Array<[number, number]> = [];
  let start = 0;
  let total = BATCH_OVERHEAD;
  sizes.forEach((size, i) => {
    if (i > start && (i - start >= maxItems || total + size + 1 > maxBytes)) {
      ranges.push([start, i]);
      start = i;
      total = BATCH_OVERHEAD;
    }
    total += size + 1;
  });
  if (start < sizes.length) ranges.push([start, sizes.length]);
  return ranges;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A short human reason for a failed `fetch` (undici hides the useful part in `cause`). */
export function describeNetworkError(err: unknown, timeoutMs: number): string {
  if (err instanceof Error) {
    if (err.name === "TimeoutError" || err.name === "AbortError") return `timed out after ${timeoutMs} ms`;
    const cause = (err as { cause?: unknown }).cause;
    if (cause instanceof Error) {
      const code = (cause as { code?: unknown }).code;
      return typeof code === "string" ? `${code} (${cause.message})` : cause.message;
    }
    return err.message;
  }
  return String(err);
}

/**
 * Why `value` would not reach the server exactly as given, e.g. `"payload.stats[2] is NaN (…)"`, or
 * undefined when it would. `JSON.stringify` does not throw for these, it changes them: NaN and
 * ±Infinity (also boxed, or returned by a `toJSON`) and an invalid Date become `null`; `undefined`,
 * a function or a symbol becomes `null` in an array and vanishes from an object; a Map, a Set or an
 * Error becomes `{}`. An object property whose value is `undefined` is fine: it is an absent key.
 *
 * Call it after `JSON.stringify(value)` succeeded: BigInt and cycles were refused there, so this
 * walk ends. It mirrors JSON.stringify's traversal (own enumerable string keys, `toJSON(key)`), costs
 * a type check per value, and builds the path only for the value it refuses.
 */
export function unsendable(value: unknown, name: string): string | undefined {
  const problem = check(value, name, 0, true);
  return problem === undefined ? undefined : `${name}${problem.path.reverse().join("")} ${problem.reason}`;
}

/** What is wrong, and the path to it, innermost step first (appended while unwinding). */
interface Problem {
  reason: string;
  path: string[];
}

/**
 * Deeper than this, values are not checked: the server refuses JSON nested more than 64 levels
 * (422 too_deep) anyway, so nothing below here can be stored changed; and the walk stays far from
 * the call stack's limit.
 */
const MAX_CHECK_DEPTH = 128;

const hasOwn = Object.prototype.hasOwnProperty;
const NOT_JSON = "(NaN and Infinity are not JSON: JSON.stringify would send null)";

function check(value: unknown, key: string, depth: number, callToJSON: boolean): Problem | undefined {
  switch (typeof value) {
    case "number":
      return Number.isFinite(value) ? undefined : { reason: `is ${value} ${NOT_JSON}`, path: [] };
    case "string":
    case "boolean":
    case "undefined": // an object's key is omitted; arrays check their items for undefined
      return undefined;
    case "function":
    case "symbol":
      return { reason: `is a ${typeof value} (not JSON: JSON.stringify would drop it or send null)`, path: [] };
    case "bigint": // JSON.stringify throws first; here for completeness
      return { reason: "is a BigInt (not JSON: send it as a string)", path: [] };
    default:
      break;
  }
  if (value === null || depth > MAX_CHECK_DEPTH) return undefined;
  const object = value as Record<string, unknown>;
  if (callToJSON && typeof object.toJSON === "function") {
    if (value instanceof Date) {
      return Number.isNaN(value.getTime())
        ? { reason: "is an invalid Date (JSON.stringify would send null)", path: [] }
        : undefined;
    }
    // Like JSON.stringify: what toJSON returns is sent (and is not asked for its own toJSON).
    return check(object.toJSON(key), key, depth, false);
  }
  if (value instanceof Number) return check(Number(value), key, depth, false);
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const item: unknown = value[i];
      const problem =
        item === undefined
          ? { reason: "is undefined (not JSON: in an array JSON.stringify would send null)", path: [] }
          : check(item, String(i), depth + 1, true);
      if (problem !== undefined) {
        problem.path.push(`[${i}]`);
        return problem;
      }
    }
    return undefined;
  }
  const lost = lostType(object);
  if (lost !== undefined) return { reason: lost, path: [] };
  // for-in with an own-key check (JSON.stringify's own enumerable string keys) allocates nothing,
  // unlike Object.keys: measurably cheaper on payloads of many small objects.
  for (const k in object) {
    if (!hasOwn.call(object, k)) continue;
    const problem = check(object[k], k, depth + 1, true);
    if (problem !== undefined) {
      problem.path.push(/^[A-Za-z_$][\w$]*$/.test(k) ? `.${k}` : `[${JSON.stringify(k)}]`);
      return problem;
    }
  }
  return undefined;
}

/** Objects whose content JSON.stringify cannot see (it sends `{}`, or own fields only), and why. */
function lostType(value: object): string | undefined {
  if (value instanceof Map) return "is a Map (JSON.stringify would send {}): send Object.fromEntries(map)";
  if (value instanceof Set) return "is a Set (JSON.stringify would send {}): send [...set]";
  if (value instanceof WeakMap) return "is a WeakMap (JSON.stringify would send {})";
  if (value instanceof WeakSet) return "is a WeakSet (JSON.stringify would send {})";
  if (value instanceof Error) {
    return "is an Error (JSON.stringify would lose its message): send the fields you need, e.g. error.message";
  }
  return undefined;
}
