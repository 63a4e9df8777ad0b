"""Schema versions and upgrades of the annotation store, through Alembic.

The schema version is a whole number, recorded in the ``meta`` table (``schema_version``) and
known to the code as ``annotate.store.SCHEMA_VERSION``. Migration ``NNNN`` (Alembic revision id,
file ``annotate/migrations/versions/NNNN_*.py``) takes a database from version NNNN-1 to NNNN and
writes the new number into ``meta``; ``0001`` is the baseline. Alembic also keeps its own
``alembic_version`` table.

- A new, empty database is built straight from the models and stamped at the newest revision
  (``Store`` does it); an old one is never changed behind anyone's back: ``Store`` refuses it and
  names the command that upgrades it, ``rewardlab db upgrade``. With several app processes on one
  database, an upgrade is a step someone takes once, after a backup, with the apps stopped.
- Databases made before migrations existed have ``schema_version`` 1 and no ``alembic_version``:
  an upgrade first records them as revision 0001.

Adding a table or column: change the models in ``annotate/store.py``, bump ``SCHEMA_VERSION``,
and add ``versions/NNNN_what.py`` (``down_revision`` = the previous id) that makes the same change
and sets ``meta.schema_version``; ``tests/test_migrations.py`` then checks that upgrading an old
database with data in it gives exactly the models' schema.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import OperationalError

from annotate.store import SCHEMA_VERSION, Store
from rewardlab.errors import RewardlabError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
PG_LOCK_ID = 72_790_001  # pg_advisory_xact_lock key: one schema change at a time per database


def revision_of(version: int) -> str:
    return f"{version:04d}"


def alembic_config(connection=None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def lock_schema(conn) -> None:
    """Serialize schema work between processes (PostgreSQL; SQLite's write lock already does)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_ID})


def stamp_head(conn) -> None:
    """Record a database built from the current models as being at the newest revision."""
    command.stamp(alembic_config(conn), "head")


def read_version(conn) -> tuple[int | None, str | None]:
    """(``meta.schema_version`` or None, Alembic revision or None) of the connected database."""
    tables = set(inspect(conn).get_table_names())
    version = None
    if "meta" in tables:
        value = conn.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar()
        version = int(value) if value is not None and str(value).isdigit() else None
    revision = MigrationContext.configure(conn).get_current_revision() if "alembic_version" in tables else None
    return version, revision


def status(url: str) -> dict:
    store = Store(url, init_schema=False)
    try:
        with store.engine.connect() as conn:
            version, revision = read_version(conn)
    except OperationalError as exc:
        raise store.open_error(exc) from None
    finally:
        store.close()
    return {"database": store.shown_url, "schema_version": version, "revision": revision,
            "code_schema_version": SCHEMA_VERSION, "head_revision": head_revision()}


def upgrade(url: str) -> tuple[int | None, int]:
    """Bring the database at ``url`` to the newest schema in one transaction; (from, to) versions.

    An empty database gets the whole schema through the migrations.
    """
    store = Store(url, init_schema=False)
    try:
        with store._write_lock_ctx(), store._write_engine.begin() as conn:
            lock_schema(conn)
            tables = set(inspect(conn).get_table_names())
            version, revision = read_version(conn)
            if tables & {"annotators", "labels", "comparisons"} and version is None:
                raise RewardlabError(
                    f"database {store.shown_url} has rewardlab tables but no schema version in 'meta': "
                    "not upgrading it; restore it from a backup"
                )
            if version is not None and version > SCHEMA_VERSION:
                raise RewardlabError(
                    f"database {store.shown_url} has schema version {version}, newer than this rewardlab "
                    f"({SCHEMA_VERSION}): upgrade rewardlab instead"
                )
            cfg = alembic_config(conn)
            if version is not None and revision is None:
                command.stamp(cfg, revision_of(version))  # made before migrations existed
            command.upgrade(cfg, "head")
            new_version, _ = read_version(conn)
    except OperationalError as exc:
        raise store.open_error(exc) from None
    finally:
        store.close()
    return version, new_version
