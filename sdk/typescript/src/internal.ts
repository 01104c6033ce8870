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
