/**
 * `@ingestlayer/sdk`: send events to ingestlayer, and verify the webhooks it delivers.
 *
 * @example
 * import { init, ingest } from "@ingestlayer/sdk";
 *
 * init({ apiKey: process.env.INGESTLAYER_API_KEY, baseUrl: "https://events.acme.com" });
 * await ingest("feature.used", { user_id: "u_1", feature: "csv.export", count: 1, plan: "pro" });
 *
 * Without `init`, the module-level functions use `INGESTLAYER_API_KEY` and `INGESTLAYER_BASE_URL`.
 */

import { Client, type AnyEvents, type ClientOptions, type EventName, type IngestOptions, type IngestResult, type JsonObject } from "./client.js";
import { IngestlayerError } from "./errors.js";

export {
  Client,
  DEFAULT_BASE_URL,
  VERSION,
  type AnyEvents,
  type BatchOptions,
  type ClientOptions,
  type EventName,
  type IngestOptions,
  type IngestResult,
  type JsonObject,
  type WireEvent,
} from "./client.js";
export {
  APIError,
  AuthenticationError,
  ConnectionError,
  IngestlayerError,
  QueueFullError,
  RateLimitError,
  ServerError,
  ValidationError,
  WebhookVerificationError,
  type ErrorDetails,
} from "./errors.js";
export {
  DEFAULT_TOLERANCE,
  SIGNATURE_HEADER,
  verifyWebhook,
  verifyWebhookAsync,
  type VerifyOptions,
  type WebhookHeaders,
} from "./webhooks.js";

/**
 * Declare your events once, by augmenting this interface, to type the module-level `ingest`:
 *
 * @example
 * declare module "@ingestlayer/sdk" {
 *   interface Register {
 *     events: {
 *       "feature.used": { user_id: string; feature: string; count: number; plan: string };
 *     };
 *   }
 * }
 */
export interface Register {}

/** The event map declared through {@link Register}, or {@link AnyEvents} when none is. */
export type RegisteredEvents = Register extends { events: infer E extends object } ? E : AnyEvents;

/**
 * Create a client; `E` maps each event name to its payload type, so a wrong field is a compile error.
 *
 * @example
 * interface MyEvents {
 *   "feature.used": { user_id: string; feature: string; count: number; plan: string };
 * }
 * const events = createClient<MyEvents>({ apiKey: "il_ingest_…", batch: { size: 200, intervalMs: 1000 } });
 * await events.ingest("feature.used", { user_id: "u_1", feature: "api", count: 3, plan: "free" });
 */
export function createClient<E extends object = RegisteredEvents>(options: ClientOptions = {}): Client<E> {
  return new Client<E>(options);
}

let defaultClient: Client<object> | undefined;

/**
 * Configure the module-level client used by {@link ingest}, {@link identify}, {@link group},
 * {@link flush} and {@link close}, and return it (typed by `E`). Calling it again replaces the
 * default client; the previous one is flushed and closed in the background.
 */
export function init<E extends object = RegisteredEvents>(options: ClientOptions = {}): Client<E> {
  const client = new Client<E>(options);
  const previous = defaultClient;
  defaultClient = client as Client<object>;
  if (previous !== undefined) void previous.close();
  return client;
}

function current(): Client<AnyEvents> {
  if (defaultClient === undefined) {
    try {
      defaultClient = new Client<AnyEvents>() as Client<object>;
    } catch (err) {
      throw err instanceof IngestlayerError
        ? new IngestlayerError("call init({ apiKey }) first, or set INGESTLAYER_API_KEY")
        : err;
    }
  }
  return defaultClient as Client<AnyEvents>;
}

/**
 * Send one event with the default client (see {@link init}); exactly the recipes' call:
 *
 * @example
 * await ingest("user.signed_up", { user_id: user.id, email: user.email, plan: user.plan, source: "marketing-site" }, {
 *   idempotencyKey: user.id, // one signup per user, ever
 * });
 */
export function ingest<K extends EventName<RegisteredEvents>>(
  type: K,
  payload: RegisteredEvents[K],
  options?: IngestOptions,
): Promise<IngestResult> {
  try {
    return current().ingest(type, payload as JsonObject, options);
  } catch (err) {
    return Promise.reject(err);
  }
}

/** `identify` with the default client: create or update the `user` entity. */
export async function identify(userId: string, traits: JsonObject = {}): Promise<JsonObject> {
  return current().identify(userId, traits);
}

/** `group` with the default client: attach a user to an account, with the account's traits. */
export async function group(userId: string, accountId: string, traits: JsonObject = {}): Promise<JsonObject> {
  return current().group(userId, accountId, traits);
}

/** Send the default client's queued events now. */
export async function flush(): Promise<void> {
  await defaultClient?.flush();
}

/** Flush and close the default client; the next module-level call creates a new one. */
export async function close(): Promise<void> {
  const client = defaultClient;
  defaultClient = undefined;
  await client?.close();
}
