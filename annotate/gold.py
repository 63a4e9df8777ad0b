"""Gold control pairs: pairs with a known answer, mixed into each annotator's queue at a set rate.

A gold pair is an ordinary comparison with ``overlap`` 0 (so the normal queue, the progress counts
and the export never see it) plus a ``gold_pairs`` row holding its answer. Every annotator is shown
each gold pair at most once; their answer goes to ``gold_answers`` (not ``labels``), and their
quality score is the share they got right (a tie or "both bad" on a gold pair counts as wrong).

The rate: before each new pair, with ``g`` gold pairs among the ``n`` pairs an annotator has been
shown, the next is gold with probability ``rate``, forced when ``g < rate * (n + 1) - 1`` and
refused when ``g > rate * (n + 1)``: unpredictable to the annotator, yet never more than one pair
off ``rate * n``.
"""

from __future__ import annotations

from sqlalchemy import delete, exists, func, select

from annotate.accounts import Account
from annotate.store import (
    Annotator,
    Assignment,
    Comparison,
    GoldAnswer,
    GoldPair,
    Store,
    utcnow,
)
from rewardlab.errors import RewardlabError
from rewardlab.formats import PromptRecord, load_preferences

GOLD_TAG = "gold"


def import_gold(store: Store, source: str) -> dict:
    """Add the pairs of a preference file (``chosen`` is the right answer) as gold pairs.

    Idempotent: pairs already stored as gold are counted as duplicates. A pair that exists as an
    ordinary comparison is refused (its labels would mix with the scores).
    """
    result = load_preferences(source)
    if not result.records:
        raise RewardlabError(f"{source}: no preference pairs found for gold")
    added = dup = 0
    with store.write() as s:
        for i, rec in enumerate(result.records, 1):
            pid = store.prompt_id_for(s, PromptRecord(messages=rec.prompt, source=GOLD_TAG), source=GOLD_TAG)
            rc = store.response_id_for(s, pid, GOLD_TAG, rec.chosen)
            rr = store.response_id_for(s, pid, GOLD_TAG, rec.rejected)
            cid, created, flipped = store.comparison_for(s, pid, rc, rr, overlap=0, tag=GOLD_TAG)
            if not created:
                if s.get(GoldPair, cid) is None:
                    raise RewardlabError(f"{source}: pair {i} is already an ordinary comparison; it cannot be gold")
                dup += 1
                continue
            s.add(GoldPair(comparison_id=cid, answer="B" if flipped else "A"))
            added += 1
    return {"added": added, "duplicates": dup}


def due(s, store: Store, user: Account, rate: float, rng) -> int | None:
    """A gold comparison to show this annotator now, or None (not due, or none left for them)."""
    if rate <= 0:
        return None
    n, g = s.execute(
        select(func.count(), func.count(GoldPair.comparison_id))
        .select_from(Assignment)
        .outerjoin(GoldPair, GoldPair.comparison_id == Assignment.comparison_id)
        .where(Assignment.annotator_id == user.id)
    ).one()
    allowed = rate * (n + 1)
    if g > allowed or (g >= allowed - 1 and rng.random() >= rate):
        return None
    mine = exists().where(Assignment.comparison_id == GoldPair.comparison_id, Assignment.annotator_id == user.id)
    return s.scalar(select(GoldPair.comparison_id).where(~mine).order_by(GoldPair.comparison_id).limit(1))


def is_gold(s, comparison_id: int) -> bool:
    return s.get(GoldPair, comparison_id) is not None


def record(s, assignment: Assignment, canonical_choice: str) -> bool:
    """Store the annotator's answer to a gold pair (inside the caller's transaction); always True."""
    gold = s.get(GoldPair, assignment.comparison_id)
    s.add(GoldAnswer(comparison_id=assignment.comparison_id, annotator_id=assignment.annotator_id,
                     choice=canonical_choice, correct=canonical_choice == gold.answer, created_at=utcnow()))
    assignment.status = "done"
    s.flush()
    return True


def latest_answer(s, user: Account) -> GoldAnswer | None:
    """This annotator's most recent gold answer (for undo), or None."""
    return s.scalar(select(GoldAnswer).where(GoldAnswer.annotator_id == user.id)
                    .order_by(GoldAnswer.created_at.desc()).limit(1))


def take_back(s, answer: GoldAnswer) -> None:
    """Delete a gold answer (undo), inside the caller's transaction; its score goes with it."""
    s.execute(delete(GoldAnswer).where(GoldAnswer.comparison_id == answer.comparison_id,
                                       GoldAnswer.annotator_id == answer.annotator_id))


def scores(store: Store) -> dict[str, dict]:
    """Per annotator name: ``{"gold_answered", "gold_correct", "gold_accuracy"}`` (only those with answers)."""
    with store.read() as s:
        rows = s.execute(
            select(Annotator.name, func.count(), func.sum(GoldAnswer.correct.cast(Comparison.overlap.type)))
            .join(GoldAnswer, GoldAnswer.annotator_id == Annotator.id)
            .group_by(Annotator.name)
        ).all()
    return {name: {"gold_answered": int(n), "gold_correct": int(ok or 0),
                   "gold_accuracy": round(int(ok or 0) / n, 4)} for name, n, ok in rows}
