"""The CLI run as a user runs it: subprocesses, exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def rl(*args, stdin: str | None = None, env: dict | None = None, cwd=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "rewardlab.cli", *map(str, args)],
        input=stdin, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=300,
    )


@pytest.fixture
def db(tmp_path) -> str:
    return str(tmp_path / "ws" / "rewardlab.db")


def test_users_add_list_disable(db):
    r = rl("users", "add", "alice", "--db", db, stdin="correct horse\n")
    assert r.returncode == 0, r.stderr
    r = rl("users", "add", "lead", "--admin", "--db", db, stdin="battery staple\n")
    assert r.returncode == 0, r.stderr
    r = rl("users", "list", "--db", db)
    assert r.returncode == 0
    lines = {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:]}
    assert lines["alice"][1:3] == ["annotator", "yes"]
    assert lines["lead"][1:3] == ["admin", "yes"]

    r = rl("users", "disable", "alice", "--db", db)
    assert r.returncode == 0
    r = rl("users", "list", "--db", db)
    assert [l.split()[2] for l in r.stdout.splitlines()[1:] if l.startswith("alice")] == ["no"]

    from annotate.accounts import authenticate
    from annotate.store import Store

    store = Store("sqlite:///" + db)
    assert authenticate(store, "lead", "battery staple").is_admin
    assert authenticate(store, "alice", "correct horse") is None  # disabled


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        (["users", "add", "bob"], "short\n", "password too short"),
        (["users", "add", "bad name!"], "long enough pw\n", "invalid user name"),
        (["users", "disable", "nobody"], None, "no user named 'nobody'"),
    ],
)
def test_user_errors_are_one_line(db, args, stdin, message):
    r = rl(*args, "--db", db, stdin=stdin)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and message in r.stderr and r.stderr.startswith("rewardlab: ")


def test_duplicate_user_refused(db):
    assert rl("users", "add", "alice", "--db", db, stdin="password one\n").returncode == 0
    r = rl("users", "add", "alice", "--db", db, stdin="password two\n")
    assert r.returncode == 2 and "already exists" in r.stderr


def test_unwritable_database_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    r = rl("users", "list", "--db", str(blocker / "sub" / "rewardlab.db"))
    assert r.returncode == 2
    assert r.stderr.startswith("rewardlab: ") and r.stderr.count("\n") == 1


def test_prompts_import_then_repeat_skips_duplicates(db):
    sample = REPO / "data" / "prompts.jsonl"
    n = sum(1 for line in sample.read_text().splitlines() if line.strip())
    r = rl("prompts", "import", sample, "--db", db)
    assert r.returncode == 0, r.stderr
    assert f"imported {n} prompts" in r.stdout
    r = rl("prompts", "import", sample, "--db", db)
    assert r.returncode == 0 and "imported 0 prompts" in r.stdout and f"{n} duplicates" in r.stdout


def test_pairs_import_and_export_through_cli(db, tmp_path):
    r = rl("pairs", "import", REPO / "data" / "pairs.jsonl", "--db", db)
    assert r.returncode == 0, r.stderr
    assert "imported 6 labelled pairs" in r.stdout
    out = tmp_path / "export"
    r = rl("export", "--db", db, "--out", out, "--jsonl")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["pairs_exported"] == 6
    rows = [json.loads(l) for l in (out / "preferences.jsonl").read_text().splitlines()]
    chosen = {row["prompt"]: row["chosen"] for row in rows}
    assert chosen["Translate 'thank you' into German."].strip().startswith('"Danke"')


def test_skip_invalid_lists_rejected_rows(db, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "fine"}\n{"prompt": "   "}\n{"prompt": "also fine"}\n')
    r = rl("prompts", "import", f, "--db", db)
    assert r.returncode == 2 and "row 2" in r.stderr
    r = rl("prompts", "import", f, "--db", db, "--skip-invalid")
    assert r.returncode == 0
    assert "imported 2 prompts" in r.stdout and "rejected" in r.stdout and "row 2" in r.stdout


def test_help_lists_subcommands():
    r = rl("--help")
    assert r.returncode == 0
    for cmd in ("prompts", "pairs", "generate", "annotate", "users", "export"):
        assert cmd in r.stdout
