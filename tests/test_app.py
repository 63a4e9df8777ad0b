"""The annotation app, launched for real in-process and driven through gradio_client."""

from __future__ import annotations

import random
import socket
import threading
from collections import Counter
from contextlib import contextmanager
from datetime import timedelta

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError, AuthenticationError
from sqlalchemy import func, select, update

from annotate.accounts import add_user, disable_user
from annotate.app import build_app, launch_kwargs
from annotate.store import Annotator, Assignment, Comparison, Label, Response, Store, utcnow
from rewardlab.formats import PromptRecord
from rewardlab.workspace import WorkspaceConfig

PASSWORD = "correct horse"
STORE_ENGINES = ("sqlite", "postgresql")  # each test using `store` runs on both (tests/conftest.py)
HOSTILE_A = "<script>window.__pwned=1</script> Paris."
HOSTILE_B = '<img src=x onerror="window.__pwned=2"> It is Paris.'


def fill(store: Store, n: int = 8, overlap: int = 1, hostile: bool = True) -> list[int]:
    """``n`` comparisons (the last with HTML/JS in both responses) and users alice, bob, root."""
    ids = []
    with store.write() as s:
        for i in range(n):
            if hostile and i == n - 1:
                messages = [
                    {"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": "What is the capital of <b>France</b>?"},
                    {"role": "assistant", "content": "Which France?"},
                    {"role": "user", "content": "The country."},
                ]
                texts = (HOSTILE_A, HOSTILE_B)
            else:
                messages = [{"role": "user", "content": f"Question number {i}?"}]
                texts = (f"first answer to {i}", f"second answer to {i}")
            pid = store.prompt_id_for(s, PromptRecord(messages=messages), source="test")
            r1 = store.response_id_for(s, pid, "model-x", texts[0])
            r2 = store.response_id_for(s, pid, "model-y", texts[1])
            cid, _, _ = store.comparison_for(s, pid, r1, r2, overlap=overlap, tag="test")
            ids.append(cid)
    add_user(store, "alice", PASSWORD)
    add_user(store, "bob", PASSWORD)
    add_user(store, "root", PASSWORD, role="admin")
    return ids


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running(store: Store, config: WorkspaceConfig | None = None):
    config = config or WorkspaceConfig()
    demo = build_app(store, config)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                **launch_kwargs(store, config))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture
def clients():
    """login(url, name) -> Client; all closed at the end (fast once their server has stopped)."""
    made = []

    def login(url: str, name: str) -> Client:
        c = Client(url, auth=(name, PASSWORD), verbose=False)
        made.append(c)
        return c

    yield login
    for c in made:
        c.close()


@pytest.fixture
def app(store, clients):  # after `clients`, so the server stops before they close
    """(url, store, comparison ids): 8 comparisons with overlap 1, users alice, bob, root."""
    ids = fill(store)
    with running(store) as url:
        yield url, store, ids


def call(client: Client, endpoint: str, **kwargs):
    return client.predict(api_name=f"/{endpoint}", **kwargs)


def label(client: Client, pair: dict, choice: str = "A", strength=None, note: str = ""):
    return call(client, "submit_label", comparison_id=pair["comparison_id"], choice=choice,
                strength=strength, note=note)


def labels_of(store: Store):
    with store.read() as s:
        return s.execute(
            select(Label.comparison_id, Annotator.name, Label.choice, Label.strength, Label.note)
            .join(Annotator, Annotator.id == Label.annotator_id)
        ).all()


# --- login --------------------------------------------------------------------------------------

def test_login_is_required_and_checked(app):
    url, store, _ = app
    with pytest.raises(AuthenticationError):
        Client(url, verbose=False)
    with pytest.raises(ValueError):
        Client(url, auth=("alice", "wrong password"), verbose=False)
    with pytest.raises(ValueError):
        Client(url, auth=("nobody", PASSWORD), verbose=False)


def test_disabled_account_is_refused_at_once(app, clients):
    url, store, _ = app
    alice = clients(url, "alice")
    assert call(alice, "next_pair") is not None
    disable_user(store, "alice")
    with pytest.raises(httpx.HTTPStatusError, match="401"):  # her session ended with the account
        call(alice, "next_pair")
    with pytest.raises(ValueError):
        Client(url, auth=("alice", PASSWORD), verbose=False)


# --- labelling ----------------------------------------------------------------------------------

@pytest.mark.parametrize("overlap", [1, 2])
def test_two_annotators_at_once_fill_every_pair_exactly(store, clients, overlap):
    ids = fill(store, n=8, overlap=overlap)
    seen: dict[str, list[int]] = {}
    errors = []
    with running(store, WorkspaceConfig(overlap=overlap)) as url:
        def work(name: str):
            try:
                client = clients(url, name)
                got = seen.setdefault(name, [])
                pair = call(client, "next_pair")
                while pair is not None:
                    got.append(pair["comparison_id"])
                    pair = label(client, pair, random.choice(["A", "B", "tie", "both_bad"]))
            except Exception as exc:  # reported below, with the thread's name
                errors.append((name, exc))

        threads = [threading.Thread(target=work, args=(n,)) for n in ("alice", "bob")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors
    for name, got in seen.items():
        assert len(got) == len(set(got)), f"{name} was shown a pair twice"
    rows = labels_of(store)
    per_pair = Counter(cid for cid, *_ in rows)
    assert per_pair == {cid: overlap for cid in ids}
    assert len({(cid, who) for cid, who, *_ in rows}) == len(rows)  # nobody labelled a pair twice
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(Comparison)
                        .where(Comparison.label_count != Comparison.overlap)) == 0
    if overlap == 1:
        assert sum(len(g) for g in seen.values()) == len(ids)
    else:
        assert all(sorted(g) == sorted(ids) for g in seen.values())


def test_next_pair_is_stable_until_labelled_then_different(app, clients):
    url, store, _ = app
    alice = clients(url, "alice")
    first = call(alice, "next_pair")
    assert set(first) >= {"comparison_id", "prompt", "messages", "response_a", "response_b", "progress"}
    assert first["progress"] == {"done": 0, "remaining": 8}
    assert call(alice, "next_pair")["comparison_id"] == first["comparison_id"]
    second = label(alice, first, "B", "clear", "good one")
    assert second["comparison_id"] != first["comparison_id"]
    assert second["progress"] == {"done": 1, "remaining": 7}
    assert call(alice, "progress") == {"done": 1, "remaining": 7}
    [(cid, who, _, strength, note)] = labels_of(store)
    assert (cid, who, strength, note) == (first["comparison_id"], "alice", "clear", "good one")


def test_undo_returns_the_pair_and_it_is_labelled_again(app, clients):
    url, store, _ = app
    alice = clients(url, "alice")
    first = call(alice, "next_pair")
    label(alice, first, "A")
    undone = call(alice, "undo")
    assert undone["comparison_id"] == first["comparison_id"]
    assert (undone["response_a"], undone["response_b"]) == (first["response_a"], first["response_b"])
    assert labels_of(store) == [] and undone["progress"]["done"] == 0
    assert call(alice, "next_pair")["comparison_id"] == first["comparison_id"]
    label(alice, undone, "tie")
    assert [(c, ch) for c, _, ch, *_ in labels_of(store)] == [(first["comparison_id"], "tie")]
    assert call(alice, "undo")["comparison_id"] == first["comparison_id"]
    label(alice, first, "both_bad")
    bob = clients(url, "bob")
    assert call(bob, "undo") is None  # nothing of his to undo


def test_skip_moves_on_and_never_shows_the_pair_again(app, clients):
    url, store, ids = app
    alice = clients(url, "alice")
    first = call(alice, "next_pair")
    second = call(alice, "skip", comparison_id=first["comparison_id"])
    assert second["comparison_id"] != first["comparison_id"]
    shown = [second["comparison_id"]]
    pair = label(alice, second)
    while pair is not None:
        shown.append(pair["comparison_id"])
        pair = label(alice, pair)
    assert first["comparison_id"] not in shown and len(shown) == len(ids) - 1
    bob = clients(url, "bob")
    assert call(bob, "next_pair")["comparison_id"] == first["comparison_id"]  # released for others
    with pytest.raises(AppError, match="not open"):
        call(alice, "skip", comparison_id=first["comparison_id"])


def test_inputs_are_validated(app, clients):
    url, store, ids = app
    alice = clients(url, "alice")
    pair = call(alice, "next_pair")
    cid = pair["comparison_id"]
    bad = [
        (dict(comparison_id=cid, choice="C", strength=None, note=""), "choice must be one of"),
        (dict(comparison_id=cid, choice="a", strength=None, note=""), "choice must be one of"),
        (dict(comparison_id=cid, choice="A", strength="huge", note=""), "strength must be one of"),
        (dict(comparison_id="one", choice="A", strength=None, note=""), "whole number"),
        (dict(comparison_id=1.5, choice="A", strength=None, note=""), "whole number"),
        (dict(comparison_id=cid, choice="A", strength=None, note="x" * 2001), "at most 2000"),
        (dict(comparison_id=cid, choice="A", strength=None, note=7), "note must be text"),
        (dict(comparison_id=max(ids) + 100, choice="A", strength=None, note=""), "not shown to you"),
    ]
    for kwargs, message in bad:
        with pytest.raises(AppError, match=message):
            call(alice, "submit_label", **kwargs)
    with pytest.raises(AppError, match="whole number"):
        call(alice, "skip", comparison_id="x")
    assert labels_of(store) == []
    label(alice, pair, "A", "", "")  # an empty strength means none
    with pytest.raises(AppError, match="already labelled"):
        label(alice, pair, "B")
    [(_, _, choice, strength, _)] = labels_of(store)
    assert choice in ("A", "B") and strength is None


def test_labels_are_stored_canonically(app, clients):
    url, store, _ = app
    random.seed(3)  # the app draws the left/right order from `random`
    alice = clients(url, "alice")
    pair, shown = call(alice, "next_pair"), {}
    while pair is not None:
        shown[pair["comparison_id"]] = pair["response_a"]
        pair = label(alice, pair, "A")
    with store.read() as s:
        rows = s.execute(
            select(Label.comparison_id, Label.choice, Assignment.swapped, Comparison.response_a_id,
                   Comparison.response_b_id)
            .join(Comparison, Comparison.id == Label.comparison_id)
            .join(Assignment, (Assignment.comparison_id == Label.comparison_id)
                  & (Assignment.annotator_id == Label.annotator_id))
        ).all()
        assert {r.swapped for r in rows} == {True, False}  # both orders were shown
        for cid, choice, swapped, ra, rb in rows:
            assert choice == ("B" if swapped else "A")
            chosen = s.get(Response, ra if choice == "A" else rb)
            assert chosen.text == shown[cid]  # the stored choice points at what was shown as A


def test_pair_filled_by_others_gives_the_next_pair(app, clients):
    url, store, _ = app
    alice, bob = clients(url, "alice"), clients(url, "bob")
    pair = call(alice, "next_pair")
    with store.write() as s:  # alice's lease runs out; bob gets the pair and labels it
        s.execute(update(Assignment).values(expires_at=utcnow() - timedelta(minutes=1)))
    bobs = call(bob, "next_pair")
    assert bobs["comparison_id"] == pair["comparison_id"]
    label(bob, bobs, "B")
    after = label(alice, pair, "A")
    assert after is not None and after["comparison_id"] != pair["comparison_id"]
    assert [(who, ch) for _, who, ch, *_ in labels_of(store)] == [("bob", "B")]


def test_html_in_model_output_comes_back_literally(app, clients):
    url, store, ids = app
    alice = clients(url, "alice")
    pair = call(alice, "next_pair")
    while pair["comparison_id"] != ids[-1]:
        pair = call(alice, "skip", comparison_id=pair["comparison_id"])
    assert {pair["response_a"], pair["response_b"]} == {HOSTILE_A, HOSTILE_B}
    assert [m["role"] for m in pair["messages"]] == ["system", "user", "assistant", "user"]
    assert "<b>France</b>" in pair["prompt"]


# --- admin --------------------------------------------------------------------------------------

def test_admin_stats_are_for_admins_only(app, clients):
    url, store, _ = app
    alice, root = clients(url, "alice"), clients(url, "root")
    pair = call(alice, "next_pair")
    label(alice, pair, "A")
    with pytest.raises(AppError, match="admins only"):
        call(alice, "admin_stats")
    stats = call(root, "admin_stats")
    assert stats["comparisons"] == {"total": 8, "complete": 1, "labels": 1}
    by_name = {r["name"]: r for r in stats["annotators"]}
    assert by_name["alice"]["labels"] == 1
    assert by_name["alice"]["choices"] == {"A": 1, "B": 0, "tie": 0, "both_bad": 0}  # as shown
    assert by_name["alice"]["median_seconds"] is not None
    assert by_name["bob"]["labels"] == 0
    assert set(stats["agreement"]) >= {"overall", "per_annotator"}
    assert stats["agreement"]["overall"]["n_labels"] == 1
