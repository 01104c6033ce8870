"""A database's refusal reaches the CLI user as one line naming the cause, never SQLAlchemy's
text, which quotes the statement and its parameters."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy
import sqlalchemy.exc
import typer

from ingestlayer.cli import cli_errors, database_problem

PARAMETER = "https://user:SECRETpw@hooks.example.com/x"


def _db(tmp_path: Path) -> Path:
    path = tmp_path / "x.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE destinations (config TEXT)")
    return path


def _write(url: str, **connect_args: object) -> None:
    engine = sqlalchemy.create_engine(url, connect_args=connect_args)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("INSERT INTO destinations VALUES (:c)"), {"c": PARAMETER})
    finally:
        engine.dispose()


def test_a_read_only_database(tmp_path: Path) -> None:
    path = _db(tmp_path)
    with pytest.raises(sqlalchemy.exc.DBAPIError) as info:
        _write(f"sqlite:///file:{path}?mode=ro&uri=true")
    assert PARAMETER in str(info.value)  # what used to be printed
    message = database_problem(info.value)
    assert "cannot be written here" in message and "read-only" in message
    assert "SECRETpw" not in message and "INSERT" not in message


def test_a_database_another_connection_holds(tmp_path: Path) -> None:
    path = _db(tmp_path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlalchemy.exc.DBAPIError) as info:
            _write(f"sqlite:///{path}", timeout=0.05)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    message = database_problem(info.value)
    assert message.startswith("the database is locked by another connection")
    assert "SECRETpw" not in message


def test_the_cli_prints_one_line_without_the_statement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _db(tmp_path)

    @cli_errors
    def command() -> None:
        _write(f"sqlite:///file:{path}?mode=ro&uri=true")

    with pytest.raises(typer.Exit) as info:
        command()
    assert info.value.exit_code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the database cannot be written here") and err.count("\n") == 1, err
    assert "SECRETpw" not in err and "sqlalche.me" not in err
