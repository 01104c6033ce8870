"""YAML aliases in ``POST /v1/apply`` and ``ingestlayer apply``.

A "billion laughs" (lines of ten aliases to the line above: 433 bytes, 10**7 nodes written out)
loaded in a millisecond, as PyYAML shares what an alias names, and then held the server's event
loop for seconds while the configuration was checked written out (each more line, ten times
longer); the CLI likewise. It is refused as it is read, at the alias that goes over, before
anything walks it. Aliases reusing a block apply as the document written out does.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import pytest

from ingestlayer.api import manage
from ingestlayer.pipeline.config import ConfigError
from ingestlayer.urlmask import MASK
from tests.integration.test_cli import start
from tests.support.api import error_of
from tests.support.cli import cli, one_line_error
from tests.support.server import RunningServer


def laughs(lines: int = 7) -> bytes:
    """l0: a list of ten; l1 to l{lines-1}: ten aliases each to the list above."""
    text = "l0: &a0 ['lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol']\n"
    for i in range(1, lines):
        text += f"l{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n"
    return text.encode()


# Aliases have brought in 12,330 nodes by line 4; on line 5 each brings 11,111, and the 8th
# (column 9 + 7 * 5 + 1) goes past 100,000.
WENT_OVER = "YAML aliases expand the document by more than 100,000 nodes: the alias *a3 at line 5, column 45"


async def post_yaml(srv: RunningServer, body: bytes, query: str = "") -> tuple[int, Any]:
    return await srv.request(
        "POST", "/v1/apply" + query, data=body, headers={"Content-Type": "application/yaml"}
    )


async def test_the_api_refuses_a_billion_laughs_before_anything_walks_it(
    srv: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(laughs()) < 500
    walked: list[Any] = []

    def parse_config(doc: Any) -> Any:
        # The first thing to walk the document, written out (the old code's seconds went there):
        # it must never see one of these. Failing fast keeps the old code's failure quick.
        walked.append(doc)
        raise ConfigError("", "the document was walked")

    monkeypatch.setattr(manage, "parse_config", parse_config)
    # The CPU time of reading each document, on the thread that reads it: the process's own
    # (tried first) also counted whatever threads earlier tests in this process left running.
    load = manage.load_config_yaml
    spent: list[float] = []

    def timed_load(raw: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return load(raw, **kwargs)
        finally:
            spent.append(time.thread_time() - started)

    monkeypatch.setattr(manage, "load_config_yaml", timed_load)
    for body, query in ((laughs(), ""), (laughs(), "?prune=1"), (laughs(40), "?dry_run=1")):
        status, err = await post_yaml(srv, body, query)
        assert status == 422, err
        assert error_of(err)["code"] == "alias_expansion_too_large", err
        assert err["error"]["message"].startswith(WENT_OVER), err
        assert "field" not in err["error"], err
    assert walked == []
    # 10**40 nodes refused like 10**7: a few milliseconds each (walking the 10**7 took 5 to
    # 10 s). Generous, and CPU time: a busy machine does not inflate it.
    assert len(spent) == 3 and sum(spent) < 0.5, spent
    assert (await srv.request("GET", "/healthz"))[0] == 200
    _, listed = await srv.request("GET", "/v1/pipelines")
    assert listed["data"] == []


async def test_an_alias_inside_its_own_anchor_is_refused_by_name(srv: RunningServer) -> None:
    """Refused before as "nests more than 64 levels", and as such only because the depth check
    came first: anything else walking it would never have ended."""
    body = b"pipelines: &p\n  - name: x\n    source: {match: [a.*]}\n    steps: *p\n"
    status, err = await post_yaml(srv, body)
    assert status == 422 and error_of(err)["code"] == "alias_expansion_too_large", err
    assert err["error"]["message"] == (
        "the YAML alias *p at line 4, column 12 is inside the node &p it names, so the document "
        "would never end"
    )


REUSED = b"""
destinations:
  - name: billing
    webhook.out: &hook
      url: https://hooks.acme.example/in
      auth: hmac
      secret: ref:acme-hooks
      headers: {X-Team: billing, X-Env: prod}
    retry: &retry {schedule: [0, 60, 300]}
pipelines:
  - name: invoices
    source: {match: [invoice.*]}
    destinations:
      - ref: billing
      - webhook.out: {<<: *hook, url: https://hooks.acme.example/invoices}
        retry: *retry
  - name: payments
    source: &money {match: [payment.*, refund.*]}
    destinations:
      - webhook.out: *hook
        retry: *retry
  - name: payments-audit
    source: *money
    destinations:
      - webhook.out: {<<: *hook, headers: {X-Team: audit}}
"""

WRITTEN_OUT = b"""
destinations:
  - name: billing
    webhook.out:
      url: https://hooks.acme.example/in
      auth: hmac
      secret: ref:acme-hooks
      headers: {X-Team: billing, X-Env: prod}
    retry: {schedule: [0, 60, 300]}
pipelines:
  - name: invoices
    source: {match: [invoice.*]}
    destinations:
      - ref: billing
      - webhook.out:
          url: https://hooks.acme.example/invoices
          auth: hmac
          secret: ref:acme-hooks
          headers: {X-Team: billing, X-Env: prod}
        retry: {schedule: [0, 60, 300]}
  - name: payments
    source: {match: [payment.*, refund.*]}
    destinations:
      - webhook.out:
          url: https://hooks.acme.example/in
          auth: hmac
          secret: ref:acme-hooks
          headers: {X-Team: billing, X-Env: prod}
        retry: {schedule: [0, 60, 300]}
  - name: payments-audit
    source: {match: [payment.*, refund.*]}
    destinations:
      - webhook.out:
          url: https://hooks.acme.example/in
          auth: hmac
          secret: ref:acme-hooks
          headers: {X-Team: audit}
"""


async def configuration(srv: RunningServer) -> tuple[Any, Any]:
    _, pipelines = await srv.request("GET", "/v1/pipelines")
    _, destinations = await srv.request("GET", "/v1/destinations")
    return pipelines["data"], destinations["data"]


async def test_reused_blocks_apply_as_the_document_written_out(srv: RunningServer) -> None:
    """A regression guard (it passes on the code before the limit too): anchors, aliases and
    ``<<:`` merges still apply, to the very configuration their written-out document makes."""
    status, applied = await post_yaml(srv, REUSED)
    assert status == 200, applied
    assert applied["summary"] == {"create": 7}, applied
    assert applied["missing_secrets"] == ["acme-hooks"]
    reused = await configuration(srv)
    status, again = await post_yaml(srv, WRITTEN_OUT, "?prune=1")
    assert status == 200, again
    assert again["summary"] == {"unchanged": 7}, again
    assert await configuration(srv) == reused
    by_name = {d["name"]: d for d in reused[1]}
    assert by_name["payments-audit/webhook.out"]["config"]["headers"] == {"X-Team": MASK}  # shown masked
    cfg = await srv.runtime.store.load_project_config(srv.project_id)
    stored = {d.name: d.config["settings"] for d in cfg.destinations.values()}
    assert stored["payments-audit/webhook.out"]["headers"] == {"X-Team": "audit"}
    assert by_name["invoices/webhook.out"]["config"]["url"] == "https://hooks.acme.example/invoices"


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def test_the_cli_refuses_a_billion_laughs_in_both_modes(sqlite_url: str, tmp_path: Path) -> None:
    server = await start(sqlite_url)
    try:
        (tmp_path / "laughs.yaml").write_bytes(laughs())
        (tmp_path / "more-laughs.yaml").write_bytes(laughs(12))  # 10**12 nodes written out
        local = ("--project", server.project_id)
        remote = ("--url", server.url, "--key", server.admin_key)
        started = children_cpu()
        runs = 0
        for name in ("laughs.yaml", "more-laughs.yaml"):
            for mode, where in ((local, {"db_url": sqlite_url}), (remote, {})):
                run = await cli("apply", "-f", name, *mode, cwd=tmp_path, **where)
                one_line_error(run, f"error: {name}: {WENT_OVER}", "not multiplied")
                runs += 1
        # The command's own CPU time, start-up included (0.4 s here; walking 10**7 nodes took 5 s
        # more, 10**12 would never end): generous, and CPU time is not inflated by a busy machine.
        cpu = children_cpu() - started
        assert cpu < 3.0 * runs, cpu
        _, listed = await server.request("GET", "/v1/pipelines")
        assert listed["data"] == []
    finally:
        await server.stop()
