"""A reward model's report card on labelled pairs: accuracy with an interval, calibration, length bias.

``evaluate_reward_model(model_dir, data)`` scores both replies of every pair and reports:

* ``accuracy``: share of pairs where the chosen reply gets the higher reward (a tie counts half),
  with ``accuracy_ci``, the 95% Wilson interval over ``n`` pairs;
* ``mean_margin``: mean of ``r_chosen - r_rejected``;
* calibration: the model's confidence in its own preference, ``sigmoid(|margin|)`` (0.5 to 1, the
  Bradley-Terry probability it assigns), against how often that preferred reply is the annotators'
  choice, in 10 equal-width ``buckets``; ``ece`` is their count-weighted mean absolute gap;
* length bias: ``longer_wins_accuracy`` (the longer reply, in characters, is predicted chosen; equal
  lengths count half), ``length_baseline_accuracy`` = the better of longer-wins and shorter-wins on the
  same pairs (the bar a reward model must clear), and ``length_reward_correlation`` (Pearson, reward
  vs reply length in characters, over all replies);
* ``per_annotator``: agreement with each annotator when the pairs' metadata names one (``annotator``,
  ``annotator_id``, ``annotator_name``, ``worker_id``, ``labeler`` or a list in ``annotators``).

With ``out_dir`` it writes ``eval.json``, ``pair_scores.jsonl`` and two PNG plots
(``calibration.png``, ``reward_hist.png``).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from reward_models.scorer import RewardModelScorer
from rewardlab.formats import PreferenceRecord, write_jsonl
from rewardlab.stats import wilson_interval

N_BUCKETS = 10
ANNOTATOR_KEYS = ("annotator", "annotator_id", "annotator_name", "worker_id", "labeler")


def _win(diff: float) -> float:
    return 1.0 if diff > 0 else 0.5 if diff == 0 else 0.0


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson correlation; None when either side is constant or there are fewer than 3 points."""
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx <= 0 or syy <= 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / math.sqrt(sxx * syy)


def calibration(margins: list[float]) -> tuple[list[dict], float]:
    """Buckets of confidence ``sigmoid(|margin|)`` in [0.5, 1] with the observed agreement; and ECE."""
    width = 0.5 / N_BUCKETS
    buckets = [{"lo": 0.5 + i * width, "hi": 0.5 + (i + 1) * width, "n": 0, "_conf": 0.0, "_hit": 0.0}
               for i in range(N_BUCKETS)]
    for m in margins:
        conf = _sigmoid(abs(m))
        b = buckets[min(N_BUCKETS - 1, int((conf - 0.5) / width))]
        b["n"] += 1
        b["_conf"] += conf
        b["_hit"] += _win(m)  # the preferred reply is the chosen one (tie: half)
    out, ece, n = [], 0.0, len(margins)
    for b in buckets:
        if b["n"]:
            predicted, observed = b["_conf"] / b["n"], b["_hit"] / b["n"]
            ece += b["n"] / n * abs(observed - predicted)
        else:
            predicted = observed = None
        out.append({"lo": round(b["lo"], 3), "hi": round(b["hi"], 3), "n": b["n"],
                    "predicted": predicted, "observed": observed})
    return out, ece


def _annotators(meta: dict) -> list[str]:
    for key in ANNOTATOR_KEYS:
        if meta.get(key) not in (None, ""):
            return [str(meta[key])]
    many = meta.get("annotators")
    return [str(a) for a in many] if isinstance(many, list) else []


def reward_stats(scorer, records: list[PreferenceRecord], sample: int = 1024, seed: int = 0) -> dict:
    """Mean and std of rewards over the records' replies (chosen and rejected; a random sample)."""
    items = [(r.prompt, reply) for r in records for reply in (r.chosen, r.rejected)]
    if len(items) > sample:
        items = random.Random(seed).sample(items, sample)
    rewards = scorer.score([p for p, _ in items], [t for _, t in items])
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((x - mean) ** 2 for x in rewards) / len(rewards))
    return {"mean": mean, "std": std, "n": len(rewards), "of": "training responses (chosen and rejected)"}


def evaluate_reward_model(model_dir, data, out_dir=None, batch_size: int = 16) -> dict:
    """Report card of a reward model on labelled pairs.

    ``model_dir``: a ``reward train`` folder, or any object with ``score(prompts, responses)``
    (a RewardModelScorer, a composed reward). ``data``: a path ``load_preferences`` reads, or a list
    of PreferenceRecord. Identical and empty pairs are skipped and counted.
    """
    from reward_models.train import load_pairs

    scorer = model_dir if hasattr(model_dir, "score") else RewardModelScorer(model_dir, batch_size=batch_size)
    records, counts = load_pairs(data if not isinstance(data, Path) else str(data), "--data")
    n = len(records)
    rewards = scorer.score([r.prompt for r in records] * 2, [r.chosen for r in records] + [r.rejected for r in records])
    chosen, rejected = [float(x) for x in rewards[:n]], [float(x) for x in rewards[n:]]
    margins = [c - r for c, r in zip(chosen, rejected)]
    wins = sum(_win(m) for m in margins)
    longer = sum(_win(len(r.chosen) - len(r.rejected)) for r in records) / n
    buckets, ece = calibration(margins)
    lengths = [len(r.chosen) for r in records] + [len(r.rejected) for r in records]
    corr = pearson(chosen + rejected, [float(x) for x in lengths])

    per_annotator: dict[str, dict] = {}
    for r, m in zip(records, margins):
        for who in _annotators(r.meta):
            entry = per_annotator.setdefault(who, {"n": 0, "agreement": 0.0})
            entry["n"] += 1
            entry["agreement"] += _win(m)
    for entry in per_annotator.values():
        entry["agreement"] /= entry["n"]

    report = {
        "model": str(getattr(scorer, "path", type(scorer).__name__)),
        "n": n,
        "accuracy": wins / n,
        "accuracy_ci": wilson_interval(wins, n),
        "mean_margin": sum(margins) / n,
        "ece": ece,
        "calibration": buckets,
        "length_baseline_accuracy": max(longer, 1 - longer),
        "longer_wins_accuracy": longer,
        "length_reward_correlation": corr,
        "mean_reward_chosen": sum(chosen) / n,
        "mean_reward_rejected": sum(rejected) / n,
        "per_annotator": per_annotator or None,
        **counts,
    }
    report["beats_length_baseline"] = report["accuracy"] > report["length_baseline_accuracy"]
    if out_dir is not None:
        from reward_models.plots import plot_calibration, plot_reward_histograms

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        report["plots"] = [
            str(plot_calibration(buckets, ece, out / "calibration.png")),
            str(plot_reward_histograms(chosen, rejected, out / "reward_hist.png")),
        ]
        write_jsonl(out / "pair_scores.jsonl", (
            {"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected,
             "reward_chosen": c, "reward_rejected": x, "margin": c - x}
            for r, c, x in zip(records, chosen, rejected)))
        (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
