"""The annotation store on a real temporary SQLite file and PostgreSQL database: schema, accounts, assignment, imports."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter

import pytest
from sqlalchemy import func, select, text

from annotate.accounts import add_user, authenticate, disable_user, get_account
from annotate.assignment import PairFull, next_pair, progress, skip, submit_label, undo
from annotate.store import (
    SCHEMA_VERSION,
    Annotator,
    Assignment,
    Comparison,
    Label,
    Prompt,
    Store,
    text_hash,
)
from rewardlab.errors import RewardlabError

PASSWORD = "correct horse"
STORE_ENGINES = ("sqlite", "postgresql")  # each test using `store` runs on both (tests/conftest.py)


def make_pairs(store: Store, n: int, overlap: int = 1, tag: str = "generate") -> list[int]:
    """``n`` comparisons, each of a distinct one-turn prompt and two responses; their ids."""
    ids = []
    with store.write() as s:
        for i in range(n):
            messages = [{"role": "user", "content": f"question {i}?"}]
            p = Prompt(key=text_hash(json.dumps(messages)), messages=json.dumps(messages), source="test")
            s.add(p)
            s.flush()
            r1 = store.response_id_for(s, p.id, "model-x", f"first answer to {i}")
            r2 = store.response_id_for(s, p.id, "model-y", f"second answer to {i}")
            cid, created, _ = store.comparison_for(s, p.id, r1, r2, overlap=overlap, tag=tag)
            assert created
            ids.append(cid)
    return ids


def users(store: Store, *names: str):
    return [add_user(store, name, PASSWORD) for name in names]


def canonical_texts(store: Store, cid: int) -> tuple[str, str]:
    from annotate.store import Response

    with store.read() as s:
        c = s.get(Comparison, cid)
        return s.get(Response, c.response_a_id).text, s.get(Response, c.response_b_id).text


def label_rows(store: Store):
    with store.read() as s:
        return s.execute(select(Label.comparison_id, Label.annotator_id, Label.choice)).all()


# --- schema and connection ------------------------------------------------------------------------

def test_schema_version_recorded_and_mismatch_refused(tmp_path):
    path = tmp_path / "a.db"
    store = Store(f"sqlite:///{path}")
    assert store.schema_version() == SCHEMA_VERSION
    store.close()
    Store(f"sqlite:///{path}").close()  # reopening the same version is fine

    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(RewardlabError, match=f"schema version 999.*reads version {SCHEMA_VERSION}"):
        Store(f"sqlite:///{path}")


def test_sqlite_wal_and_foreign_keys(store):
    if not store.is_sqlite:
        pytest.skip("SQLite settings")
    with store.read() as s:
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1
    # Foreign keys are enforced: a label for a comparison that does not exist is refused.
    (u,) = users(store, "ann")
    with pytest.raises(Exception, match="FOREIGN KEY"):
        with store.write() as s:
            s.add(Label(comparison_id=12345, annotator_id=u.id, choice="A"))
    assert label_rows(store) == []


@pytest.mark.parametrize("under", ["file/db.sqlite", "file/sub/db.sqlite"])
def test_unwritable_path_is_a_clear_error(tmp_path, under):
    (tmp_path / "file").write_text("not a folder")  # root ignores chmod, not a file in the way
    with pytest.raises(RewardlabError, match="database"):
        Store(f"sqlite:///{tmp_path / under}")


# --- accounts -------------------------------------------------------------------------------------

def test_accounts(store):
    acc = add_user(store, "alice", PASSWORD)
    assert acc.role == "annotator" and acc.active and not acc.is_admin
    with store.read() as s:
        stored = s.scalar(select(Annotator.password_hash).where(Annotator.name == "alice"))
    algo, n, r, p, salt, digest = stored.split("$")
    assert (algo, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(bytes.fromhex(salt)) == 16 and len(bytes.fromhex(digest)) == 32
    assert PASSWORD not in stored

    assert authenticate(store, "alice", PASSWORD).name == "alice"
    assert authenticate(store, "alice", "wrong password") is None
    assert authenticate(store, "nobody", PASSWORD) is None

    with pytest.raises(RewardlabError, match="already exists"):
        add_user(store, "alice", "another password")
    with pytest.raises(RewardlabError, match="too short"):
        add_user(store, "bob", "short")
    with pytest.raises(RewardlabError, match="invalid user name"):
        add_user(store, "no spaces please", PASSWORD)

    admin = add_user(store, "root", PASSWORD, role="admin")
    assert admin.is_admin

    disable_user(store, "alice")
    assert authenticate(store, "alice", PASSWORD) is None
    assert get_account(store, "alice") is None


# --- assignment -----------------------------------------------------------------------------------

def label_everything(store, user, choice="A") -> list[int]:
    seen = []
    while (pair := next_pair(store, user)) is not None:
        seen.append(pair["comparison_id"])
        submit_label(store, user, pair["comparison_id"], choice)
    return seen


def test_nobody_sees_a_pair_twice_and_overlap_holds(store):
    cids = make_pairs(store, 4, overlap=2)
    a, b, c = users(store, "a", "b", "c")
    seen_a = label_everything(store, a)
    assert sorted(seen_a) == cids  # each once
    assert next_pair(store, a) is None
    seen_b = label_everything(store, b)
    assert sorted(seen_b) == cids
    assert label_everything(store, c) == []  # every pair has its 2 labels
    with store.read() as s:
        assert set(s.scalars(select(Comparison.label_count))) == {2}
    counts = Counter((cid, aid) for cid, aid, _ in label_rows(store))
    assert set(counts.values()) == {1} and len(counts) == 8


def test_open_pair_is_held_back_from_others(store):
    make_pairs(store, 2, overlap=1)
    a, b = users(store, "a", "b")
    pa, pb = next_pair(store, a), next_pair(store, b)
    assert pa["comparison_id"] != pb["comparison_id"]
    assert next_pair(store, a)["comparison_id"] == pa["comparison_id"]  # a reload shows the same
    c = users(store, "c")[0]
    assert next_pair(store, c) is None  # both leased


def test_race_for_last_slot_second_submit_is_refused(store):
    (cid,) = make_pairs(store, 1, overlap=1)
    a, b = users(store, "a", "b")
    # Leases of 0 minutes expire at once, so both annotators hold the one pair.
    assert next_pair(store, a, lease_minutes=0)["comparison_id"] == cid
    assert next_pair(store, b, lease_minutes=0)["comparison_id"] == cid
    submit_label(store, b, cid, "A", strength="clear")
    with pytest.raises(PairFull):
        submit_label(store, a, cid, "B")
    rows = label_rows(store)
    assert [(r.comparison_id, r.annotator_id) for r in rows] == [(cid, b.id)]
    with store.read() as s:
        assert s.get(Comparison, cid).label_count == 1
        assert s.get(Assignment, (cid, a.id)).status == "skipped"
    assert next_pair(store, a) is None
    with pytest.raises(RewardlabError, match="already labelled"):
        submit_label(store, b, cid, "B")


def test_labels_are_stored_canonically(store):
    cids = make_pairs(store, 6, overlap=1)
    (u,) = users(store, "u")
    swapped_seen = set()
    for _ in cids:
        pair = next_pair(store, u)
        a_text, _ = canonical_texts(store, pair["comparison_id"])
        swapped = pair["response_a"] != a_text
        swapped_seen.add(swapped)
        submit_label(store, u, pair["comparison_id"], "A")  # prefer what is shown left
        with store.read() as s:
            choice = s.scalar(select(Label.choice).where(Label.comparison_id == pair["comparison_id"]))
        assert choice == ("B" if swapped else "A")


def test_undo_restores_the_pair_in_the_same_order(store):
    make_pairs(store, 3, overlap=1)
    (u,) = users(store, "u")
    assert undo(store, u) is None
    first = next_pair(store, u)
    submit_label(store, u, first["comparison_id"], "B", strength="slight", note="close call")
    second = next_pair(store, u)  # open when undo is pressed: goes back to the pool
    back = undo(store, u)
    assert back == first
    assert label_rows(store) == []
    with store.read() as s:
        assert s.get(Comparison, first["comparison_id"]).label_count == 0
        assert s.get(Assignment, (second["comparison_id"], u.id)) is None
    assert next_pair(store, u) == first  # still current after a reload
    submit_label(store, u, first["comparison_id"], "A")
    assert progress(store, u) == {"done": 1, "remaining": 2}


def test_skip(store):
    cids = make_pairs(store, 2, overlap=1)
    a, b = users(store, "a", "b")
    pair = next_pair(store, a)
    skip(store, a, pair["comparison_id"])
    with pytest.raises(RewardlabError, match="not open"):
        skip(store, a, pair["comparison_id"])
    nxt = next_pair(store, a)
    assert nxt["comparison_id"] != pair["comparison_id"]
    submit_label(store, a, nxt["comparison_id"], "tie")
    assert next_pair(store, a) is None  # the skipped pair never comes back to a
    assert next_pair(store, b)["comparison_id"] == pair["comparison_id"]  # but b gets it
    assert sorted(cids) == sorted([pair["comparison_id"], nxt["comparison_id"]])
    (c,) = users(store, "c")
    with pytest.raises(RewardlabError, match="not shown to you"):
        submit_label(store, c, pair["comparison_id"], "A")


def test_progress_counts(store):
    make_pairs(store, 5, overlap=2)
    a, b = users(store, "a", "b")
    assert progress(store, a) == {"done": 0, "remaining": 5}
    for _ in range(3):
        p = next_pair(store, a)
        submit_label(store, a, p["comparison_id"], "A")
    assert progress(store, a) == {"done": 3, "remaining": 2}
    assert progress(store, b) == {"done": 0, "remaining": 5}
    p = next_pair(store, a)
    skip(store, a, p["comparison_id"])
    assert progress(store, a) == {"done": 3, "remaining": 1}


def test_bad_label_values_are_refused(store):
    (cid,) = make_pairs(store, 1)
    (u,) = users(store, "u")
    next_pair(store, u)
    with pytest.raises(RewardlabError, match="choice must be"):
        submit_label(store, u, cid, "C")
    with pytest.raises(RewardlabError, match="strength must be"):
        submit_label(store, u, cid, "A", strength="huge")
    with pytest.raises(RewardlabError, match="note"):
        submit_label(store, u, cid, "A", note="x" * 5000)
    assert label_rows(store) == []


def test_many_threads_label_concurrently(store):
    overlap, n_pairs, n_threads = 3, 24, 8
    make_pairs(store, n_pairs, overlap=overlap)
    accounts = users(store, *[f"t{i}" for i in range(n_threads)])
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def work(user):
        try:
            barrier.wait()
            while (pair := next_pair(store, user)) is not None:
                submit_label(store, user, pair["comparison_id"], "A")
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(u,)) for u in accounts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    per_pair = Counter(cid for cid, _, _ in label_rows(store))
    assert len(per_pair) == n_pairs and set(per_pair.values()) == {overlap}
    with store.read() as s:
        assert set(s.scalars(select(Comparison.label_count))) == {overlap}
        assert s.scalar(select(func.count()).select_from(Assignment).where(Assignment.status == "open")) == 0


# --- imports --------------------------------------------------------------------------------------

def write_jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def n_prompts(store) -> int:
    with store.read() as s:
        return s.scalar(select(func.count()).select_from(Prompt))


def test_import_prompts_skips_duplicates(store, tmp_path):
    from annotate.importing import import_prompts

    path = write_jsonl(tmp_path / "set.jsonl", [
        {"prompt": "What is tea?"},
        {"prompt": "Why is the sky blue?", "category": "science"},
        {"prompt": "What is tea?  "},  # the same prompt once normalized
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                      {"role": "user", "content": "Tell me a joke."}]},
    ])
    assert import_prompts(store, path) == {"added": 3, "duplicates": 1, "rejected": []}
    assert import_prompts(store, path) == {"added": 0, "duplicates": 4, "rejected": []}
    with store.read() as s:
        rows = {p.messages: (p.source, json.loads(p.meta)) for p in s.scalars(select(Prompt))}
    assert rows[json.dumps([{"role": "user", "content": "Why is the sky blue?"}])] == ("set", {"category": "science"})


def test_import_prompts_bad_row_imports_nothing(store, tmp_path):
    from annotate.importing import import_prompts

    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "fine"}, {"prompt": "also fine"}, '{"prompt": '])
    with pytest.raises(RewardlabError, match=r"bad\.jsonl:row 3: invalid JSON"):
        import_prompts(store, path)
    assert n_prompts(store) == 0
    r = import_prompts(store, path, skip_invalid=True)
    assert r["added"] == 2 and [loc for loc, _ in r["rejected"]] == [f"{path}:row 3"]


def test_add_prompts_is_one_transaction(store):
    from rewardlab.formats import PromptRecord

    good = PromptRecord(messages=[{"role": "user", "content": "fine"}])
    # Fails while being written (not JSON-serializable), after the first record was added.
    bad = PromptRecord(messages=[{"role": "user", "content": "broken", "extra": object()}])
    with pytest.raises(TypeError):
        store.add_prompts([good, bad])
    assert n_prompts(store) == 0


HH_ROWS = [
    {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.", "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5."},
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a colour.\n\nAssistant: Blue.",
     "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a colour.\n\nAssistant: Dog."},
    {"chosen": "\n\nHuman: Say yes.\n\nAssistant: Yes.", "rejected": "\n\nHuman: Say yes.\n\nAssistant: No."},
]


def test_import_pairs_owned_by_import_account_and_never_shown(store, tmp_path):
    from annotate.importing import import_pairs

    path = write_jsonl(tmp_path / "hh.jsonl", HH_ROWS)
    assert import_pairs(store, path) == {"added": 3, "duplicates": 0, "rejected": []}
    assert import_pairs(store, path)["duplicates"] == 3
    with store.read() as s:
        owner = s.scalar(select(Annotator).where(Annotator.name == "import:hh"))
        assert owner is not None and not owner.active and owner.password_hash is None
        labels = s.scalars(select(Label)).all()
        assert len(labels) == 3 and {l.annotator_id for l in labels} == {owner.id}
        comps = s.scalars(select(Comparison)).all()
        assert {(c.overlap, c.label_count, c.tag) for c in comps} == {(1, 1, "import:hh")}
    # chosen is canonical A or B as stored, never lost
    for label in labels:
        a_text, b_text = canonical_texts(store, label.comparison_id)
        chosen = a_text if label.choice == "A" else b_text
        assert chosen in {"4.", "Blue.", "Yes."}
    (u,) = users(store, "u")
    assert next_pair(store, u) is None
    assert progress(store, u) == {"done": 0, "remaining": 0}
    assert authenticate(store, "import:hh", "") is None
