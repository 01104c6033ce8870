/**
 * Typed errors. Everything the client throws is an {@link IngestlayerError}; HTTP answers map to
 * {@link AuthenticationError} (401/403), {@link ValidationError} (400/413/422, with the offending
 * `field`), {@link RateLimitError} (429), {@link ServerError} (5xx) and {@link APIError} (any other
 * status); {@link ConnectionError} means the server could not be reached at all.
 *
 * @example
 * try {
 *   await ingest("feature used", {});
 * } catch (err) {
 *   if (err instanceof ValidationError) console.error(err.status, err.field); // 422 "type"
 * }
 */

/** Extra details carried by every {@link IngestlayerError}. */
export interface ErrorDetails {
  /** HTTP status of the last answer; undefined when rejected before sending or when no answer came. */
  status?: number | undefined;
  /** The server's error code, e.g. `"validation_error"`. */
  code?: string | undefined;
  /** The request field that was blamed, e.g. `"type"` or `"batch[3].payload"`. */
  field?: string | undefined;
  /** Seconds the server asked us to wait (`Retry-After` on 429/503). */
  retryAfter?: number | undefined;
  /** How many requests were made before giving up (0: rejected locally). */
  attempts?: number | undefined;
  cause?: unknown;
}

/** Base class of every error the SDK throws (webhook verification has its own, below). */
export class IngestlayerError extends Error {
  readonly status: number | undefined;
  readonly code: string | undefined;
  readonly field: string | undefined;
  readonly retryAfter: number | undefined;
  readonly attempts: number;

  constructor(message: string, details: ErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = new.target.name;
    this.status = details.status;
    this.code = details.code;
    this.field = details.field;
    this.retryAfter = details.retryAfter;
    this.attempts = details.attempts ?? 0;
  }
}

/** The server answered with an HTTP error not covered by a more specific class (404, 409, …). */
export class APIError extends IngestlayerError {}

/** 401 or 403: the API key is missing, wrong, revoked or not allowed to do this. Never retried. */
export class AuthenticationError extends APIError {}

/** 400, 413 or 422 (or rejected before sending): `field` names what is wrong. Never retried. */
export class ValidationError extends APIError {}

/** 429 after every retry, or with a `Retry-After` longer than `maxRetryWaitMs`. */
export class RateLimitError extends APIError {}

/** A 5xx answer after every retry: the event may not be stored; sending it again later is safe. */
export class ServerError extends APIError {}

/** The server could not be reached (refused, reset, timed out, TLS) after every retry. */
export class ConnectionError extends IngestlayerError {}

/** Batching is on and `batch.maxQueue` events are already waiting to be sent. */
export class QueueFullError extends IngestlayerError {}

/**
 * The webhook request did not come from ingestlayer (or was altered or replayed): reject it with a
 * 400. The message says why: a missing or malformed header, a stale timestamp, no matching
 * signature, or a body that is not JSON.
 */
export class WebhookVerificationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WebhookVerificationError";
  }
}
