/**
 * The ingestlayer client: `ingest`, `identify`, `group`, with idempotency keys, retries and optional
 * batching. Construct it with {@link createClient} (or {@link init} for the module-level default).
 */

import { randomUUID } from "#crypto";

import {
  APIError,
  AuthenticationError,
  ConnectionError,
  IngestlayerError,
  QueueFullError,
  RateLimitError,
  ServerError,
  ValidationError,
} from "./errors.js";
import {
  MAX_BATCH_ITEMS,
  backoffDelay,
  batchIndex,
  chunkRanges,
  describeNetworkError,
  errorDetails,
  parseRetryAfter,
  sleep,
  unsendable,
} from "./internal.js";

export const VERSION = "0.1.0";
export const DEFAULT_BASE_URL = "http://127.0.0.1:8000";
const USER_AGENT = `ingestlayer-node/${VERSION}`;
// A refused baseUrl is never quoted in its error: see the constructor.
const UNQUOTED = "(not repeated here: it may hold a credential)";

/** A JSON object: what an event payload or a set of traits is. */
// `any`, not `unknown`: an `interface`-typed value is assignable to Record<string, any> only.
export type JsonObject = Record<string, any>;

/** The event map used when none is declared: any dotted name, any JSON object payload. */
export type AnyEvents = Record<string, JsonObject>;

/** The event names of an event map `E`. */
export type EventName<E> = Extract<keyof E, string>;

/** Options of one `ingest` call. */
export interface IngestOptions {
  /** Makes a repeat of this event count once (per project). Generated (a UUID) when omitted. */
  idempotencyKey?: string;
  /** When it happened: a Date, an ISO 8601 string or epoch milliseconds (default: when received). */
  occurredAt?: Date | string | number;
}

/** The server's answer for one event. */
export interface IngestResult {
  /** The stored event's id (`evt_…`); for a duplicate, the first event's id. */
  id: string;
  /** True when the server already held an event with this idempotency key (nothing routed again). */
  duplicate: boolean;
  /** The key that was sent: yours, or the generated one. */
  idempotencyKey: string;
}

/** An event as sent on the wire (what `onError` receives). */
export interface WireEvent {
  type: string;
  payload: JsonObject;
  idempotency_key: string;
  occurred_at?: string;
}

export interface BatchOptions {
  /** Send when this many events are queued (default 100, at most 1000). */
  size?: number;
  /** Send at most this long after an event was queued, in ms (default 500). */
  intervalMs?: number;
  /** `ingest` rejects with QueueFullError beyond this many unsent events (default 10000). */
  maxQueue?: number;
}

export interface ClientOptions {
  /** An ingest key (`il_ingest_…`). Default: `process.env.INGESTLAYER_API_KEY`. */
  apiKey?: string;
  /** Default: `process.env.INGESTLAYER_BASE_URL`, else `http://127.0.0.1:8000`. */
  baseUrl?: string;
  /** Per-request timeout in ms (default 10000). */
  timeoutMs?: number;
  /** Retries after the first attempt, on network errors, 429 and 5xx (default 5). */
  maxRetries?: number;
  /** Backoff: the n-th retry waits about min(maxMs, baseMs * 2^(n-1)), half of it random. */
  backoff?: { baseMs?: number; maxMs?: number };
  /** The longest `Retry-After` we wait out (default 60000 ms); a longer one fails at once. */
  maxRetryWaitMs?: number;
  /** Queue events and send them in batches: `true` for the defaults, or sizes and interval. */
  batch?: boolean | BatchOptions;
  /**
   * Called with events batching gave up on: refused by `ingest` (queue full, invalid, client closed),
   * rejected by the server, or unsent after every retry. Default: console.error.
   */
  onError?: (error: IngestlayerError, events: WireEvent[]) => void;
  /** A `fetch` of your own (a proxy agent, instrumentation). Default: the global fetch. */
  fetch?: typeof fetch;
}

interface Queued {
  doc: WireEvent;
  raw: string;
  bytes: number;
  generatedKey: boolean;
  resolve: (result: IngestResult) => void;
  reject: (error: IngestlayerError) => void;
  /** Settles (never rejects) once the event is sent or given up on: what flush() waits for. */
  settled: Promise<void>;
}

interface Sent {
  data: unknown;
  attempts: number;
}

function defaultOnError(error: IngestlayerError, events: WireEvent[]): void {
  const keys = events
    .slice(0, 5)
    .map((e) => e.idempotency_key)
    .join(", ");
  const more = events.length > 5 ? ` and ${events.length - 5} more` : "";
  console.error(`[ingestlayer] ${events.length} event(s) not sent (${error.message}): keys ${keys}${more}`);
}

function positive(name: string, value: number | undefined, fallback: number, min = 0): number {
  const v = value ?? fallback;
  if (typeof v !== "number" || !Number.isFinite(v) || v < min) {
    throw new RangeError(`${name} must be a number >= ${min}, got ${String(value)}`);
  }
  return v;
}

function env(name: string): string | undefined {
  const value = typeof process === "undefined" ? undefined : process.env[name];
  return value === undefined || value.trim() === "" ? undefined : value.trim();
}

/**
 * An ingestlayer client, typed by an event map `E` (event name → payload type).
 *
 * @example
 * interface MyEvents {
 *   "feature.used": { user_id: string; feature: string; count: number; plan: string };
 * }
 * const client = createClient<MyEvents>({ apiKey: "il_ingest_…" });
 * await client.ingest("feature.used", { user_id: "u_1", feature: "csv.export", count: 1, plan: "pro" });
 */
export class Client<E extends object = AnyEvents> {
  readonly baseUrl: string;
  readonly timeoutMs: number;
  readonly maxRetries: number;
  readonly batchSize: number;
  readonly batchIntervalMs: number;
  readonly batching: boolean;
  readonly #apiKey: string;
  readonly #backoffBaseMs: number;
  readonly #backoffMaxMs: number;
  readonly #maxRetryWaitMs: number;
  readonly #maxQueue: number;
  readonly #onError: (error: IngestlayerError, events: WireEvent[]) => void;
  readonly #fetch: typeof fetch;
  #queue: Queued[] = [];
  #batch: Queued[] = []; // the batch being sent
  #inflight = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #due = false;
  #flushRequested = false;
  #sending: Promise<void> | undefined;
  #closed = false;

  constructor(options: ClientOptions = {}) {
    const apiKey = options.apiKey ?? env("INGESTLAYER_API_KEY");
    if (apiKey === undefined || apiKey.trim() === "") {
      throw new IngestlayerError(
        "an API key is required: pass { apiKey: 'il_ingest_…' } or set INGESTLAYER_API_KEY",
      );
    }
    this.#apiKey = apiKey.trim();
    const base = options.baseUrl ?? env("INGESTLAYER_BASE_URL") ?? DEFAULT_BASE_URL;
    // Errors name the host at most, never the URL: it may hold a credential (a password, a
    // token in the query), and errors end up in logs.
    let url: URL;
    try {
      url = new URL(base);
    } catch {
      throw new TypeError(`baseUrl must be an http(s) URL with a host ${UNQUOTED}`);
    }
    if ((url.protocol !== "http:" && url.protocol !== "https:") || !url.hostname) {
      throw new TypeError(`baseUrl must be an http(s) URL with a host ${UNQUOTED}`);
    }
    if (url.username || url.password) {
      // Dropped, it would be a credential the caller thinks is sent and is not.
      throw new TypeError(
        `baseUrl must not carry a user name or password (host ${url.hostname}): the API key authenticates`,
      );
    }
    if (url.search || url.hash) {
      throw new TypeError(`baseUrl must not carry a query or fragment (host ${url.hostname})`);
    }
    this.baseUrl = `${url.origin}${url.pathname.replace(/\/+$/, "")}`;
    this.timeoutMs = positive("timeoutMs", options.timeoutMs, 10_000, 1);
    this.maxRetries = Math.floor(positive("maxRetries", options.maxRetries, 5));
    this.#backoffBaseMs = positive("backoff.baseMs", options.backoff?.baseMs, 500);
    this.#backoffMaxMs = positive("backoff.maxMs", options.backoff?.maxMs, 30_000);
    this.#maxRetryWaitMs = positive("maxRetryWaitMs", options.maxRetryWaitMs, 60_000);
    const batch: BatchOptions | undefined =
      options.batch === true ? {} : options.batch === false ? undefined : options.batch;
    this.batching = batch !== undefined;
    this.batchSize = Math.floor(positive("batch.size", batch?.size, 100, 1));
    if (this.batchSize > MAX_BATCH_ITEMS) {
      throw new RangeError(`batch.size must be at most ${MAX_BATCH_ITEMS}, got ${this.batchSize}`);
    }
    this.batchIntervalMs = positive("batch.intervalMs", batch?.intervalMs, 500);
    this.#maxQueue = Math.floor(positive("batch.maxQueue", batch?.maxQueue, 10_000, 1));
    this.#onError = options.onError ?? defaultOnError;
    const f = options.fetch ?? globalThis.fetch;
    if (typeof f !== "function") throw new TypeError("no global fetch: use Node.js 18+ or pass options.fetch");
    this.#fetch = f;
  }

  /** Events queued or being sent (batching only). */
  get pending(): number {
    return this.#queue.length + this.#inflight;
  }

  /**
   * Send one event. Resolves with the server's answer. With batching, the promise settles once the
   * event's batch is sent: awaiting it is optional, and a failure (including a full queue or an
   * invalid payload) never becomes an unhandled rejection: it also goes to `onError`.
   *
   * Rejects with {@link ValidationError} (`field` "payload") before sending for a payload that cannot
   * be sent exactly as given: not JSON (a BigInt, a cycle) or changed by JSON.stringify (NaN,
   * ±Infinity, an invalid Date, undefined in an array, a function, a Map, a Set, an Error), anywhere
   * in it. Otherwise with the typed error of the last attempt once retries are exhausted.
   */
  ingest<K extends EventName<E>>(type: K, payload: E[K], options: IngestOptions = {}): Promise<IngestResult> {
    let queued: Omit<Queued, "resolve" | "reject" | "settled"> | undefined;
    try {
      if (this.#closed) throw new IngestlayerError("this client is closed");
      queued = this.#prepare(type, payload, options);
      // The batch being sent counts too: maxQueue bounds every event not sent yet, as in Python.
      if (this.batching && this.#queue.length + this.#inflight >= this.#maxQueue) {
        throw new QueueFullError(`${this.#maxQueue} events are already waiting to be sent; is the server reachable?`);
      }
    } catch (err) {
      const rejected = Promise.reject(err);
      if (this.batching && err instanceof IngestlayerError) {
        // Batching callers may not await (as documented): a full queue during an outage, or one bad
        // payload, must reach onError rather than crash the process as an unhandled rejection.
        rejected.catch(() => undefined);
        this.#report(err, [queued?.doc ?? bestEffortDoc(type, payload, options)]);
      }
      return rejected;
    }
    if (!this.batching) {
      return this.#post("/v1/events", queued.raw).then((sent) => this.#result(sent.data, queued, sent.attempts));
    }
    let settle!: Pick<Queued, "resolve" | "reject">;
    const promise = new Promise<IngestResult>((resolve, reject) => {
      settle = { resolve, reject };
    });
    promise.catch(() => undefined); // handled here: fire-and-forget must not crash the process
    const noop = (): void => undefined;
    this.#queue.push({ ...queued, ...settle, settled: promise.then(noop, noop) });
    if (this.#queue.length >= this.batchSize) {
      void this.#kick();
    } else if (this.#timer === undefined) {
      this.#startTimer();
    }
    return promise;
  }

  /**
   * Create or update the `user` entity `userId` with `traits` (`POST /v1/identify`). Sent at once
   * (never batched) and retried like events: an upsert is idempotent. Traits are checked like an
   * event's payload ({@link Client.ingest}): a ValidationError with `field` "traits" before sending.
   */
  async identify(userId: string, traits: JsonObject = {}): Promise<JsonObject> {
    const body = this.#entityBody({ user_id: userId }, traits);
    return asObject((await this.#post("/v1/identify", body)).data);
  }

  /** Attach user `userId` to account `accountId` and set the account's `traits` (`POST /v1/group`). */
  async group(userId: string, accountId: string, traits: JsonObject = {}): Promise<JsonObject> {
    const body = this.#entityBody({ user_id: userId, account_id: accountId }, traits);
    return asObject((await this.#post("/v1/group", body)).data);
  }

  /** Send every queued event now; resolves when they are sent (or handed to `onError`). */
  async flush(): Promise<void> {
    // The events queued before this call and those being sent, not the ones queued meanwhile:
    // waiting for an empty queue never ended while events kept coming.
    const waiting = [...this.#batch, ...this.#queue].map((event) => event.settled);
    if (waiting.length === 0) return;
    this.#flushRequested = true;
    void this.#kick();
    await Promise.all(waiting);
  }

  /** Flush, then refuse further events. Idempotent. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.flush();
    this.#clearTimer();
  }

  // -- internals --

  #prepare(type: string, payload: unknown, options: IngestOptions): Omit<Queued, "resolve" | "reject" | "settled"> {
    if (typeof type !== "string" || type === "") {
      throw new ValidationError("type must be a non-empty string: a dotted event name such as 'feature.used'", {
        field: "type",
      });
    }
    if (typeof payload !== "object" || payload === null || Array.isArray(payload)) {
      throw new ValidationError("payload must be a plain object (a JSON object)", { field: "payload" });
    }
    const given = options.idempotencyKey;
    if (given !== undefined && (typeof given !== "string" || given.length === 0 || given.length > 255)) {
      throw new ValidationError("idempotencyKey must be a string of 1 to 255 characters", {
        field: "idempotency_key",
      });
    }
    const doc: WireEvent = { type, payload: payload as JsonObject, idempotency_key: given ?? randomUUID() };
    const occurred = options.occurredAt;
    if (occurred !== undefined) {
      const date = occurred instanceof Date ? occurred : typeof occurred === "number" ? new Date(occurred) : undefined;
      if (date !== undefined && Number.isNaN(date.getTime())) {
        throw new ValidationError("occurredAt is not a valid date", { field: "occurred_at" });
      }
      if (date === undefined && typeof occurred !== "string") {
        throw new ValidationError("occurredAt must be a Date, an ISO 8601 string or epoch milliseconds", {
          field: "occurred_at",
        });
      }
      doc.occurred_at = date === undefined ? (occurred as string) : date.toISOString();
    }
    const raw = serialize(doc, payload, "payload", "payload is");
    return { doc, raw, bytes: utf8Length(raw), generatedKey: given === undefined };
  }

  #entityBody(ids: Record<string, string>, traits: JsonObject): string {
    for (const [name, value] of Object.entries(ids)) {
      if (typeof value !== "string" || value === "") {
        throw new ValidationError(`${name} must be a non-empty string`, { field: name });
      }
    }
    if (typeof traits !== "object" || traits === null || Array.isArray(traits)) {
      throw new ValidationError("traits must be a plain object", { field: "traits" });
    }
    return serialize({ ...ids, traits }, traits, "traits", "traits are");
  }

  #result(data: unknown, event: Omit<Queued, "resolve" | "reject" | "settled">, attempts: number): IngestResult {
    const answer = data as { id?: unknown; duplicate?: unknown } | null;
    if (typeof answer !== "object" || answer === null || typeof answer.id !== "string") {
      throw new APIError("the server's answer has no event id", { code: "invalid_response", attempts });
    }
    let duplicate = answer.duplicate === true;
    // A generated key is unique to this call: an "earlier" event is our own attempt whose answer was lost.
    if (duplicate && event.generatedKey && attempts > 1) duplicate = false;
    return { id: answer.id, duplicate, idempotencyKey: event.doc.idempotency_key };
  }

  #retryDelayMs(error: IngestlayerError, attempts: number): number | undefined {
    if (attempts > this.maxRetries) return undefined;
    const retryable =
      error instanceof ConnectionError ||
      error instanceof RateLimitError ||
      (error instanceof ServerError && error.status !== 501 && error.status !== 505);
    if (!retryable) return undefined;
    if (error.retryAfter !== undefined) {
      const ms = error.retryAfter * 1000;
      return ms <= this.#maxRetryWaitMs ? ms : undefined;
    }
    return backoffDelay(attempts, this.#backoffBaseMs, this.#backoffMaxMs);
  }

  async #post(path: string, body: string): Promise<Sent> {
    const headers = {
      authorization: `Bearer ${this.#apiKey}`,
      "content-type": "application/json",
      accept: "application/json",
      "user-agent": USER_AGENT,
    };
    for (let attempts = 1; ; attempts++) {
      let error: IngestlayerError;
      try {
        const res = await this.#fetch(this.baseUrl + path, {
          method: "POST",
          headers,
          body,
          signal: AbortSignal.timeout(this.timeoutMs),
        });
        const text = await res.text();
        if (res.ok) return { data: decode(res.status, text, attempts), attempts };
        error = errorFor(res.status, res.headers, text, attempts);
      } catch (err) {
        if (err instanceof IngestlayerError) throw err;
        error = new ConnectionError(`could not reach ${this.baseUrl}: ${describeNetworkError(err, this.timeoutMs)}`, {
          attempts,
          cause: err,
        });
      }
      const delay = this.#retryDelayMs(error, attempts);
      if (delay === undefined) throw error;
      await sleep(delay);
    }
  }

  #startTimer(): void {
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#due = true;
      void this.#kick();
    }, this.batchIntervalMs);
    // Deliberately not unref'd: while events are queued the process stays alive (at most
    // intervalMs) and sends them, so a script that simply ends loses nothing.
  }

  #clearTimer(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #kick(): Promise<void> {
    this.#sending ??= this.#drain()
      .catch((err: unknown) => console.error("[ingestlayer] unexpected error while sending a batch", err))
      .finally(() => {
        this.#sending = undefined;
        if (this.#queue.length > 0 && this.#timer === undefined && !this.#closed) this.#startTimer();
      });
    return this.#sending;
  }

  async #drain(): Promise<void> {
    while (
      this.#queue.length >= this.batchSize ||
      (this.#queue.length > 0 && (this.#due || this.#flushRequested || this.#closed))
    ) {
      const batch = this.#queue.splice(0, this.batchSize);
      this.#batch = batch;
      // A full batch leaving restarts the clock for whatever is left.
      this.#clearTimer();
      this.#due = false;
      this.#inflight += batch.length;
      try {
        for (const [start, end] of chunkRanges(
          batch.map((e) => e.bytes),
          this.batchSize,
        )) {
          await this.#deliver(batch.slice(start, end));
        }
      } finally {
        this.#inflight -= batch.length;
        this.#batch = [];
      }
    }
    if (this.#queue.length === 0) this.#flushRequested = false;
  }

  async #deliver(events: Queued[]): Promise<void> {
    const pending = [...events];
    while (pending.length > 0) {
      let sent: Sent;
      try {
        sent = await this.#post("/v1/events", `{"batch":[${pending.map((e) => e.raw).join(",")}]}`);
      } catch (err) {
        const error =
          err instanceof IngestlayerError ? err : new IngestlayerError(String(err), { cause: err });
        const index = error instanceof ValidationError ? batchIndex(error.field) : undefined;
        if (index !== undefined && index < pending.length) {
          // One bad event rejects the whole request: report it, send the others again.
          const [bad] = pending.splice(index, 1);
          if (bad !== undefined) this.#fail(error, [bad]);
          continue;
        }
        if (error instanceof ValidationError && pending.length > 1) {
          // Refused as a whole without naming an event: a number beyond 64 bits somewhere (422), a
          // proxy's or server's smaller body limit (413, nginx's default is 1 MiB), fewer events per
          // request (413 on "batch"). Halving isolates the culprit instead of losing every event.
          const middle = Math.floor(pending.length / 2);
          await this.#deliver(pending.slice(0, middle));
          await this.#deliver(pending.slice(middle));
          return;
        }
        this.#fail(error, pending);
        return;
      }
      const items = (sent.data as { items?: unknown } | null)?.items;
      pending.forEach((event, i) => {
        try {
          event.resolve(this.#result(Array.isArray(items) ? items[i] : undefined, event, sent.attempts));
        } catch (err) {
          this.#fail(err as IngestlayerError, [event]);
        }
      });
      return;
    }
  }

  #fail(error: IngestlayerError, events: Queued[]): void {
    for (const event of events) event.reject(error);
    this.#report(
      error,
      events.map((e) => e.doc),
    );
  }

  #report(error: IngestlayerError, docs: WireEvent[]): void {
    try {
      this.#onError(error, docs);
    } catch (err) {
      console.error("[ingestlayer] the onError callback threw", err);
    }
  }
}

/**
 * `JSON.stringify(body)`, refusing (ValidationError naming `field`) what it cannot encode (BigInt,
 * cycles, too deep) and what it would silently change in `value` (NaN, ±Infinity, undefined in an
 * array, functions, Maps, …: see {@link unsendable}): the server stores a payload exactly as sent.
 */
function serialize(body: object, value: unknown, field: string, subject: string): string {
  let raw: string;
  let problem: string | undefined;
  try {
    raw = JSON.stringify(body);
    problem = unsendable(value, field);
  } catch (err) {
    throw new ValidationError(`${subject} not JSON-serializable: ${(err as Error).message}`, { field });
  }
  if (problem !== undefined) throw new ValidationError(`${subject} not JSON-serializable: ${problem}`, { field });
  return raw;
}

const utf8 = new TextEncoder();

/** Encoded size of a request body (Buffer.byteLength is Node-only). */
function utf8Length(text: string): number {
  return utf8.encode(text).length;
}

/** What onError is told about an event refused before it could be prepared (a bad payload, …). */
function bestEffortDoc(type: unknown, payload: unknown, options: IngestOptions | undefined): WireEvent {
  return {
    type: String(type),
    payload: (typeof payload === "object" && payload !== null ? payload : { value: payload }) as JsonObject,
    idempotency_key: typeof options?.idempotencyKey === "string" ? options.idempotencyKey : "",
  };
}

function asObject(data: unknown): JsonObject {
  return typeof data === "object" && data !== null && !Array.isArray(data) ? (data as JsonObject) : { result: data };
}

function decode(status: number, text: string, attempts: number): unknown {
  if (text.trim() === "") return {};
  try {
    return JSON.parse(text);
  } catch {
    throw new APIError(`the server answered ${status} with a body that is not JSON`, {
      status,
      code: "invalid_response",
      attempts,
    });
  }
}

function errorFor(status: number, headers: Headers, text: string, attempts: number): APIError {
  const details = errorDetails(text);
  const message = details.message ?? `unexpected answer from the server: HTTP ${status} ${text.slice(0, 200).trim()}`;
  const init = {
    status,
    code: details.code,
    field: details.field,
    retryAfter: parseRetryAfter(headers.get("retry-after")),
    attempts,
  };
  if (status === 401 || status === 403) return new AuthenticationError(message, init);
  if (status === 400 || status === 413 || status === 422) return new ValidationError(message, init);
  if (status === 429) return new RateLimitError(message, init);
  if (status >= 500) return new ServerError(message, init);
  return new APIError(message, init);
}
