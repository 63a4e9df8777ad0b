"""The workspace's assignment strategy, as ``next_pair`` applies it: read a precomputed priority.

``next_pair`` never fits or scores anything. A background refresh (``annotate/refresh.py``) writes
one priority per open comparison into ``pair_priorities``; ``ordered`` only changes the order in
which ``next_pair`` walks the open comparisons it would offer anyway (same filters: not full, not
yours, not leased to someone else):

- ``random`` (the default): today's order (most-labelled first, then insertion order); the
  priority table is not read at all;
- ``margin`` / ``disagreement`` / ``diversity``: highest priority first; comparisons added since
  the last refresh (no priority yet) come after, in today's order.

The policy is set per store by the app from ``workspace.yaml`` (``set_policy``); a store without
one behaves as ``random`` with no gold pairs.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from sqlalchemy import delete

from annotate.store import Comparison, PairPriority, Store
from rewardlab.workspace import STRATEGIES


@dataclass(frozen=True)
class Policy:
    """What ``next_pair`` does beyond its fixed rules."""

    strategy: str = "random"
    """random | margin | disagreement | diversity (see reward_models/active.py)."""
    gold_rate: float = 0.0
    """Share of each annotator's pairs that are gold control pairs (0 to 0.5)."""


_POLICIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
DEFAULT = Policy()


def set_policy(store: Store, policy: Policy) -> None:
    if policy.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {policy.strategy!r}; use one of {', '.join(STRATEGIES)}")
    if not 0 <= policy.gold_rate <= 0.5:
        raise ValueError(f"gold_rate must be between 0 and 0.5, got {policy.gold_rate!r}")
    _POLICIES[store] = policy
    if policy.strategy == "random":  # stale priorities of an earlier strategy must not linger
        with store.write() as s:
            s.execute(delete(PairPriority))


def policy_for(store: Store) -> Policy:
    return _POLICIES.get(store, DEFAULT)


def ordered(query, store: Store):
    """``next_pair``'s query of open comparisons, ordered by the strategy's stored priority."""
    if policy_for(store).strategy == "random":
        return query
    return (
        query.outerjoin(PairPriority, PairPriority.comparison_id == Comparison.id)
        .order_by(None)
        .order_by(PairPriority.priority.desc().nulls_last(), Comparison.label_count.desc(), Comparison.id)
    )
