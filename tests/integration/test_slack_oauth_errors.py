"""What Slack's ``error`` field may put on the (keyless) OAuth callback page and in the log."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from ingestlayer.destinations.slack.oauth import SlackApp, SlackOAuthError, exchange_code

CLIENT_SECRET = "SECRETclient123"


@pytest.fixture
async def echoing_api() -> AsyncIterator[tuple[str, list[object]]]:
    """A server in Slack's place whose ``error`` is whatever it is told to answer next."""
    errors: list[object] = []

    async def access(request: web.Request) -> web.Response:
        error = errors.pop(0)
        if error == "echo":
            error = (
                f"bad_client_secret {request.method} {request.path} Authorization: "
                + request.headers["Authorization"]
            )
        return web.json_response({"ok": False, "error": error})

    app = web.Application()
    app.router.add_post("/api/oauth.v2.access", access)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/api", errors
    await runner.cleanup()


def _app(api_url: str) -> SlackApp:
    return SlackApp(
        client_id="cid123",
        client_secret=CLIENT_SECRET,
        redirect_uri="http://127.0.0.1:1/oauth/slack/callback",
        base_url="http://127.0.0.1:1",
        api_url=api_url,
        scopes="chat:write",
    )


async def test_an_error_code_is_named_and_anything_else_is_not_shown(
    echoing_api: tuple[str, list[object]],
) -> None:
    api_url, errors = echoing_api
    errors.extend(["invalid_code", "echo", {"nested": CLIENT_SECRET}])
    with pytest.raises(SlackOAuthError) as known:
        await exchange_code(_app(api_url), "abc", "http://127.0.0.1:1/oauth/slack/callback")
    assert "invalid_code" in known.value.message
    for _ in range(2):
        with pytest.raises(SlackOAuthError) as echoed:
            await exchange_code(_app(api_url), "abc", "http://127.0.0.1:1/oauth/slack/callback")
        assert echoed.value.message == "Slack refused the authorization: unrecognised error"
        assert "Basic" not in echoed.value.message and CLIENT_SECRET not in echoed.value.message
