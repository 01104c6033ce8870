/**
 * Type-level tests, compiled by `npm run build` (tsconfig.typetest.json, no output). Each
 * `// @ts-expect-error` line MUST be a compile error: if the typing regresses and one compiles, tsc
 * reports "Unused '@ts-expect-error' directive" and the build fails. Nothing here ever runs.
 */

import {
  createClient,
  group,
  identify,
  ingest,
  init,
  verifyWebhook,
  type Client,
  type IngestResult,
} from "../src/index.js";

/** A user's event map, as the recipes describe the events. */
interface MyEvents {
  "feature.used": { user_id: string; feature: string; count: number; plan: string };
  "user.signed_up": {
    user_id: string;
    email: string;
    plan: "free" | "pro" | "scale";
    source: string;
    created_at?: string;
  };
}

// Registering the map types the module-level functions: the recipes' exact `import { ingest }` call.
declare module "../src/index.js" {
  interface Register {
    events: MyEvents;
  }
}

declare const ctx: { user: { id: string; plan: string } };
declare const user: { id: string; email: string; plan: "free" | "pro" | "scale" };

export async function createClientIsTyped(): Promise<void> {
  const client: Client<MyEvents> = createClient<MyEvents>({ apiKey: "il_ingest_x" });
  const result: IngestResult = await client.ingest("feature.used", {
    user_id: "u_1",
    feature: "csv.export",
    count: 1,
    plan: "pro",
  });
  result.id.toUpperCase();
  // @ts-expect-error count is a number, not a string
  await client.ingest("feature.used", { user_id: "u_1", feature: "csv.export", count: "1", plan: "pro" });
  // @ts-expect-error plan is required
  await client.ingest("feature.used", { user_id: "u_1", feature: "csv.export", count: 1 });
  // @ts-expect-error no such field in the declared payload
  await client.ingest("feature.used", { user_id: "u_1", feature: "csv.export", count: 1, plan: "pro", extra: true });
  // @ts-expect-error no such event type
  await client.ingest("feature.usd", { user_id: "u_1", feature: "csv.export", count: 1, plan: "pro" });
  // @ts-expect-error plan is one of "free" | "pro" | "scale"
  await client.ingest("user.signed_up", { user_id: "u", email: "a@b.c", plan: "gold", source: "site" });
  // @ts-expect-error idempotencyKey is a string
  await client.ingest("user.signed_up", { user_id: "u", email: "a@b.c", plan: "pro", source: "s" }, { idempotencyKey: 42 });
  // @ts-expect-error result has no such property
  result.duplicated;
}

export async function initIsTyped(): Promise<void> {
  const client = init<MyEvents>({ apiKey: "il_ingest_x", baseUrl: "http://127.0.0.1:8000" });
  await client.ingest("user.signed_up", { user_id: "u", email: "a@b.c", plan: "pro", source: "site" });
  // @ts-expect-error email is a string
  await client.ingest("user.signed_up", { user_id: "u", email: 1, plan: "pro", source: "site" });
}

export async function recipesAreTyped(): Promise<void> {
  // Word for word the recipes' calls, type-checked against the registered map.
  await ingest("feature.used", {
    user_id: ctx.user.id,
    feature: "csv.export",
    count: 1,
    plan: ctx.user.plan,
  });
  await ingest(
    "user.signed_up",
    {
      user_id: user.id,
      email: user.email,
      plan: user.plan,
      source: "marketing-site",
    },
    {
      idempotencyKey: user.id, // one signup per user, ever
    },
  );
  // @ts-expect-error the registered map has no such event
  await ingest("support.ticket.created", { ticket_id: "t_1" });
  // @ts-expect-error count is a number
  await ingest("feature.used", { user_id: "u", feature: "api", count: "3", plan: "pro" });
  // createClient() without a type argument picks the registered map up too.
  const plain = createClient({ apiKey: "il_ingest_x" });
  // @ts-expect-error count is a number
  await plain.ingest("feature.used", { user_id: "u", feature: "api", count: "3", plan: "pro" });
}

export async function otherCallsAreTyped(): Promise<void> {
  await identify("u_1", { email: "ada@acme.com" });
  await group("u_1", "acct_1", { name: "Acme" });
  // @ts-expect-error traits are an object
  await identify("u_1", "ada@acme.com");
  // @ts-expect-error group needs an account id
  await group("u_1");
  const event = verifyWebhook<{ type: string }>("whsec_x", { "x-ingestlayer-signature": "t=1,v1=00" }, "{}");
  event.type.toUpperCase();
  // @ts-expect-error the raw body is bytes or a string, never parsed JSON
  verifyWebhook("whsec_x", {}, { type: "x" });
}
