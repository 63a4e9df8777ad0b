"""Labels seen per model: how often each model's replies win, how fast and how consistently they are
judged, and head-to-head win-rates of every pair of models with 95% Wilson intervals.

Labels are canonical (``A`` means the comparison's response_a), so each label is read against the
models that wrote response_a and response_b. A comparison of two replies of the same model counts
for that model (labels, speed, agreement) but not in any head-to-head. In a win-rate a tie counts
half a win and "both bad" is left out (reported beside it), as the human evaluation does.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import aliased

from annotate.agreement import percent_agreement
from annotate.store import Comparison, Label, Response, Store
from rewardlab.stats import wilson_interval


def model_progress(store: Store, tag: str | None = None) -> dict:
    """``{"models": [...], "pairs": [...]}`` over every label (of comparisons with ``tag`` when given).

    Per model: ``labels`` (labels of comparisons holding one of its replies), ``wins``, ``losses``,
    ``ties``, ``both_bad`` (head-to-head labels only), ``median_seconds``, ``percent_agreement`` and
    ``n_items`` (comparisons with two or more labels). Per pair of models (``model_a`` < ``model_b``
    by name): ``a_wins``, ``b_wins``, ``ties``, ``both_bad``, ``n`` (labels in the rate),
    ``a_win_rate`` and ``a_win_rate_ci``.
    """
    ra, rb = aliased(Response), aliased(Response)
    query = (
        select(Label.comparison_id, Label.annotator_id, Label.choice, Label.seconds, ra.model, rb.model)
        .join(Comparison, Comparison.id == Label.comparison_id)
        .join(ra, ra.id == Comparison.response_a_id)
        .join(rb, rb.id == Comparison.response_b_id)
    )
    if tag is not None:
        query = query.where(Comparison.tag == tag)
    with store.read() as s:
        rows = s.execute(query).all()

    per_model: dict[str, dict] = {}
    units: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    seconds: dict[str, list[float]] = defaultdict(list)
    pairs: dict[tuple[str, str], dict] = {}
    for cid, _annotator, choice, secs, model_a, model_b in rows:
        for model in {model_a, model_b}:
            entry = per_model.setdefault(model, dict(labels=0, wins=0, losses=0, ties=0, both_bad=0))
            entry["labels"] += 1
            units[model][cid].append(choice)
            if secs is not None:
                seconds[model].append(secs)
        if model_a == model_b:
            continue
        winner = {"A": model_a, "B": model_b}.get(choice)
        for model in (model_a, model_b):
            entry = per_model[model]
            if choice == "tie":
                entry["ties"] += 1
            elif choice == "both_bad":
                entry["both_bad"] += 1
            elif winner == model:
                entry["wins"] += 1
            else:
                entry["losses"] += 1
        first, second = sorted((model_a, model_b))
        pair = pairs.setdefault((first, second), dict(a_wins=0, b_wins=0, ties=0, both_bad=0))
        if choice == "tie":
            pair["ties"] += 1
        elif choice == "both_bad":
            pair["both_bad"] += 1
        elif winner == first:
            pair["a_wins"] += 1
        else:
            pair["b_wins"] += 1

    models = []
    for model in sorted(per_model):
        entry = per_model[model]
        items = {cid: values for cid, values in units[model].items() if len(values) >= 2}
        times = seconds[model]
        models.append({
            "model": model, **entry,
            "median_seconds": round(statistics.median(times), 1) if times else None,
            "percent_agreement": percent_agreement(items),
            "n_items": len(items),
        })
    head_to_head = []
    for (first, second), p in sorted(pairs.items()):
        n = p["a_wins"] + p["b_wins"] + p["ties"]
        rate = (p["a_wins"] + 0.5 * p["ties"]) / n if n else None
        head_to_head.append({
            "model_a": first, "model_b": second, **p, "n": n,
            "a_win_rate": rate,
            "a_win_rate_ci": wilson_interval(p["a_wins"] + 0.5 * p["ties"], n) if n else None,
        })
    return {"models": models, "pairs": head_to_head}
