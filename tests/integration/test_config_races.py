"""Configuration changes racing each other: two applies at once leave one document whole."""

from __future__ import annotations

import asyncio

from tests.support.server import RunningServer

HOOK = "http://127.0.0.1:9/hook"


async def test_two_applies_at_once_leave_one_document_whole(server: RunningServer) -> None:
    def doc(tag: str) -> dict[str, object]:
        return {
            "destinations": [{"name": "out", "webhook.out": {"url": f"{HOOK}/{tag}"}}],
            "pipelines": [{"name": "p", "source": {"match": [f"{tag}.*"]}, "destinations": [{"ref": "out"}]}],
        }

    for _ in range(5):
        # Each document changes what the other one left as it was.
        await server.apply({**doc("a"), "pipelines": doc("b")["pipelines"]})
        results = await asyncio.gather(
            *(server.request("POST", "/v1/apply", json={"document": doc(t)}) for t in ("a", "b"))
        )
        # Both applied (the later one planned again), not a mix of the two.
        assert [status for status, _ in results] == [200, 200], results
        _, dest = await server.request("GET", "/v1/destinations/out")
        _, pipe = await server.request("GET", "/v1/pipelines/p")
        tag = dest["config"]["url"].rsplit("/", 1)[1]
        assert pipe["source"]["match"] == [f"{tag}.*"], (dest, pipe, results)
