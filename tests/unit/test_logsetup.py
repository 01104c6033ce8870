"""The log level: DEBUG shows ingestlayer's own detail, never a library's statements and their
parameters (destination configs, URLs, payloads)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import aiosqlite
import pytest

from ingestlayer.logsetup import configure


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("ingestlayer").level
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("ingestlayer").setLevel(saved[2])


@pytest.mark.usefixtures("restore_logging")
async def test_debug_logs_no_sql_parameters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure("debug")
    async with aiosqlite.connect(tmp_path / "x.db") as db:
        await db.execute("CREATE TABLE t (config TEXT)")
        await db.execute("INSERT INTO t VALUES (?)", ('{"url": "https://u:SECRETpw123@example.com"}',))
    logging.getLogger("ingestlayer.dispatcher").debug("leased %d deliveries", 3)
    logging.getLogger("aiosqlite").info("a library's info line")

    err = capsys.readouterr().err
    assert "SECRETpw123" not in err
    assert "DEBUG ingestlayer.dispatcher leased 3 deliveries" in err
    assert "a library's info line" in err


@pytest.mark.usefixtures("restore_logging")
def test_the_level_still_applies_to_ingestlayer(capsys: pytest.CaptureFixture[str]) -> None:
    configure("WARNING")
    logging.getLogger("ingestlayer.ingest").info("not shown")
    logging.getLogger("ingestlayer.ingest").warning("shown")
    logging.getLogger("uvicorn.error").info("library info not shown either")
    err = capsys.readouterr().err
    assert "shown" in err and "not shown" not in err and "library info" not in err


@pytest.mark.usefixtures("restore_logging")
def test_quoted_text_cannot_start_a_line_of_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    """An attempt's error quotes the receiver's answer, which the receiver controls."""
    configure("INFO")
    forged = "HTTP 500\n2026-11-27 12:00:00,000 CRITICAL ingestlayer.auth admin key leaked\r\nok"
    logging.getLogger("ingestlayer.delivery").info("attempt delivery=%s error=%s", "dlv_1", forged)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("ingestlayer.delivery").exception("a bug")

    lines = capsys.readouterr().err.splitlines()
    assert not any(line.startswith("2026-11-27 12:00:00,000 CRITICAL") for line in lines)
    assert lines[0].endswith(
        "error=HTTP 500\\n2026-11-27 12:00:00,000 CRITICAL ingestlayer.auth admin key leaked\\r\\nok"
    )
    assert lines[1].endswith("ERROR ingestlayer.delivery a bug")
    assert lines[2] == "Traceback (most recent call last):"  # our own traceback keeps its lines
