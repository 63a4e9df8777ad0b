"""Alembic's entry point for rewardlab's migrations (run by ``annotate/migrate.py``, not alembic.ini).

The caller hands over an open connection inside its transaction (``config.attributes
["connection"]``), so a migration commits with everything else or not at all. Batch mode lets
SQLite alter tables (it copies them); PostgreSQL alters in place.
"""

from alembic import context

from annotate.store import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `rewardlab db upgrade`, which passes the connection")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
