"""Configuration changes racing each other: two applies at once leave one document whole."""

from __future__ import annotations

import asyncio

from ingestlayer.api.manage import run_apply
from ingestlayer.records import ProjectConfig
from ingestlayer.store.store import Store
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


async def test_a_destination_deleted_while_a_pipeline_takes_it_up_is_never_left_dangling(
    server: RunningServer,
) -> None:
    """DELETE checks that no pipeline uses the destination, then deletes it; a pipeline created
    between the two (by another API process: within one, changes take turns) used to be left
    pointing at a destination that no longer exists."""
    await server.apply({"destinations": [{"name": "out", "webhook.out": {"url": HOOK}}]})
    store = server.runtime.store
    read = store.load_project_config
    created: list[str] = []
    other_process = Store.from_url(server.runtime.settings.database_url)

    async def read_then_race(project_id: str) -> ProjectConfig:
        cfg = await read(project_id)
        if not created:  # the DELETE's read: a pipeline takes the destination up right after it
            pipeline = {"name": "p", "source": {"match": ["a.*"]}, "destinations": [{"ref": "out"}]}
            applied = await run_apply(
                other_process, project_id, {"pipelines": [pipeline]}, dry_run=False, prune=False
            )
            created.extend(c["action"] for c in applied["changes"])
        return cfg

    store.load_project_config = read_then_race  # type: ignore[method-assign]
    try:
        status, body = await server.request("DELETE", "/v1/destinations/out")
    finally:
        store.load_project_config = read  # type: ignore[method-assign]
        await other_process.close()
    assert created == ["create"]
    # Read again after the pipeline came: in use, so kept.
    assert status == 409 and "used by pipelines: p" in body["error"]["message"], body
    _, pipe = await server.request("GET", "/v1/pipelines/p")
    _, dest = await server.request("GET", "/v1/destinations/out")
    assert dest["name"] == "out" and pipe["name"] == "p"
