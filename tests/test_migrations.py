"""Schema migrations on real SQLite files and PostgreSQL databases: a database of the previous
schema version, with data in it, upgraded by ``rewardlab db upgrade``; new and old databases at
start; the migrated schema against the models."""

from __future__ import annotations

import threading

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text

import annotate.store as store_module
from annotate.accounts import authenticate
from annotate.assignment import next_pair, submit_label
from annotate.export import export
from annotate.migrate import alembic_config, head_revision, revision_of, status
from annotate.store import SCHEMA_VERSION, Base, Label, Store
from rewardlab.cli import main

STORE_ENGINES = ("sqlite", "postgresql")  # `db_url` runs each test on both (tests/conftest.py)
PREVIOUS = max(1, SCHEMA_VERSION - 1)  # the version before the newest migration (1 while the baseline is newest)
PASSWORD = "correct horse"


def build_previous(url: str, with_alembic_table: bool) -> None:
    """A database at schema version PREVIOUS holding one labelled pair, one open pair and an
    annotator, written with plain SQL as that version's code wrote it. Without the Alembic table it
    is a database made before migrations existed."""
    from annotate.accounts import hash_password

    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision_of(PREVIOUS))
        if not with_alembic_table:
            conn.execute(text("DROP TABLE alembic_version"))
        now = "2026-01-02 03:04:05"
        conn.execute(text("INSERT INTO annotators (id, name, role, password_hash, active, created_at) VALUES "
                          "(1, 'ann', 'annotator', :h, true, :t), (2, 'bob', 'annotator', :h, true, :t)"),
                     {"h": hash_password(PASSWORD), "t": now})
        for i in (1, 2):
            conn.execute(text("INSERT INTO prompts (id, key, messages, source, meta, created_at) VALUES "
                              "(:i, :k, :m, 'old', '{}', :t)"),
                         {"i": i, "k": f"{i:064d}", "m": f'[{{"role": "user", "content": "question {i}?"}}]',
                          "t": now})
            for j, model in ((2 * i - 1, "x"), (2 * i, "y")):
                conn.execute(text("INSERT INTO responses (id, prompt_id, model, settings, text, text_hash, "
                                  "created_at) VALUES (:j, :i, :m, '{}', :txt, :h, :t)"),
                             {"j": j, "i": i, "m": model, "txt": f"answer {j}", "h": f"{j:064d}", "t": now})
            conn.execute(text("INSERT INTO comparisons (id, prompt_id, response_a_id, response_b_id, overlap, "
                              "label_count, tag, created_at) VALUES (:i, :i, :a, :b, 2, :n, 'generate', :t)"),
                         {"i": i, "a": 2 * i - 1, "b": 2 * i, "n": 1 if i == 1 else 0, "t": now})
        conn.execute(text("INSERT INTO assignments (comparison_id, annotator_id, swapped, status, shown_at, "
                          "expires_at) VALUES (1, 1, false, 'done', :t, :t)"), {"t": now})
        conn.execute(text("INSERT INTO labels (id, comparison_id, annotator_id, choice, strength, note, seconds, "
                          "created_at, updated_at) VALUES (1, 1, 1, 'A', 'clear', 'kept', 4.5, :t, :t)"),
                     {"t": now})
        if conn.dialect.name == "postgresql":  # explicit ids above: move the sequences past them
            for table in ("annotators", "prompts", "responses", "comparisons", "labels"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                  f"(SELECT max(id) FROM {table}))"))
    engine.dispose()


def schema_diffs(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()


@pytest.mark.parametrize("with_alembic_table", [True, False], ids=["migrated", "pre-migrations"])
def test_upgrade_from_previous_version_keeps_the_data(db_url, with_alembic_table, capsys):
    build_previous(db_url, with_alembic_table)
    assert status(db_url)["schema_version"] == PREVIOUS

    assert main(["db", "upgrade", "--db", db_url]) == 0
    out = capsys.readouterr().out
    assert (f"from version {PREVIOUS} to {SCHEMA_VERSION}" in out) or (
        PREVIOUS == SCHEMA_VERSION and "already current" in out)
    st = status(db_url)
    assert (st["schema_version"], st["revision"]) == (SCHEMA_VERSION, head_revision())
    assert schema_diffs(db_url) == []

    store = Store(db_url)  # opens without complaint, and everything is still there and usable
    try:
        with store.read() as s:
            [label] = s.query(Label).all()
            assert (label.choice, label.strength, label.note, label.seconds) == ("A", "clear", "kept", 4.5)
        bob = authenticate(store, "bob", PASSWORD)
        pair = next_pair(store, bob)
        assert pair["comparison_id"] == 1  # the half-labelled pair first (overlap 2)
        submit_label(store, bob, 1, "B")
        ann = authenticate(store, "ann", PASSWORD)
        assert next_pair(store, ann)["comparison_id"] == 2
    finally:
        store.close()

    assert main(["db", "upgrade", "--db", db_url]) == 0  # again: nothing to do
    assert "already current" in capsys.readouterr().out


def test_empty_database_upgraded_equals_a_new_one(db_url, tmp_path):
    assert main(["db", "upgrade", "--db", db_url]) == 0
    assert schema_diffs(db_url) == []
    store = Store(db_url)
    assert store.schema_version() == SCHEMA_VERSION
    store.close()


def test_new_database_is_stamped_at_the_newest_revision(store):
    st = status(store.url)
    assert st == {**st, "schema_version": SCHEMA_VERSION, "revision": head_revision()}
    assert schema_diffs(store.url) == []


def test_older_schema_is_refused_at_start_with_the_command_to_run(db_url, monkeypatch, capsys):
    build_previous(db_url, with_alembic_table=True)
    # This code one version ahead of the database: what a user meets after upgrading rewardlab.
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", PREVIOUS + 1)
    assert main(["users", "list", "--db", db_url]) == 2
    err = capsys.readouterr().err
    assert f"schema version {PREVIOUS}; this rewardlab reads version {PREVIOUS + 1}" in err
    assert "rewardlab db upgrade --db" in err
    assert status(db_url)["schema_version"] == PREVIOUS  # nothing was changed


def test_newer_schema_is_not_touched(db_url, capsys):
    Store(db_url).close()
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE meta SET value = '999' WHERE key = 'schema_version'"))
    engine.dispose()
    assert main(["db", "upgrade", "--db", db_url]) == 2
    assert "newer than this rewardlab" in capsys.readouterr().err
    assert main(["users", "list", "--db", db_url]) == 2
    assert "upgrade rewardlab" in capsys.readouterr().err


def test_several_processes_creating_one_new_database_at_once(db_url):
    # Several app processes started together on an empty database: one builds it, the others wait.
    errors, stores = [], []
    barrier = threading.Barrier(4)

    def open_store():
        try:
            barrier.wait()
            stores.append(Store(db_url))
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for s in stores:
        s.close()
    assert errors == [] and len(stores) == 4
    assert status(db_url)["revision"] == head_revision()


def test_export_after_upgrade(db_url, tmp_path):
    build_previous(db_url, with_alembic_table=False)
    assert main(["db", "upgrade", "--db", db_url]) == 0
    store = Store(db_url)
    try:
        export(store, tmp_path / "out")
    finally:
        store.close()
    from datasets import load_from_disk

    [row] = load_from_disk(str(tmp_path / "out"))  # the one labelled pair, chosen = canonical A
    assert (row["chosen"].strip(), row["rejected"].strip()) == ("answer 1", "answer 2")


def test_unreachable_server_is_one_clear_line(capsys):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql+psycopg://nobody@127.0.0.1:{port}/nothing"
    for argv in (["db", "upgrade", "--db", url], ["db", "status", "--db", url], ["users", "list", "--db", url]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("rewardlab: cannot open database"), err
        assert "is the server running" in err


def test_version_1_with_tables_added_on_start_by_earlier_builds(db_url):
    # Between the sessions/jobs tables and migrations, rewardlab added them to version-1 databases
    # on start (create_all): such a database upgrades too, keeping them.
    from annotate.store import Job, LoginFailure, WebSession

    build_previous(db_url, with_alembic_table=False)
    engine = create_engine(db_url)
    Base.metadata.create_all(engine, tables=[WebSession.__table__, LoginFailure.__table__, Job.__table__])
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO login_failures (key, at) VALUES ('user:x', '2026-01-01 00:00:00')"))
    engine.dispose()
    assert main(["db", "upgrade", "--db", db_url]) == 0
    assert status(db_url)["schema_version"] == SCHEMA_VERSION
    assert schema_diffs(db_url) == []
    engine = create_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM login_failures")).scalar() == 1
    engine.dispose()
