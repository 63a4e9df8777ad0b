"""Who sees what next: leasing pairs to annotators, and taking their labels.

The rules, enforced by the database rather than by hope:

- nobody is shown a comparison twice (one ``assignments`` row per comparison and annotator);
- a comparison never gets more labels than its ``overlap``: a label is stored only in the same
  transaction as ``UPDATE comparisons SET label_count = label_count + 1 WHERE label_count <
  overlap``, so two annotators racing for the last slot cannot both win;
- a pair shown to someone is held back from others (its lease) until it is labelled, skipped or
  the lease expires, so annotators working at once get different pairs;
- left/right order is random per annotator and stored; labels are stored canonically.

A and B in the dicts returned here are *as shown to that annotator*.
"""

from __future__ import annotations

import json
import random
import time
from datetime import timedelta

from sqlalchemy import delete, exists, func, select, update

from annotate import gold, strategies
from annotate.accounts import Account
from annotate.store import (
    CHOICES,
    STRENGTHS,
    Assignment,
    Comparison,
    Label,
    Prompt,
    Response,
    Store,
    utcnow,
)
from rewardlab.errors import RewardlabError
from rewardlab.formats import render_prompt_text

MAX_NOTE_CHARS = 2000
_SWAP = {"A": "B", "B": "A", "tie": "tie", "both_bad": "both_bad"}


class PairFull(RewardlabError):
    """The comparison got all its labels from others first."""


def _pair_dict(s, comparison_id: int, swapped: bool) -> dict:
    c = s.get(Comparison, comparison_id)
    p = s.get(Prompt, c.prompt_id)
    ra, rb = s.get(Response, c.response_a_id), s.get(Response, c.response_b_id)
    if swapped:
        ra, rb = rb, ra
    messages = json.loads(p.messages)
    return {
        "comparison_id": c.id,
        "prompt": render_prompt_text(messages),
        "messages": messages,
        "response_a": ra.text,
        "response_b": rb.text,
    }


def _lease(store_lease_minutes: float):
    return timedelta(minutes=store_lease_minutes)


def next_pair(store: Store, user: Account, lease_minutes: float = 10.0, rng=random) -> dict | None:
    """The pair this annotator should label now, or None when nothing is left for them.

    An open assignment (e.g. after a page reload or an undo) comes back first.
    """
    with store.write() as s:
        return _next_in(s, store, user, lease_minutes, rng)


def _next_in(s, store: Store, user: Account, lease_minutes: float, rng) -> dict | None:
    now = utcnow()
    open_row = s.execute(
        select(Assignment.comparison_id, Assignment.swapped)
        .where(Assignment.annotator_id == user.id, Assignment.status == "open")
        .order_by(Assignment.shown_at.desc())
        .limit(1)
    ).first()
    if open_row is not None:
        s.execute(
            update(Assignment)
            .where(Assignment.annotator_id == user.id, Assignment.comparison_id == open_row[0])
            .values(expires_at=now + _lease(lease_minutes))
        )
        return _pair_dict(s, open_row[0], open_row[1])

    mine = exists().where(
        Assignment.comparison_id == Comparison.id, Assignment.annotator_id == user.id
    )
    held = (
        select(func.count())
        .select_from(Assignment)
        .where(
            Assignment.comparison_id == Comparison.id,
            Assignment.status == "open",
            Assignment.expires_at > now,
        )
        .correlate(Comparison)
        .scalar_subquery()
    )
    query = (
        select(Comparison.id)
        .where(Comparison.label_count < Comparison.overlap, ~mine)
        .where(Comparison.label_count + held < Comparison.overlap)
        .order_by(Comparison.label_count.desc(), Comparison.id)
        .limit(1)
    )
    # issue 7 (label efficiency): a gold control pair when one is due, else the strategy's order.
    policy = strategies.policy_for(store)
    cid = gold.due(s, store, user, policy.gold_rate, rng)
    if cid is None:
        query = strategies.ordered(query, store)
        if store.is_sqlite:
            # BEGIN IMMEDIATE: this transaction is the only writer, so what it read still holds.
            cid = s.scalar(query)
        else:
            cid = _lock_open_comparison(s, query, held)
    if cid is None:
        return None
    swapped = rng.random() < 0.5
    s.add(
        Assignment(
            comparison_id=cid,
            annotator_id=user.id,
            swapped=swapped,
            status="open",
            shown_at=now,
            expires_at=now + _lease(lease_minutes),
        )
    )
    s.flush()
    return _pair_dict(s, cid, swapped)


def _lock_open_comparison(s, query, held, tries: int = 20, waits: int = 100) -> int | None:
    """PostgreSQL (READ COMMITTED, several processes): lock a comparison still open for a lease.

    The pick locks its row (``FOR UPDATE SKIP LOCKED``: others move on to other rows), but it read
    the leases as of its own start, so a lease committed by another process a moment before can be
    missing. Every leaser holds this row lock while it leases, so a new statement, run while we
    hold it, sees every lease there is: when that says the pair is taken, try the next one.
    When every open pair is locked by others at that instant (the end of a campaign), wait a
    little and look again rather than answer "nothing left"; never block on a lock (no deadlocks).
    """
    tried: list[int] = []
    while tries > 0:
        q = query.where(Comparison.id.not_in(tried)) if tried else query
        cid = s.scalar(q.with_for_update(skip_locked=True, of=Comparison))
        if cid is None:
            if waits > 0 and s.scalar(q) is not None:  # open, but locked by others just now
                waits -= 1
                time.sleep(0.01)
                continue
            return None
        still_open = s.scalar(
            select(func.count())
            .select_from(Comparison)
            .where(Comparison.id == cid, Comparison.label_count + held < Comparison.overlap)
        )
        if still_open:
            return cid
        tried.append(cid)
        tries -= 1
    return None


def _check_label(comparison_id, choice: str, strength: str | None, note: str):
    if choice not in CHOICES:
        raise RewardlabError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
    if strength in ("", None):
        strength = None
    elif strength not in STRENGTHS:
        raise RewardlabError(f"strength must be one of {', '.join(STRENGTHS)} or null, got {strength!r}")
    note = note or ""
    if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
        raise RewardlabError(f"note must be text of at most {MAX_NOTE_CHARS} characters")
    try:
        comparison_id = int(comparison_id)
    except (TypeError, ValueError):
        raise RewardlabError(f"comparison_id must be a whole number, got {comparison_id!r}") from None
    return comparison_id, choice, strength, note


def _submit_in(s, user: Account, comparison_id: int, choice: str, strength, note: str) -> bool:
    """Store the label inside the caller's transaction; False when others filled the pair first."""
    now = utcnow()
    # Locked (PostgreSQL; SQLite's writer is alone anyway): the same label sent twice at once, e.g.
    # through two app processes, waits here and then finds the assignment done.
    a = s.get(Assignment, (comparison_id, user.id), with_for_update=True)
    if a is None:
        raise RewardlabError(f"comparison {comparison_id} was not shown to you; call next_pair first")
    if a.status == "done":
        raise RewardlabError(f"you already labelled comparison {comparison_id} (use undo to change it)")
    if a.status == "skipped":
        raise RewardlabError(
            f"comparison {comparison_id} is no longer open for you (skipped or full); call next_pair"
        )
    if gold.is_gold(s, comparison_id):  # issue 7: a gold pair's answer is scored, not a label
        return gold.record(s, a, _SWAP[choice] if a.swapped else choice)
    got_slot = s.execute(
        update(Comparison)
        .where(Comparison.id == comparison_id, Comparison.label_count < Comparison.overlap)
        .values(label_count=Comparison.label_count + 1)
    ).rowcount
    if not got_slot:
        a.status = "skipped"
        s.flush()
        return False
    s.add(
        Label(
            comparison_id=comparison_id,
            annotator_id=user.id,
            choice=_SWAP[choice] if a.swapped else choice,
            strength=strength,
            note=note,
            seconds=round(max(0.0, (now - a.shown_at).total_seconds()), 3),
            created_at=now,
            updated_at=now,
        )
    )
    a.status = "done"
    s.flush()
    return True


def submit_label(
    store: Store,
    user: Account,
    comparison_id: int,
    choice: str,
    strength: str | None = None,
    note: str = "",
) -> None:
    """Store this annotator's label for a pair they were shown (A/B as shown to them).

    Raises PairFull (nothing stored) when others gave the pair all its labels first.
    """
    comparison_id, choice, strength, note = _check_label(comparison_id, choice, strength, note)
    with store.write() as s:
        stored = _submit_in(s, user, comparison_id, choice, strength, note)
    if not stored:
        raise PairFull(f"comparison {comparison_id} already has all its labels; here is the next one")


def submit_and_next(
    store: Store,
    user: Account,
    comparison_id: int,
    choice: str,
    strength: str | None = None,
    note: str = "",
    lease_minutes: float = 10.0,
    rng=random,
) -> tuple[bool, dict | None]:
    """submit_label then next_pair (with progress) in ONE transaction: the app's hot path.

    Returns (stored, next pair or None); stored is False when others filled the pair first.
    """
    comparison_id, choice, strength, note = _check_label(comparison_id, choice, strength, note)
    with store.write() as s:
        stored = _submit_in(s, user, comparison_id, choice, strength, note)
        pair = _next_in(s, store, user, lease_minutes, rng)
        if pair is not None:
            pair["progress"] = _progress_in(s, user)
        return stored, pair


def skip(store: Store, user: Account, comparison_id: int) -> None:
    """Never show this pair to this annotator again, and release it for others."""
    with store.write() as s:
        a = s.get(Assignment, (int(comparison_id), user.id))
        if a is None or a.status != "open":
            raise RewardlabError(f"comparison {comparison_id} is not open for you")
        a.status = "skipped"


def undo(store: Store, user: Account, lease_minutes: float = 10.0) -> dict | None:
    """Take back this annotator's latest answer; the pair becomes their current one again.

    The latest answer may be to a gold control pair (the annotator cannot tell them apart): then
    that gold answer is taken back, not an older label. Returns the pair as shown to them (same
    left/right order), or None when there is nothing to undo.
    """
    now = utcnow()
    with store.write() as s:
        label = s.scalar(
            select(Label)
            .where(Label.annotator_id == user.id)
            .order_by(Label.created_at.desc(), Label.id.desc())
            .limit(1)
        )
        answer = gold.latest_answer(s, user)
        if answer is not None and (label is None or answer.created_at >= label.created_at):
            cid = answer.comparison_id
            gold.take_back(s, answer)
        elif label is not None:
            cid = label.comparison_id
            s.execute(delete(Label).where(Label.id == label.id))
            s.execute(
                update(Comparison).where(Comparison.id == cid).values(label_count=Comparison.label_count - 1)
            )
        else:
            return None
        # Any other open pair goes back to the pool; the undone one is current again.
        s.execute(
            delete(Assignment).where(
                Assignment.annotator_id == user.id,
                Assignment.status == "open",
                Assignment.comparison_id != cid,
            )
        )
        a = s.get(Assignment, (cid, user.id))
        a.status = "open"
        a.shown_at = now
        a.expires_at = now + _lease(lease_minutes)
        s.flush()
        return _pair_dict(s, cid, a.swapped)


def progress(store: Store, user: Account) -> dict:
    """How many pairs this annotator labelled, and how many are still open to them."""
    with store.read() as s:
        return _progress_in(s, user)


def _progress_in(s, user: Account) -> dict:
    done = s.scalar(select(func.count()).select_from(Label).where(Label.annotator_id == user.id))
    # Open comparisons overall, less those this annotator already labelled or skipped: two
    # index-backed counts instead of an anti-join over every comparison.
    open_total = s.scalar(
        select(func.count()).select_from(Comparison).where(Comparison.label_count < Comparison.overlap)
    )
    mine_open = s.scalar(
        select(func.count())
        .select_from(Assignment)
        .join(Comparison, Comparison.id == Assignment.comparison_id)
        .where(
            Assignment.annotator_id == user.id,
            Assignment.status != "open",
            Comparison.label_count < Comparison.overlap,
        )
    )
    return {"done": int(done or 0), "remaining": int((open_total or 0) - (mine_open or 0))}
