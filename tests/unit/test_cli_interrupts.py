"""Ctrl-C at the CLI's prompt (``secrets set`` asks for the value) ends in main()'s one line."""

from __future__ import annotations

import sys

import pytest
import typer

from ingestlayer import cli


def test_ctrl_c_at_a_prompt_is_one_line_and_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(_name: str) -> None:
        raise typer.Abort()  # what the prompt raises on Ctrl-C

    monkeypatch.setattr(cli, "check_secret_name", interrupted)
    monkeypatch.setattr(sys, "argv", ["ingestlayer", "secrets", "set", "x", "--value", "y"])
    with pytest.raises(SystemExit) as ended:
        cli.main()
    assert ended.value.code == 130  # was 1, "error: Abort:"
    assert capsys.readouterr().err == "error: aborted\n"
