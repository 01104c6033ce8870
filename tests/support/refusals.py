"""Make a real database refuse some rows: a trigger, on SQLite or PostgreSQL, that aborts the
insert (or update) of every row of a table matching a condition. How the tests show that one row
the database will not store does not fail the others stored with it, without mocking the store."""

from __future__ import annotations

from ingestlayer.store.store import Store


async def refuse_inserts(store: Store, table: str, condition: str) -> None:
    """From now on the database refuses rows of ``table`` for which ``condition`` (SQL over
    ``NEW``, the same in both dialects, e.g. ``NEW.type = 'feature.poison'``) holds."""
    await _refuse(store, table, condition, "INSERT")


async def refuse_updates(store: Store, table: str, condition: str) -> None:
    """From now on the database refuses to change rows of ``table`` into ones for which
    ``condition`` (SQL over ``NEW``, as for :func:`refuse_inserts`) holds."""
    await _refuse(store, table, condition, "UPDATE")


async def _refuse(store: Store, table: str, condition: str, operation: str) -> None:
    name = f"refuse_{operation.lower()}_{table}"
    if store.dialect == "sqlite":
        ddl = [
            f"CREATE TRIGGER {name} BEFORE {operation} ON {table} WHEN {condition} "
            "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
        ]
    else:
        ddl = [
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF {condition} THEN RAISE EXCEPTION 'refused by a trigger'; END IF; RETURN NEW; END $$",
            f"CREATE TRIGGER {name} BEFORE {operation} ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()",
        ]
    async with store.engines.write.begin() as conn:
        for statement in ddl:
            await conn.exec_driver_sql(statement)
