"""The code on the SDK doc pages runs, and does what the pages say.

Every ```python and ```ts block of docs/verify-webhooks.md, docs/sdk-python.md and
docs/sdk-typescript.md is extracted and run:

* verify-webhooks.md: the FastAPI receiver gets a real delivery from a running server, then requests
  signed by ingestlayer.delivery.signing (valid, rotated, Standard Webhooks, tampered, stale, repeated);
  the plain-HMAC function gets the same; the TypeScript receiver is compiled with the SDK and run
  under Node.js, and gets the same requests over HTTP.
* sdk-python.md: every block runs (against a fake server, as the page mixes in identify/group,
  which the server does not serve yet), and the quick start also against a real server.
* sdk-typescript.md: every block compiles under `tsc --strict` with the built SDK (including its
  `@ts-expect-error` lines, which must fail), and the quick start runs against a real server.
* README.md: the quick start's shell block runs in bash against `ingestlayer serve`, and the event
  it sends reaches the pipeline's webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import socket
import subprocess
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvicorn
import yaml
from aiohttp import web

from ingestlayer.delivery.signing import (
    SIGNATURE_HEADER,
    generate_secret,
    ingestlayer_signature,
    standard_webhooks_headers,
)
from ingestlayer.pipeline.config import ConfigError, parse_config
from tests.e2e.test_sdk_typescript import SDK_DIR, build_typescript_sdk
from tests.support.cli import CLI, cli_env
from tests.support.receiver import serve_app
from tests.support.server import RunningServer, start_server, wait_for

DOCS = Path(__file__).resolve().parents[2] / "docs"
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
PLACEHOLDER_KEY = "il_ingest_…"
PLACEHOLDER_URL = "http://127.0.0.1:8000"


def blocks(page: str, *languages: str) -> list[str]:
    """The fenced code blocks of ``docs/<page>`` in the given languages, in page order."""
    text = (DOCS / page).read_text(encoding="utf-8")
    return [m.group(2) for m in FENCE.finditer(text) if m.group(1) in languages]


def delivery_body(event_type: str = "user.signed_up", event_id: str = "evt_01JDOC") -> bytes:
    """A body in the default delivery format, with non-ASCII text to catch encoding slips."""
    return json.dumps(
        {
            "id": event_id,
            "type": event_type,
            "occurred_at": "2026-03-01T12:30:00.000Z",
            "payload": {"email": "zoë@acme.com", "plan": "pro"},
        },
        ensure_ascii=False,
    ).encode()


def signed(
    secrets: list[str], body: bytes, *, at: int | None = None, delivery: str = "dlv_doc1"
) -> dict[str, str]:
    t = int(time.time()) if at is None else at
    return {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: ingestlayer_signature(secrets, t, body),
        "X-Ingestlayer-Delivery": delivery,
        "X-Ingestlayer-Event": "user.signed_up",
        "X-Ingestlayer-Attempt": "1",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.asynccontextmanager
async def serve_asgi(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app on a free port of 127.0.0.1 in this event loop; yield its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_config=None, access_log=False))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def post(url: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as resp:
        return resp.status, await resp.text()


# --- verify-webhooks.md: Python with the SDK ---------------------------------------------------------


def load_fastapi_receiver(secrets: str) -> tuple[Any, list[dict[str, Any]]]:
    """Run the page's FastAPI block; return its app and a list that records handled events."""
    python = blocks("verify-webhooks.md", "python")
    assert len(python) == 2, "verify-webhooks.md should hold the SDK receiver and the plain-HMAC function"
    namespace: dict[str, Any] = {"__name__": "docs_receiver"}
    with environ(INGESTLAYER_WEBHOOK_SECRET=secrets):
        exec(compile(python[0], "verify-webhooks.md[python 1]", "exec"), namespace)
    handled: list[dict[str, Any]] = []
    original = namespace["handle"]

    def recording(event: dict[str, Any]) -> None:
        handled.append(event)
        with contextlib.redirect_stdout(io.StringIO()):
            original(event)

    namespace["handle"] = recording  # the route looks `handle` up at call time
    return namespace["app"], handled


async def test_python_receiver_accepts_a_real_delivery(sqlite_url: str) -> None:
    secret = generate_secret()
    app, handled = load_fastapi_receiver(secret)
    server = await start_server(sqlite_url)
    try:
        async with serve_asgi(app) as receiver_url:
            await server.set_secret("doc-hooks", secret)
            await server.apply(
                {
                    "pipelines": [
                        {
                            "name": "docs",
                            "source": {"match": ["user.signed_up"]},
                            "destinations": [
                                {
                                    "webhook.out": {
                                        "url": receiver_url + "/webhooks/ingestlayer",
                                        "auth": "hmac",
                                        "secret": "ref:doc-hooks",
                                    }
                                }
                            ],
                        }
                    ]
                }
            )
            status, body = await server.ingest("user.signed_up", {"email": "zoë@acme.com", "plan": "pro"})
            assert status == 202

            async def delivered() -> Any:
                code, event = await server.request("GET", f"/v1/events/{body['id']}")
                ds = event["deliveries"] if code == 200 else []
                return ds and ds[0]["status"] in ("delivered", "dead") and ds[0]

            delivery = await wait_for(delivered)
    finally:
        await server.stop()
    assert delivery["status"] == "delivered"
    assert [e["id"] for e in handled] == [body["id"]]
    assert handled[0]["payload"] == {"email": "zoë@acme.com", "plan": "pro"}


async def test_python_receiver_accepts_and_rejects_signed_requests() -> None:
    new, old = generate_secret(), generate_secret()
    app, handled = load_fastapi_receiver(f"{new},{old}")
    body = delivery_body()
    async with serve_asgi(app) as base:
        url = base + "/webhooks/ingestlayer"
        assert (await post(url, signed([new], body), body))[0] == 200
        # Retried delivery (same X-Ingestlayer-Delivery): accepted, not handled twice.
        assert (await post(url, signed([new], body), body))[0] == 200
        # Rotation: signed by the old secret only, or by both.
        assert (await post(url, signed([old], body, delivery="dlv_doc2"), body))[0] == 200
        assert (await post(url, signed([new, old], body, delivery="dlv_doc3"), body))[0] == 200
        std = standard_webhooks_headers([new], "dlv_doc4", int(time.time()), body)
        assert (await post(url, {**std, "X-Ingestlayer-Delivery": "dlv_doc4"}, body))[0] == 200
        rejected = [
            await post(url, signed([new], body), body.replace(b"pro", b"max")),
            await post(url, signed([generate_secret()], body), body),
            await post(url, signed([new], body, at=int(time.time()) - 3600), body),
            await post(url, {"Content-Type": "application/json"}, body),
        ]
    assert len(handled) == 4
    assert [status for status, _ in rejected] == [400, 400, 400, 400]
    reasons = [json.loads(text)["detail"] for _, text in rejected]
    assert reasons[0].startswith("no matching signature") and reasons[1].startswith("no matching signature")
    assert reasons[2].startswith("timestamp outside tolerance") and reasons[3].startswith("missing header")


# --- verify-webhooks.md: plain HMAC ------------------------------------------------------------------


def test_plain_hmac_example_verifies_what_ingestlayer_signs() -> None:
    namespace: dict[str, Any] = {"__name__": "docs_plain_hmac"}
    exec(
        compile(blocks("verify-webhooks.md", "python")[1], "verify-webhooks.md[python 2]", "exec"), namespace
    )
    check = namespace["verify_ingestlayer_signature"]
    invalid = namespace["InvalidSignature"]
    new, old = generate_secret(), generate_secret()
    body = delivery_body()
    now = int(time.time())

    assert check([new], ingestlayer_signature([new], now, body), body) == json.loads(body)
    assert check([new, old], ingestlayer_signature([old], now, body), body)["id"] == "evt_01JDOC"
    assert check([old], ingestlayer_signature([new, old], now, body), body)["type"] == "user.signed_up"
    assert check([new], f"t={now},v0=abc," + ingestlayer_signature([new], now, body).split(",", 1)[1], body)
    bad = {
        "tampered": (ingestlayer_signature([new], now, body), body + b" "),
        "other secret": (ingestlayer_signature([generate_secret()], now, body), body),
        "stale": (ingestlayer_signature([new], now - 301, body), body),
        "future": (ingestlayer_signature([new], now + 301, body), body),
        "no v1": (f"t={now}", body),
        "no t": ("v1=" + "0" * 64, body),
        "not ascii digits": (f"t=\uff11\uff12,v1={'0' * 64}", body),
    }
    for name, (header, payload) in bad.items():
        with pytest.raises(invalid):
            check([new], header, payload)
            pytest.fail(f"accepted: {name}")


# --- TypeScript: verify-webhooks.md receiver and sdk-typescript.md blocks ----------------------------


@pytest.fixture(scope="module")
def compiled_docs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """Every TypeScript block of the SDK pages, compiled together against the built SDK."""
    node = build_typescript_sdk()
    work = tmp_path_factory.mktemp("docs-ts")
    (work / "package.json").write_text('{"type": "module"}')
    (work / "node_modules" / "@ingestlayer").mkdir(parents=True)
    (work / "node_modules" / "@ingestlayer" / "sdk").symlink_to(SDK_DIR, target_is_directory=True)
    files = ["receiver.ts"]
    receiver = blocks("verify-webhooks.md", "ts", "typescript")
    assert len(receiver) == 1
    (work / "receiver.ts").write_text(receiver[0])
    for i, code in enumerate(blocks("sdk-typescript.md", "ts", "typescript")):
        files.append(f"sdk_{i}.ts")
        (work / files[-1]).write_text(code)
    config = {
        "compilerOptions": {
            "target": "ES2022",
            "module": "NodeNext",
            "moduleResolution": "NodeNext",
            "strict": True,
            "skipLibCheck": True,
            "types": ["node"],
            "typeRoots": [str(SDK_DIR / "node_modules" / "@types")],
            "outDir": "out",
        },
        "files": files,
    }
    (work / "tsconfig.json").write_text(json.dumps(config))
    tsc = SDK_DIR / "node_modules" / "typescript" / "bin" / "tsc"
    result = subprocess.run(
        [node, str(tsc), "-p", "tsconfig.json"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Fails on a type error in an example, and on an `@ts-expect-error` line that compiles.
    assert result.returncode == 0, f"the docs' TypeScript does not compile:\n{result.stdout}\n{result.stderr}"
    return node, work


def test_typescript_blocks_are_there() -> None:
    ts = blocks("sdk-typescript.md", "ts", "typescript")
    assert len(ts) >= 7
    assert sum("@ts-expect-error" in code for code in ts) >= 1


async def test_typescript_receiver_accepts_and_rejects_signed_requests(
    compiled_docs: tuple[str, Path],
) -> None:
    node, work = compiled_docs
    new, old = generate_secret(), generate_secret()
    for attempt in range(3):
        port = free_port()
        env = {**os.environ, "PORT": str(port), "INGESTLAYER_WEBHOOK_SECRET": f"{new},{old}"}
        proc = await asyncio.create_subprocess_exec(
            node,
            "out/receiver.js",
            cwd=work,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3000):  # wait for it to listen (Node starts slowly on a loaded machine)
            if proc.returncode is not None:
                break
            try:
                _r, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.01)
        if proc.returncode is None:
            break
        # Exited: the port picked was taken before it bound it (EADDRINUSE), or worse.
        _, failed = await proc.communicate()
        assert b"EADDRINUSE" in failed and attempt < 2, failed.decode()
    url = f"http://127.0.0.1:{port}/webhooks/ingestlayer"
    body = delivery_body()
    try:
        accepted = [
            await post(url, signed([new], body), body),
            await post(url, signed([new], body), body),  # a retry: accepted, logged once
            await post(url, signed([old], body, delivery="dlv_doc2"), body),
            await post(url, standard_webhooks_headers([new], "dlv_doc3", int(time.time()), body), body),
        ]
        rejected = [
            await post(url, signed([new], body), body.replace(b"pro", b"max")),
            await post(url, signed([new], body, at=int(time.time()) - 3600), body),
            await post(url, {}, body),
        ]
    finally:
        proc.terminate()
        out, err = await proc.communicate()
    assert [s for s, _ in accepted] == [200, 200, 200, 200], err.decode()
    assert [s for s, _ in rejected] == [400, 400, 400]
    assert rejected[0][1].startswith("no matching signature")
    assert rejected[1][1].startswith("timestamp outside tolerance")
    assert rejected[2][1].startswith("missing header")
    assert out.decode().splitlines() == ["received user.signed_up evt_01JDOC"] * 3


async def test_typescript_quick_start_runs_against_a_real_server(
    compiled_docs: tuple[str, Path], sqlite_url: str
) -> None:
    node, work = compiled_docs
    server = await start_server(sqlite_url)
    try:
        env = {**os.environ, "INGESTLAYER_API_KEY": server.ingest_key}
        first = next(i for i, code in enumerate(blocks("sdk-typescript.md", "ts")) if "init(" in code)
        compiled = (work / "out" / f"sdk_{first}.js").read_text()
        assert PLACEHOLDER_URL in compiled
        (work / "out" / "quick_start.js").write_text(compiled.replace(PLACEHOLDER_URL, server.url))
        proc = await asyncio.create_subprocess_exec(
            node, "out/quick_start.js", cwd=work, env=env, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        status, body = await server.request("GET", "/v1/events?type=feature.used")
    finally:
        await server.stop()
    assert status == 200
    assert [e["payload"] for e in body["data"]] == [
        {"user_id": "u_1", "feature": "csv.export", "count": 1, "plan": "pro"}
    ]


# --- sdk-python.md -----------------------------------------------------------------------------------


def run_python_blocks(codes: list[str], url: str, key: str) -> str:
    """Run doc blocks in order in one namespace, as a reader would paste them; return their output."""
    namespace: dict[str, Any] = {"__name__": "docs_sdk_python"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, code in enumerate(codes):
            source = code.replace(PLACEHOLDER_KEY, key).replace(PLACEHOLDER_URL, url)
            exec(compile(source, f"sdk-python.md[python {i + 1}]", "exec"), namespace)
    return out.getvalue()


class FakeIngestlayer:
    """Just enough of the API for the page's examples: idempotent ingest, batches, identify, group."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[tuple[str, Any]] = []
        self.keys: dict[str, str] = {}

    def _store(self, event: dict[str, Any]) -> dict[str, Any]:
        key = event["idempotency_key"]
        duplicate = key in self.keys
        self.keys.setdefault(key, f"evt_doc{len(self.keys)}")
        return {"id": self.keys[key], "duplicate": duplicate}

    async def handle(self, request: web.Request) -> web.Response:
        doc = await request.json()
        self.requests.append((request.path, doc))
        if request.path != "/v1/events":
            return web.json_response({"ok": True})
        if "batch" in doc:
            return web.json_response({"items": [self._store(e) for e in doc["batch"]]}, status=202)
        result = self._store(doc)
        return web.json_response(result, status=200 if result["duplicate"] else 202)


@pytest.fixture
async def fake_ingestlayer() -> AsyncIterator[FakeIngestlayer]:
    fake = FakeIngestlayer()
    app = web.Application()
    app.router.add_post("/{tail:.*}", fake.handle)
    fake.url, runner = await serve_app(app)
    yield fake
    await runner.cleanup()


async def test_python_sdk_page_runs(fake_ingestlayer: FakeIngestlayer) -> None:
    codes = blocks("sdk-python.md", "python")
    assert len(codes) >= 6
    output = await asyncio.to_thread(run_python_blocks, codes, fake_ingestlayer.url, "il_ingest_doc")
    paths = {path for path, _ in fake_ingestlayer.requests}
    assert paths == {"/v1/events", "/v1/identify", "/v1/group"}
    batched = [len(doc["batch"]) for _, doc in fake_ingestlayer.requests if "batch" in doc]
    assert sum(batched) == 1500 and max(batched) <= 200  # 1000 sync + 500 async events, in batches
    assert "evt_doc0 False" in output


async def test_python_quick_start_and_idempotency_run_against_a_real_server(server: RunningServer) -> None:
    codes = blocks("sdk-python.md", "python")[:2]
    output = await asyncio.to_thread(run_python_blocks, codes, server.url, server.ingest_key)
    status, used = await server.request("GET", "/v1/events?type=feature.used")
    assert status == 200 and len(used["data"]) == 1
    assert output.split() == [used["data"][0]["id"], "False"]
    _, signups = await server.request("GET", "/v1/events?type=user.signed_up")
    assert [e["idempotency_key"] for e in signups["data"]] == ["u_42"]


def test_doc_pages_link_each_other() -> None:
    for page in ("sdk-python.md", "sdk-typescript.md"):
        assert "verify-webhooks.md" in (DOCS / page).read_text(encoding="utf-8")


# --- every pipeline YAML in the docs ------------------------------------------------------------------
YAML_FENCE = re.compile(r"^([ \t]*)```ya?ml[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)


def pipeline_yaml_blocks() -> list[tuple[str, dict[str, Any]]]:
    """Each ```yaml block of README.md and docs/ that is a configuration file (top-level
    `pipelines:`, `destinations:` or `sources:`), indented ones (inside lists) included."""
    found = []
    for page in [DOCS.parent / "README.md", *sorted(DOCS.rglob("*.md"))]:
        for n, m in enumerate(YAML_FENCE.finditer(page.read_text(encoding="utf-8"))):
            doc = yaml.safe_load(textwrap.dedent(m.group(2)))
            if isinstance(doc, dict) and {"pipelines", "destinations", "sources"} & set(doc):
                found.append((f"{page.relative_to(DOCS.parent)}[yaml {n + 1}]", doc))
    return found


def test_every_pipeline_yaml_in_the_docs_is_a_valid_configuration() -> None:
    blocks_found = pipeline_yaml_blocks()
    assert len(blocks_found) >= 15  # the recipe, step and destination pages all have some
    for where, doc in blocks_found:
        try:
            parse_config(doc)
        except ConfigError as exc:
            pytest.fail(f"{where}: {exc}")


# --- README.md: the quick start, as a shell runs it -------------------------------------------------


def readme_quick_start(cli_path: str, url: str) -> str:
    """The README's second ```sh block, made runnable here: its `ingestlayer` the installed one,
    its server at ``url``, the ingest key `init` prints put where the block has `il_ingest_…`,
    and `tail` stopped after a second instead of by Ctrl-C."""
    shell = re.findall(
        r"^```sh\n(.*?)^```", (DOCS.parent / "README.md").read_text(encoding="utf-8"), re.M | re.S
    )
    script = shell[1].replace(".venv/bin/ingestlayer", cli_path).replace(PLACEHOLDER_URL, url)
    read_key = "INGEST_KEY=$(echo \"$KEYS\" | awk '/^ingest/ {print $2}')"
    lines = []
    for written in script.splitlines():
        line = written.replace(PLACEHOLDER_KEY, "$INGEST_KEY")
        if line.startswith(f"{cli_path} init "):
            line = f'KEYS=$({line.split("#", 1)[0].strip()}) && echo "$KEYS" && {read_key}'
        elif line.startswith(f"{cli_path} tail"):
            line = line.replace(" tail", " tail --for 1", 1)
        lines.append(line)
    return "\n".join(lines) + "\n"


async def test_readme_quick_start_runs_as_shown(tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(INGESTLAYER_PORT=str(port))
    log = (tmp_path / "serve.log").open("wb")
    serve = await asyncio.create_subprocess_exec(
        CLI, "serve", cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:

        async def healthy() -> bool:
            with contextlib.suppress(aiohttp.ClientError):
                async with aiohttp.ClientSession() as s, s.get(url + "/healthz") as resp:
                    return resp.status == 200
            assert serve.returncode is None, (tmp_path / "serve.log").read_text()
            return False

        await wait_for(healthy, timeout=60, interval=0.1)
        shell = await asyncio.create_subprocess_exec(
            "bash",
            "-e",
            "-c",
            readme_quick_start(CLI, url),
            cwd=tmp_path,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        # `secrets set` reads the signing secret from stdin, as the README says.
        out, err = await asyncio.wait_for(shell.communicate(b"a-signing-secret\n"), 120)
        assert shell.returncode == 0, (out.decode(), err.decode())
        text = out.decode()
        assert "secret acme-hooks stored" in text and "dry run: 2 create" in text, text
        assert "applied: 2 create" in text, text
        event_id = re.search(r'"id":"(evt_\w+)","duplicate":false', text)
        assert event_id, text

        async def delivery() -> Any:
            proc = await asyncio.create_subprocess_exec(
                CLI, "deliveries", "--json", cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE
            )
            listed, _ = await proc.communicate()
            rows = [d for d in json.loads(listed) if d["event_id"] == event_id.group(1)]
            return rows and rows[0]["attempt_count"] and rows[0]

        # The event passes the pipeline's filter and its delivery is tried (and retried: the URL
        # stands for the reader's receiver).
        found = await wait_for(delivery, timeout=30, interval=0.5)
        assert found["destination"] == "feature-usage-to-webhook/webhook.out", found
    finally:
        serve.terminate()
        await serve.wait()
        log.close()
