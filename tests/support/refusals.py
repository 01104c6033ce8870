"""Make a real database refuse some rows: a trigger, on SQLite or PostgreSQL, that aborts the
insert of every row of a table matching a condition. How the tests show that one row the
database will not store does not fail the others stored with it, without mocking the store."""

from __future__ import annotations

from ingestlayer.store.store import Store


async def refuse_inserts(store: Store, table: str, condition: str) -> None:
    """From now on the database refuses rows of ``table`` for which ``condition`` (SQL over
    ``NEW``, the same in both dialects, e.g. ``NEW.type = 'feature.poison'``) holds."""
    if store.dialect == "sqlite":
        ddl = [
            f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} WHEN {condition} "
            "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
        ]
    else:
        ddl = [
            f"CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF {condition} THEN RAISE EXCEPTION 'refused by a trigger'; END IF; RETURN NEW; END $$",
            f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} FOR EACH ROW "
            f"EXECUTE FUNCTION refuse_{table}()",
        ]
    async with store.engines.write.begin() as conn:
        for statement in ddl:
            await conn.exec_driver_sql(statement)
