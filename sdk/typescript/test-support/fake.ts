/**
 * A fake ingestlayer on node:http for failure injection: it records every request and answers from
 * a plan (one reply per request, then `fallback`), with optional delays and headers.
 * Kept outside test/ so `node --test dist/test/` does not run it as a test file.
 */

import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import { createServer as createNetServer } from "node:net";

export interface Reply {
  status?: number;
  body?: unknown;
  headers?: Record<string, string>;
  delayMs?: number;
}

export interface Recorded {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
  at: number;
  json: () => any;
}

export const ACCEPTED: Reply = { status: 202, body: { id: "evt_fake", duplicate: false } };

/** Answers a batch request with one `{id, duplicate:false}` per item, like the real server. */
export function batchAccepted(req: Recorded): Reply {
  const doc = req.json() as { batch?: unknown[] };
  if (Array.isArray(doc.batch)) {
    const items = doc.batch.map((_, i) => ({ id: `evt_${req.at}_${i}`, duplicate: false }));
    return { status: 202, body: { items, accepted: items.length, duplicates: 0 } };
  }
  return ACCEPTED;
}

export class FakeServer {
  readonly requests: Recorded[] = [];
  plan: Reply[] = [];
  fallback: Reply | ((req: Recorded) => Reply) = batchAccepted;
  url = "";
  #server: Server;

  private constructor() {
    this.#server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const body = Buffer.concat(chunks).toString("utf8");
        const rec: Recorded = {
          method: req.method ?? "",
          path: req.url ?? "",
          headers: req.headers,
          body,
          at: Date.now(),
          json: () => JSON.parse(body),
        };
        this.requests.push(rec);
        const planned = this.plan.shift();
        const reply = planned ?? (typeof this.fallback === "function" ? this.fallback(rec) : this.fallback);
        const send = (): void => {
          if (res.destroyed) return;
          const payload = typeof reply.body === "string" ? reply.body : JSON.stringify(reply.body ?? {});
          res.writeHead(reply.status ?? 200, { "content-type": "application/json", ...reply.headers });
          res.end(payload);
        };
        if (reply.delayMs) setTimeout(send, reply.delayMs);
        else send();
      });
    });
  }

  static async start(port = 0): Promise<FakeServer> {
    const fake = new FakeServer();
    await new Promise<void>((resolve) => fake.#server.listen(port, "127.0.0.1", resolve));
    const address = fake.#server.address();
    if (address === null || typeof address === "string") throw new Error("no address");
    fake.url = `http://127.0.0.1:${address.port}`;
    return fake;
  }

  failTimes(n: number, status = 500): void {
    this.plan = Array.from({ length: n }, () => ({ status, body: { error: { code: "boom", message: "injected" } } }));
  }

  bodies(): any[] {
    return this.requests.map((r) => r.json());
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}

/** A port nothing listens on (bound, then released). */
export async function freePort(): Promise<number> {
  const server = createNetServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === "string") throw new Error("no address");
  return address.port;
}

/** Milliseconds for retries in tests instead of the production half second. */
export const FAST = { backoff: { baseMs: 5, maxMs: 20 } } as const;

/** The real server given by the pytest wrapper, or why there is none. */
export function realServer(): { url: string; apiKey: string } | string {
  const url = process.env.INGESTLAYER_URL;
  const apiKey = process.env.INGESTLAYER_INGEST_KEY;
  if (!url || !apiKey) {
    return "no real server: set INGESTLAYER_URL and INGESTLAYER_INGEST_KEY (tests/e2e/test_sdk_typescript.py does)";
  }
  return { url, apiKey };
}
