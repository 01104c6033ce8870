"""What ``ingestlayer … --help`` tells a user, read as a user reads it (the installed entry point,
in a subprocess): every effect of an option named, and nothing in the layout that misleads."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from tests.support.cli import cli, ok


async def help_text(*command: str, cwd: Path, columns: int = 250) -> str:
    """The help of ``ingestlayer *command``, each option's help on one line when wide enough."""
    return ok(await cli(*command, "--help", cwd=cwd, COLUMNS=str(columns))).out


async def test_apply_help_says_sources_are_applied_and_pruned(tmp_path: Path) -> None:
    text = await help_text("apply", cwd=tmp_path)
    # The summary and --prune name sources with pipelines and destinations: `--prune` deletes
    # sources too, and a deleted source's ingress URL stops taking its sender's webhooks.
    assert "Create or update pipelines, destinations and sources from a file" in text, text
    prune = next(line for line in text.splitlines() if "--prune" in line)
    assert "delete pipelines, destinations and sources not in the file" in prune, prune
    assert "ingress URL" in prune, prune


async def test_flags_show_no_value(tmp_path: Path) -> None:
    commands = [(), ("apply",), ("events",), ("tail",), ("secrets",), ("secrets", "set")]
    texts = await asyncio.gather(*(help_text(*command, cwd=tmp_path) for command in commands))
    for command, text in zip(commands, texts, strict=True):
        # Typer wrote each flag's type where a value goes (`--dry-run <bool>`), as if it took one.
        assert "<bool>" not in text, (command, text)
        assert "--help" in text, (command, text)
    top, apply, events, tail = texts[:4]
    assert "--version" in top
    dry_run = next(line for line in apply.splitlines() if "--dry-run" in line)
    assert "Show the diff; change nothing" in dry_run and "<" not in dry_run, dry_run
    assert "--json" in events and "--no-events" in tail
    # Options that take a value still say what kind.
    assert "<path>" in apply and "<int range>" in tail, (apply, tail)


async def test_api_says_where_it_listens_by_default_as_serve_does(tmp_path: Path) -> None:
    texts = await asyncio.gather(*(help_text(command, cwd=tmp_path) for command in ("serve", "api")))
    for text in texts:
        host = next(line for line in text.splitlines() if "--host" in line)
        port = next(line for line in text.splitlines() if "--port" in line)
        assert "Default 127.0.0.1 or INGESTLAYER_HOST" in host, text
        assert "Default 8000 or INGESTLAYER_PORT" in port, text


def option_block(text: str, option: str) -> str:
    """The rows of ``option`` in the help's table, up to the next option's, as one string."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if f" {option} " in line)
    # The next option's row starts at the left; a row of this one's help starts far right.
    end = next(i for i in range(start + 1, len(lines)) if lines[i][1:12].strip())
    return " ".join(" ".join(line.strip("│ ").split()) for line in lines[start:end])


async def test_status_help_lists_every_status_at_80_columns(tmp_path: Path) -> None:
    cases = {
        "deliveries": ["pending", "delivering", "retrying", "delivered", "dead"],
        "replay": ["pending", "retrying", "delivered", "dead", "default: dead"],
        "tail": ["delivered", "failed", "dead"],
    }
    texts = await asyncio.gather(*(help_text(c, cwd=tmp_path, columns=80) for c in cases))
    for (command, words), text in zip(cases.items(), texts, strict=True):
        block = option_block(text, "--status")
        # A|B|C was one word to the table, cut to `pending|delivering|retrying|…`.
        assert "…" not in block, (command, block)
        assert all(re.search(rf"\b{w}\b", block) for w in words), (command, block)
        assert "repeat --status" in block, (command, block)


async def test_key_help_says_which_key_each_command_takes(tmp_path: Path) -> None:
    commands = ("send", "apply", "events", "deliveries", "replay", "tail")
    texts = await asyncio.gather(*(help_text(c, cwd=tmp_path) for c in commands))
    keys = {c: option_block(text, "--key") for c, text in zip(commands, texts, strict=True)}
    # `send --url … --key il_ingest_…` works: its help says so; the others need the admin key.
    assert "Ingest key (il_ingest_…) or admin key (il_admin_…) for --url" in keys["send"], keys
    for command in commands[1:]:
        assert "Admin key (il_admin_…) for --url" in keys[command], (command, keys[command])
    # Without a key, send asks for either.
    run = await cli("send", "a.b", "--url", "http://127.0.0.1:9", cwd=tmp_path)
    assert run.rc == 1 and run.err.strip() == (
        "error: --url needs an ingest or admin key: --key or INGESTLAYER_ADMIN_KEY"
    ), run
