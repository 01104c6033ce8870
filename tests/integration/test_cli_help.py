"""What ``ingestlayer … --help`` tells a user, read as a user reads it (the installed entry point,
in a subprocess): every effect of an option named, and nothing in the layout that misleads."""

from __future__ import annotations

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
