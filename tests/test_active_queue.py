"""Label efficiency in the store: strategy order, gold control pairs, and the background refresh
(real temporary SQLite; synthetic features from a tiny deterministic featurizer, no model)."""

from __future__ import annotations

import json
import random
import threading
import time
import zlib

import pytest
import torch
from sqlalchemy import func, select

from annotate import gold, strategies
from annotate.accounts import add_user
from annotate.app import admin_stats
from annotate.assignment import next_pair, submit_and_next, submit_label, undo
from annotate.refresh import Refresher
from annotate.store import (
    Comparison,
    GoldAnswer,
    Label,
    PairPriority,
    Prompt,
    ResponseFeature,
    text_hash,
)
from reward_models.active import priorities

PASSWORD = "correct horse"
STORE_ENGINES = ("sqlite", "postgresql")  # the strategies order next_pair on both (tests/conftest.py)


def quality_features(items):
    """Feature 0 = the quality written in the reply ("q=0.7"), feature 1 = a fixed per-text value."""
    rows = []
    for _messages, text in items:
        q = float(text.split("q=")[1].split()[0])
        rows.append([q, (zlib.crc32(text.encode()) % 7) / 7.0])  # not hash(): that is salted per process
    return torch.tensor(rows)


def make_pairs(store, qualities, prompts=None) -> list[int]:
    """One comparison per (qa, qb), on prompt ``prompts[i]`` (default: its own prompt)."""
    ids = []
    with store.write() as s:
        for i, (qa, qb) in enumerate(qualities):
            key = prompts[i] if prompts else i
            messages = [{"role": "user", "content": f"question {key}?"}]
            pid = s.scalar(select(Prompt.id).where(Prompt.key == text_hash(json.dumps(messages))))
            if pid is None:
                p = Prompt(key=text_hash(json.dumps(messages)), messages=json.dumps(messages), source="t")
                s.add(p)
                s.flush()
                pid = p.id
            r1 = store.response_id_for(s, pid, "m1", f"reply {i} q={qa}")
            r2 = store.response_id_for(s, pid, "m2", f"reply {i} q={qb}")
            ids.append(store.comparison_for(s, pid, r1, r2, overlap=1)[0])
    return ids


def label_truthfully(store, user, n):
    """Label ``n`` pairs as a perfect annotator (the reply with the higher q wins)."""
    pair = next_pair(store, user)
    for _ in range(n):
        qa = float(pair["response_a"].split("q=")[1])
        qb = float(pair["response_b"].split("q=")[1])
        _, pair = submit_and_next(store, user, pair["comparison_id"], "A" if qa > qb else "B")


def refresher(store, strategy, ranker=priorities, calls=None):
    def featurize(items):
        if calls is not None:
            calls.append(len(items))
        return quality_features(items)

    return Refresher(store, strategy, ranker, featurize, "quality@test", every=5, poll_seconds=0.05)


def test_margin_strategy_serves_the_smallest_margin_pair_after_a_refresh(store):
    ann = add_user(store, "ann", PASSWORD)
    labelled = make_pairs(store, [(i / 10, 1 - i / 10) for i in range(12)])  # clear pairs, labelled first
    strategies.set_policy(store, strategies.Policy("margin"))
    label_truthfully(store, ann, 12)
    # Open pairs with margins 0.6, 0.02 (nearly a tie), 0.3, 0.9.
    open_ids = make_pairs(store, [(0.8, 0.2), (0.51, 0.49), (0.35, 0.65), (0.05, 0.95)],
                          prompts=[100, 101, 102, 103])
    calls = []
    r = refresher(store, "margin", calls=calls)
    summary = r.refresh()
    assert summary["labels"] == 12 and summary["ranked"] == 4 and calls == [32]  # 24 + 8 replies encoded
    assert next_pair(store, ann)["comparison_id"] == open_ids[1]
    r.refresh()
    assert calls == [32]  # cached: nothing encoded twice
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(ResponseFeature)) == 32
    assert labelled  # the random baseline would have served open_ids[0] (insertion order):
    strategies.set_policy(store, strategies.Policy("random"))
    bob = add_user(store, "bob", PASSWORD)
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(PairPriority)) == 0
    assert next_pair(store, bob)["comparison_id"] == open_ids[0]


def test_gold_pairs_are_mixed_at_the_rate_and_scored(store, tmp_path):
    gold_file = tmp_path / "gold.jsonl"
    gold_file.write_text("".join(json.dumps({"prompt": f"gold question {i}?", "chosen": f"right {i}",
                                             "rejected": f"wrong {i}"}) + "\n" for i in range(40)))
    assert gold.import_gold(store, str(gold_file)) == {"added": 40, "duplicates": 0}
    assert gold.import_gold(store, str(gold_file)) == {"added": 0, "duplicates": 40}
    make_pairs(store, [(0.1 * (i % 10), 0.5) for i in range(150)])
    strategies.set_policy(store, strategies.Policy("random", gold_rate=0.2))
    ann = add_user(store, "ann", PASSWORD)
    pair, shown_gold, answered_right = next_pair(store, ann, rng=random.Random(3)), 0, 0
    for k in range(100):
        is_gold = pair["prompt"].startswith("gold") or "gold question" in pair["prompt"]
        if is_gold:
            shown_gold += 1
            right = "A" if pair["response_a"].startswith("right") else "B"
            wrong = "B" if right == "A" else "A"
            choice = right if shown_gold % 4 else wrong  # every 4th gold answered wrong
            answered_right += choice == right
        else:
            choice = "A"
        _, pair = submit_and_next(store, ann, pair["comparison_id"], choice, rng=random.Random(k))
        assert abs(shown_gold - 0.2 * (k + 1)) <= 1.5  # never more than about one pair off the rate
    assert 18 <= shown_gold <= 22
    with store.read() as s:
        n_labels = s.scalar(select(func.count()).select_from(Label))
        gold_counts = s.scalar(select(func.sum(Comparison.label_count)).where(Comparison.tag == "gold"))
        assert s.scalar(select(func.count()).select_from(GoldAnswer)) == shown_gold
    assert n_labels == 100 - shown_gold and gold_counts == 0  # gold answers are not labels
    score = gold.scores(store)["ann"]
    assert score == {"gold_answered": shown_gold, "gold_correct": answered_right,
                     "gold_accuracy": round(answered_right / shown_gold, 4)}
    row = next(r for r in admin_stats(store)["annotators"] if r["name"] == "ann")
    assert row["gold_accuracy"] == score["gold_accuracy"]
    from annotate.export import export

    summary = export(store, tmp_path / "prefs")
    assert summary["labels"] == n_labels and summary["comparisons_unlabelled"] == 150 - n_labels
    assert json.loads((tmp_path / "prefs" / "agreement.json").read_text())["gold"]["ann"] == score


def test_undo_takes_back_the_latest_answer_gold_or_not(store, tmp_path):
    """The annotator cannot tell gold pairs apart, so undo takes back whichever they answered last."""
    gold_file = tmp_path / "gold.jsonl"
    gold_file.write_text(json.dumps({"prompt": "gold question?", "chosen": "right", "rejected": "wrong"}) + "\n")
    gold.import_gold(store, str(gold_file))
    make_pairs(store, [(0.2, 0.8), (0.3, 0.7), (0.4, 0.6)])
    ann = add_user(store, "ann", PASSWORD)
    strategies.set_policy(store, strategies.Policy("random", gold_rate=0.0))
    first = next_pair(store, ann)
    submit_label(store, ann, first["comparison_id"], "A")  # an ordinary label
    strategies.set_policy(store, strategies.Policy("random", gold_rate=0.5))

    class Due:  # rng: the gold pair is due now (at rate 0.5 after one pair it may or may not be)
        random = staticmethod(lambda: 0.0)

    g = next_pair(store, ann, rng=Due())
    assert "gold question" in g["prompt"]
    wrong = "B" if g["response_a"] == "right" else "A"
    submit_label(store, ann, g["comparison_id"], wrong)  # then the gold pair, answered wrongly
    assert gold.scores(store)["ann"]["gold_correct"] == 0

    back = undo(store, ann)  # the gold answer goes, the older label stays
    assert back["comparison_id"] == g["comparison_id"] and back["response_a"] == g["response_a"]
    assert gold.scores(store) == {}
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(Label)) == 1
    assert next_pair(store, ann)["comparison_id"] == g["comparison_id"]  # current again
    submit_label(store, ann, g["comparison_id"], "A" if wrong == "B" else "B")
    assert gold.scores(store)["ann"] == {"gold_answered": 1, "gold_correct": 1, "gold_accuracy": 1.0}

    undo(store, ann)  # the gold answer again ...
    back = undo(store, ann)  # ... then the ordinary label
    assert back["comparison_id"] == first["comparison_id"]
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(Label)) == 0
        assert s.scalar(select(func.count()).select_from(GoldAnswer)) == 0
        assert s.get(Comparison, first["comparison_id"]).label_count == 0
    assert undo(store, ann) is None  # nothing left to take back


def test_a_slow_refresh_never_delays_next_pair(store):
    ann, bob = add_user(store, "ann", PASSWORD), add_user(store, "bob", PASSWORD)
    make_pairs(store, [(i / 30, 1 - i / 30) for i in range(30)])
    strategies.set_policy(store, strategies.Policy("margin"))
    label_truthfully(store, ann, 12)
    entered, release = threading.Event(), threading.Event()

    def slow_ranker(*args):
        entered.set()
        assert release.wait(30)
        return priorities(*args)

    r = refresher(store, "margin", ranker=slow_ranker).start()
    try:
        assert entered.wait(30)  # the refresh is under way (features read, fitting) and stuck
        started = time.perf_counter()
        pair = next_pair(store, bob)
        submit_label(store, bob, pair["comparison_id"], "A")
        pair = next_pair(store, bob)
        assert pair is not None and time.perf_counter() - started < 1.0
        release.set()
        deadline = time.time() + 30
        while r.refreshes == 0 and time.time() < deadline:
            time.sleep(0.02)
        assert r.refreshes == 1 and r.error is None
        with store.read() as s:
            assert s.scalar(select(func.count()).select_from(PairPriority)) == r.last["ranked"] > 0
        # 5 more labels trigger the next refresh on its own.
        label_truthfully(store, ann, 5)
        deadline = time.time() + 30
        while r.refreshes < 2 and time.time() < deadline:
            time.sleep(0.02)
        # counted from 12 (the labels when the first refresh began), so it fires at 17 (or 18 when
        # the poll comes after ann's last label)
        assert r.refreshes == 2 and r.last["labels"] in (17, 18)
    finally:
        release.set()
        r.stop()


def test_workspace_settings_are_checked(tmp_path):
    from rewardlab.errors import RewardlabError
    from rewardlab.workspace import load_config

    (tmp_path / "workspace.yaml").write_text("assignment_strategy: margin\nrefresh_every: 50\n")
    cfg = load_config(tmp_path)
    assert (cfg.assignment_strategy, cfg.refresh_every, cfg.gold_rate) == ("margin", 50, 0.0)
    for bad, msg in [("assignment_strategy: entropy", "assignment_strategy must be one of"),
                     ("gold_rate: 0.9\ngold_file: g.jsonl", "gold_rate must be a number from 0 to 0.5"),
                     ("gold_rate: 0.1", "needs gold_file"), ("refresh_every: 0", "refresh_every must be")]:
        (tmp_path / "workspace.yaml").write_text(bad + "\n")
        with pytest.raises(RewardlabError, match=msg):
            load_config(tmp_path)
