"""A light webhook receiver for the delivery benchmarks, in its own process.

``POST /hooks`` answers 200 at once and records the arrival time; when the body is an ingestlayer
event whose payload carries ``sent_at`` (set by the load generator just before it sent the
event), it also records ``arrival - sent_at``: the ingest→delivery latency, on one machine's
clock. Every ``--verify-every``-th signed request is checked with ``ingestlayer.sdk.webhooks``
(so the benchmark proves the deliveries are correctly signed without paying HMAC on each one).

``GET /stats`` returns the counts and the raw arrival / latency lists; ``POST /reset`` clears them.

    python bench/receiver.py --port 8200 --secret whsec_...
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any

import orjson
from aiohttp import web

from ingestlayer.sdk.webhooks import WebhookVerificationError, verify


class State:
    def __init__(self, secret: str, verify_every: int) -> None:
        self.secret = secret
        self.verify_every = verify_every
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.signed = 0
        self.verified = 0
        self.bad_signatures = 0
        self.delivery_ids: set[str] = set()
        self.peers: set[object] = set()  # client (host, port) pairs: TCP connections used
        self.arrivals: list[float] = []
        self.latencies: list[tuple[float, float]] = []  # (sent_at, seconds to arrive)


def make_app(state: State) -> web.Application:
    async def hooks(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        state.count += 1
        state.arrivals.append(now)
        if request.transport is not None:
            state.peers.add(request.transport.get_extra_info("peername"))
        did = request.headers.get("X-Ingestlayer-Delivery")
        if did is not None:
            state.delivery_ids.add(did)
        if "X-Ingestlayer-Signature" in request.headers:
            state.signed += 1
            if state.signed % state.verify_every == 1:
                try:
                    verify(state.secret, request.headers, body)
                    state.verified += 1
                except WebhookVerificationError:
                    state.bad_signatures += 1
        if b'"sent_at"' in body:
            sent = orjson.loads(body).get("payload", {}).get("sent_at")
            if isinstance(sent, float | int):
                state.latencies.append((float(sent), now - float(sent)))
        return web.Response(body=b'{"ok":true}', content_type="application/json")

    async def stats(_request: web.Request) -> web.Response:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        doc: dict[str, Any] = {
            "count": state.count,
            "unique_deliveries": len(state.delivery_ids),
            "connections": len(state.peers),
            "signed": state.signed,
            "verified": state.verified,
            "bad_signatures": state.bad_signatures,
            "arrivals": state.arrivals,
            "latencies": state.latencies,
            "cpu_seconds": ru.ru_utime + ru.ru_stime,
        }
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    async def count(_request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"count": state.count}), content_type="application/json")

    async def reset(_request: web.Request) -> web.Response:
        state.reset()
        return web.Response(body=b"{}", content_type="application/json")

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/hooks", hooks)
    app.router.add_get("/stats", stats)
    app.router.add_get("/count", count)
    app.router.add_post("/reset", reset)
    app.router.add_get("/healthz", count)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--verify-every", type=int, default=100)
    args = p.parse_args()
    import uvloop

    web.run_app(
        make_app(State(args.secret, args.verify_every)),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
        backlog=1024,
    )


if __name__ == "__main__":
    main()
