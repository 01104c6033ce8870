"""The TypeScript SDK (sdk/typescript) end to end: its node test suite against a real server.

Once per module: ``npm ci`` (when node_modules is missing or older than package-lock.json) and
``npm run build`` (tsc, including the type-level tests in test-d/, whose ``@ts-expect-error`` lines
must fail to compile). Then, per database backend: a real ingestlayer server in this event loop,
webhook requests signed by ingestlayer.delivery.signing (and one captured from a real delivery) in a
JSON file, and ``node --test dist/test/`` with INGESTLAYER_URL, INGESTLAYER_INGEST_KEY and
INGESTLAYER_WEBHOOK_CASES. Afterwards the server is asked what it stored.

Without Node.js/npm the test skips, saying why, except with CI=true, where it fails.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ingestlayer.delivery.signing import (
    SIGNATURE_HEADER,
    generate_secret,
    ingestlayer_signature,
    standard_webhooks_headers,
)
from ingestlayer.sdk.webhooks import WebhookVerificationError, verify
from tests.support.receiver import Receiver
from tests.support.server import RunningServer, wait_for

SDK_DIR = Path(__file__).resolve().parents[2] / "sdk" / "typescript"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
MIN_NODE = 18


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true requires Node.js >= {MIN_NODE} and npm for the TypeScript SDK: {reason}")
    pytest.skip(f"TypeScript SDK tests need Node.js >= {MIN_NODE} and npm: {reason}")


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=SDK_DIR, capture_output=True, text=True, timeout=timeout, check=False, env=_npm_env()
    )


def _npm_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"NO_COLOR": "1", "npm_config_audit": "false", "npm_config_fund": "false"})
    return env


def _needs_install() -> bool:
    marker = SDK_DIR / "node_modules" / ".package-lock.json"
    tsc = SDK_DIR / "node_modules" / "typescript" / "bin" / "tsc"
    lock = SDK_DIR / "package-lock.json"
    return not marker.exists() or not tsc.exists() or marker.stat().st_mtime < lock.stat().st_mtime


@functools.cache
def build_typescript_sdk() -> str:
    """Install dev dependencies if needed and build the SDK, once per test run; return `node`'s path.

    (A skip or failure is an exception, which functools.cache does not remember.)

    Skips (fails with CI=true) without Node.js and npm; a build error always fails.
    """
    node_bin, npm_bin = shutil.which("node"), shutil.which("npm")
    if node_bin is None or npm_bin is None:
        _unavailable("`node` or `npm` is not on PATH")
    assert node_bin is not None and npm_bin is not None
    version = subprocess.run([node_bin, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.match(r"v(\d+)\.", version.strip())
    if match is None or int(match.group(1)) < MIN_NODE:
        _unavailable(f"found node {version.strip() or '(unknown version)'}")
    if _needs_install():
        installed = _run([npm_bin, "ci"], timeout=300)
        if installed.returncode != 0:
            # Usually no registry access; in CI that is a failure like any other missing tool.
            _unavailable(f"`npm ci` failed:\n{installed.stdout[-3000:]}\n{installed.stderr[-3000:]}")
    built = _run([npm_bin, "run", "build"], timeout=300)
    # A build failure is never a skip: it is a compile error, or a type-level test that regressed.
    assert built.returncode == 0, f"npm run build failed:\n{built.stdout[-5000:]}\n{built.stderr[-5000:]}"
    return node_bin


@pytest.fixture(scope="module")
def node() -> str:
    """The `node` binary, with the SDK installed and built."""
    return build_typescript_sdk()


# --- webhook requests signed by the Python side ------------------------------------------------------


def _case(
    name: str,
    secret: str | list[str],
    headers: dict[str, str],
    body: bytes,
    *,
    error: str | None = None,
) -> dict[str, Any]:
    """One verification case; Python's verify() must agree with it before node sees it."""
    if error is None:
        expected = verify(secret, headers, body)
        return {
            "name": name,
            "secret": secret,
            "headers": headers,
            "body": body.decode(),
            "valid": True,
            "expected": expected,
        }
    with pytest.raises(WebhookVerificationError, match=re.escape(error)):
        verify(secret, headers, body)
    return {
        "name": name,
        "secret": secret,
        "headers": headers,
        "body": body.decode(),
        "valid": False,
        "error": error,
    }


def signed_cases(delivered: tuple[dict[str, str], bytes, str]) -> list[dict[str, Any]]:
    secret, old, other = generate_secret(), generate_secret(), generate_secret()
    now = int(time.time())
    body = json.dumps(
        {
            "id": "evt_01JTS",
            "type": "user.signed_up",
            "occurred_at": "2026-03-01T12:30:00.000Z",
            "payload": {"email": "zoë@acme.com", "plan": "pro", "note": "naïve ✓"},
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()
    ours = {SIGNATURE_HEADER: ingestlayer_signature([secret], now, body)}
    rotated = {SIGNATURE_HEADER: ingestlayer_signature([secret, old], now, body)}
    standard = standard_webhooks_headers([secret], "dlv_01JTS", now, body)
    stale = {SIGNATURE_HEADER: ingestlayer_signature([secret], now - 600, body)}
    real_headers, real_body, real_secret = delivered
    return [
        _case("X-Ingestlayer-Signature, one secret", secret, ours, body),
        _case("rotation: signed with new and old, verified with the old", old, rotated, body),
        _case("rotation: verified with a list of secrets", [other, secret], rotated, body),
        _case("Standard Webhooks headers only", secret, standard, body),
        _case("both schemes at once (signing: standard)", secret, {**ours, **standard}, body),
        _case("lower-case header names", secret, {k.lower(): v for k, v in ours.items()}, body),
        _case("tampered body", secret, ours, body.replace(b"pro", b"max"), error="no matching signature"),
        _case("wrong secret", other, ours, body, error="no matching signature"),
        _case("stale timestamp", secret, stale, body, error="timestamp outside tolerance"),
        _case("a real delivery from the server", real_secret, real_headers, real_body),
        # An endpoint's hmac secret need not be base64; one request with Standard Webhooks
        # headers threw a plain Error there (an unhandled crash of the docs' Node receiver).
        _case(
            "Standard Webhooks headers, a secret that is not base64",
            "acme-hooks-secret-2024!",
            standard,
            body,
            error="no secret given is one",
        ),
        _case(
            "Standard Webhooks headers, a list with such a secret",
            ["acme-hooks-secret-2024!", secret],
            standard,
            body,
        ),
        _case(
            "a webhook-signature that is not ASCII",
            secret,
            {**standard, "webhook-signature": "v1,\u00e9\u00e9\u00e9\u00e9"},
            body,
            error="not base64",
        ),
    ]


async def capture_delivery(server: RunningServer, receiver: Receiver) -> tuple[dict[str, str], bytes, str]:
    """Have the server deliver one signed webhook (both schemes) and return what arrived."""
    secret = generate_secret()
    await server.set_secret("ts-sdk-hooks", secret)
    destination = {"url": receiver.url + "/hooks", "auth": "hmac", "secret": "ref:ts-sdk-hooks"}
    await server.apply(
        {
            "pipelines": [
                {
                    "name": "ts-sdk-webhook",
                    "source": {"match": ["ts.hook"]},
                    "destinations": [{"webhook.out": {**destination, "signing": "standard"}}],
                }
            ]
        }
    )
    status, _ = await server.ingest("ts.hook", {"user": "zoë", "n": 1})
    assert status == 202

    async def arrived() -> bool:
        return bool(receiver.requests)

    await wait_for(arrived)
    req = receiver.requests[0]
    wanted = {SIGNATURE_HEADER.lower(), "webhook-id", "webhook-timestamp", "webhook-signature"}
    headers = {k: v for k, v in req.headers.items() if k.lower() in wanted}
    assert len(headers) == 4, req.headers
    return headers, req.body, secret


async def events_of(server: RunningServer, type_: str) -> list[dict[str, Any]]:
    status, body = await server.request("GET", f"/v1/events?type={type_}&limit=500")
    assert status == 200, body
    data: list[dict[str, Any]] = body["data"]
    return data


# --- the test ---------------------------------------------------------------------------------------


# The suites that talk to the real server (or use what it signed) run on every backend; the ones
# against node:http fakes do not depend on the database, so they run once, with SQLite.
EVERY_BACKEND = ["dist/test/real-server.test.js", "dist/test/webhooks.test.js"]


async def test_typescript_sdk_against_a_real_server(
    node: str, server: RunningServer, receiver: Receiver, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    everything = request.node.callspec.params.get("db_url") == "sqlite"
    cases = tmp_path / "webhook-cases.json"
    cases.write_text(json.dumps(signed_cases(await capture_delivery(server, receiver)), ensure_ascii=False))
    env = _npm_env()
    for name in ("INGESTLAYER_API_KEY", "INGESTLAYER_BASE_URL"):
        env.pop(name, None)  # the default-client tests set these themselves
    env.update(
        {
            "INGESTLAYER_URL": server.url,
            "INGESTLAYER_INGEST_KEY": server.ingest_key,
            "INGESTLAYER_WEBHOOK_CASES": str(cases),
        }
    )
    # Run in a subprocess without blocking: the server under test lives in this event loop.
    proc = await asyncio.create_subprocess_exec(
        node,
        "--test",
        "--test-reporter=tap",
        "--test-concurrency=4",
        *(["dist/test/"] if everything else EVERY_BACKEND),
        cwd=SDK_DIR,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        raw, _ = await asyncio.wait_for(proc.communicate(), 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    out = raw.decode(errors="replace")
    tail = out[-6000:]
    assert proc.returncode == 0, f"node --test failed:\n{tail}"
    counts = {
        k: int(v) for k, v in re.findall(r"^# (tests|pass|fail|skipped|todo|cancelled) (\d+)$", out, re.M)
    }
    assert counts.get("fail") == 0 and counts.get("cancelled") == 0, tail
    assert counts.get("pass", 0) >= (55 if everything else 24), f"too few node tests ran: {counts}\n{tail}"
    # A skipped suite is not counted in "# skipped": look for any SKIP directive at all.
    assert "# SKIP" not in out and counts.get("skipped") == 0, f"node tests were skipped:\n{tail}"

    # What the node tests sent, as the server stored it: each event exactly once.
    batch = await events_of(server, "ts.batch")
    assert sorted(e["payload"]["n"] for e in batch) == list(range(120))
    assert len({e["idempotency_key"] for e in batch}) == 120
    signups = await events_of(server, "user.signed_up")
    assert [(e["idempotency_key"], e["payload"]["source"]) for e in signups] == [
        ("u_signup", "marketing-site")
    ]
    used = await events_of(server, "feature.used")
    assert [e["payload"] for e in used] == [
        {"user_id": "u_ctx", "feature": "csv.export", "count": 1, "plan": "pro"}
    ]
    assert len(await events_of(server, "ts.multi")) == 10
    assert await events_of(server, "ts.big") == [] and await events_of(server, "ts.auth") == []
    # Refused by the SDK before sending (JSON.stringify would have sent NaN and Infinity as null).
    assert await events_of(server, "ts.nan") == []
