"""Per-status market totals kept by database triggers, so a list's ``meta.total`` is O(1).

``COUNT(*)`` over one status of 100,000 markets costs milliseconds on every list
request; the ``market_status_counts`` table holds the same number, changed in the same
transaction as the rows themselves by triggers, so it is exact for any write path: the
ORM, bulk inserts, raw SQL (on SQLite, but ``INSERT OR REPLACE`` over an existing id,
which runs no delete trigger unless ``recursive_triggers`` is on; nothing here uses it). The price is a row lock on the status's counter for the rest
of the writing transaction (writers of one status queue behind each other at commit).

The DDL is installed by migration 0002 and, for ``create_all``, by the ``after_create``
hook of the counters table.
"""

from __future__ import annotations

import sqlalchemy as sa

_POSTGRESQL = [
    """
    CREATE OR REPLACE FUNCTION market_status_counts_apply() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'TRUNCATE' THEN
            UPDATE market_status_counts SET total = 0;
        ELSIF TG_OP = 'INSERT' THEN
            INSERT INTO market_status_counts (status, total)
                SELECT status, count(*) FROM new_rows GROUP BY status ORDER BY status
                ON CONFLICT (status) DO UPDATE SET total = market_status_counts.total + EXCLUDED.total;
        ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO market_status_counts (status, total)
                SELECT status, -count(*) FROM old_rows GROUP BY status ORDER BY status
                ON CONFLICT (status) DO UPDATE SET total = market_status_counts.total + EXCLUDED.total;
        ELSE
            -- Only a change of status moves a row between counters; other updates
            -- (volume, name, ...) net to zero and lock nothing.
            INSERT INTO market_status_counts (status, total)
                SELECT status, sum(n) FROM (
                    SELECT status, count(*) AS n FROM new_rows GROUP BY status
                    UNION ALL
                    SELECT status, -count(*) AS n FROM old_rows GROUP BY status
                ) AS moved
                GROUP BY status HAVING sum(n) <> 0 ORDER BY status
                ON CONFLICT (status) DO UPDATE SET total = market_status_counts.total + EXCLUDED.total;
        END IF;
        RETURN NULL;
    END
    $$
    """,
    "CREATE TRIGGER markets_count_insert AFTER INSERT ON markets REFERENCING NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION market_status_counts_apply()",
    "CREATE TRIGGER markets_count_update AFTER UPDATE ON markets"
    " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION market_status_counts_apply()",
    "CREATE TRIGGER markets_count_delete AFTER DELETE ON markets REFERENCING OLD TABLE AS old_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION market_status_counts_apply()",
    "CREATE TRIGGER markets_count_truncate AFTER TRUNCATE ON markets"
    " FOR EACH STATEMENT EXECUTE FUNCTION market_status_counts_apply()",
]

_SQLITE = [
    """
    CREATE TRIGGER markets_count_insert AFTER INSERT ON markets BEGIN
        INSERT INTO market_status_counts (status, total) VALUES (NEW.status, 1)
            ON CONFLICT (status) DO UPDATE SET total = total + 1;
    END
    """,
    """
    CREATE TRIGGER markets_count_delete AFTER DELETE ON markets BEGIN
        INSERT INTO market_status_counts (status, total) VALUES (OLD.status, -1)
            ON CONFLICT (status) DO UPDATE SET total = total - 1;
    END
    """,
    """
    CREATE TRIGGER markets_count_update AFTER UPDATE OF status ON markets
    WHEN OLD.status IS NOT NEW.status BEGIN
        INSERT INTO market_status_counts (status, total) VALUES (OLD.status, -1)
            ON CONFLICT (status) DO UPDATE SET total = total - 1;
        INSERT INTO market_status_counts (status, total) VALUES (NEW.status, 1)
            ON CONFLICT (status) DO UPDATE SET total = total + 1;
    END
    """,
]

_DROP = {
    "postgresql": [
        *(
            f"DROP TRIGGER IF EXISTS {name} ON markets"
            for name in (
                "markets_count_insert",
                "markets_count_update",
                "markets_count_delete",
                "markets_count_truncate",
            )
        ),
        "DROP FUNCTION IF EXISTS market_status_counts_apply()",
    ],
    "sqlite": [
        f"DROP TRIGGER IF EXISTS {name}"
        for name in ("markets_count_insert", "markets_count_update", "markets_count_delete")
    ],
}


def install_market_counters(connection: sa.Connection) -> None:
    """Create the triggers and fill the counters from the rows already there.

    :raises RuntimeError: a database other than PostgreSQL or SQLite.
    """
    dialect = connection.dialect.name
    statements = {"postgresql": _POSTGRESQL, "sqlite": _SQLITE}.get(dialect)
    if statements is None:
        raise RuntimeError(f"market counters support PostgreSQL and SQLite, not {dialect}")
    for statement in statements:
        connection.exec_driver_sql(statement)
    connection.exec_driver_sql("DELETE FROM market_status_counts")
    connection.exec_driver_sql(
        "INSERT INTO market_status_counts (status, total) SELECT status, count(*) FROM markets GROUP BY status"
    )


def remove_market_counters(connection: sa.Connection) -> None:
    """Drop the triggers (and the PostgreSQL function) again."""
    for statement in _DROP.get(connection.dialect.name, []):
        connection.exec_driver_sql(statement)
