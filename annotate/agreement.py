"""Inter-annotator agreement over canonical labels (``A``, ``B``, ``tie``, ``both_bad``, nominal).

Three numbers, all computed from ``units``: a mapping of item -> the values annotators gave it.
Items with fewer than two values carry no information about agreement and are left out.

- percent agreement: of all pairs of labels given to the same item by two different annotators,
  the fraction that match (pooled over items, so an item with more labels has more pairs);
- Krippendorff's alpha (nominal): 1 - observed / expected disagreement, from the coincidence
  matrix (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability"); 1 is perfect
  agreement, 0 is what chance gives, below 0 is systematic disagreement;
- per annotator: of the pairs one annotator forms with others on items they share, the fraction
  that match, and how many items they share with anyone.

Labels are canonical (``A`` means response_a whatever the order shown), so two annotators who saw
a pair in different orders but preferred the same response agree.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Hashable, Iterable, Mapping

from sqlalchemy import select

from annotate.store import Annotator, Comparison, Label, Store


def _counted(units: Mapping[Hashable, Iterable[Hashable]]) -> list[Counter]:
    """Per item with >= 2 values: a Counter of its values."""
    out = []
    for values in units.values():
        c = Counter(v for v in values if v is not None)
        if sum(c.values()) >= 2:
            out.append(c)
    return out


def krippendorff_alpha_nominal(units: Mapping[Hashable, Iterable[Hashable]]) -> float | None:
    """Krippendorff's alpha for nominal values; None when undefined (no pairable values, or a
    single value used throughout so that no disagreement is possible)."""
    counted = _counted(units)
    # Coincidence matrix, diagonal and margins: o_cc = sum_u n_uc (n_uc - 1) / (m_u - 1),
    # n_c = sum_u n_uc; alpha = ((n - 1) sum_c o_cc - sum_c n_c (n_c - 1)) /
    #                           (n (n - 1) - sum_c n_c (n_c - 1)).
    observed_agree = 0.0
    n_c: Counter = Counter()
    for c in counted:
        m = sum(c.values())
        observed_agree += sum(k * (k - 1) for k in c.values()) / (m - 1)
        n_c.update(c)
    n = sum(n_c.values())
    if n < 2:
        return None
    expected_same = sum(k * (k - 1) for k in n_c.values())
    denominator = n * (n - 1) - expected_same
    if denominator == 0:
        return None
    return ((n - 1) * observed_agree - expected_same) / denominator


def percent_agreement(units: Mapping[Hashable, Iterable[Hashable]]) -> float | None:
    """Matching pairs / all pairs of labels on the same item; None when no item has 2 labels."""
    pairs = agree = 0
    for c in _counted(units):
        m = sum(c.values())
        pairs += m * (m - 1) // 2
        agree += sum(k * (k - 1) // 2 for k in c.values())
    return agree / pairs if pairs else None


def agreement_report(store: Store, tag: str | None = None) -> dict:
    """Agreement of everyone's labels (only comparisons tagged ``tag`` when given).

    Returns ``{"overall": {"percent_agreement", "krippendorff_alpha", "n_items", "n_labels"},
    "per_annotator": {name: {"labels", "percent_agreement", "n_shared"}}}``; agreement values are
    None where undefined. ``n_items`` counts items with at least two labels; ``n_labels`` all labels.
    """
    query = select(Label.comparison_id, Annotator.name, Label.choice).join(
        Annotator, Annotator.id == Label.annotator_id
    )
    if tag is not None:
        query = query.join(Comparison, Comparison.id == Label.comparison_id).where(Comparison.tag == tag)
    with store.read() as s:
        rows = s.execute(query).all()
    return report_from_labels(rows)


def report_from_labels(rows: Iterable[tuple[Hashable, str, str]]) -> dict:
    """agreement_report() of (comparison id, annotator name, choice) rows already read."""
    by_item: dict[Hashable, dict[str, str]] = defaultdict(dict)
    n_rows = 0
    for cid, name, choice in rows:
        by_item[cid][name] = choice
        n_rows += 1
    units = {cid: list(labels.values()) for cid, labels in by_item.items()}

    per: dict[str, dict] = {}
    tallies: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # labels, pairs, matches
    shared: Counter = Counter()
    for labels in by_item.values():
        counts = Counter(labels.values())
        others = len(labels) - 1
        for name, choice in labels.items():
            t = tallies[name]
            t[0] += 1
            if others:
                t[1] += others
                t[2] += counts[choice] - 1
                shared[name] += 1
    for name in sorted(tallies):
        n_labels, pairs, matches = tallies[name]
        per[name] = {
            "labels": n_labels,
            "percent_agreement": matches / pairs if pairs else None,
            "n_shared": shared[name],
        }

    alpha = krippendorff_alpha_nominal(units)
    pct = percent_agreement(units)
    return {
        "overall": {
            "percent_agreement": pct,
            "krippendorff_alpha": alpha,
            "n_items": sum(1 for v in units.values() if len(v) >= 2),
            "n_labels": n_rows,
        },
        "per_annotator": per,
    }
