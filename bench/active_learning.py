"""Label efficiency: how many labels each assignment strategy needs to match random assignment.

``python bench/active_learning.py [--quick] [--data PATH] [--cache DIR] [--png PATH]``

A simulated annotator answers from HH-RLHF harmless (development split; the dataset's own
``chosen`` is the answer). The pairs are split 80/20 by prompt exactly as ``reward train`` does
(``reward_models.train.split_held_out(records, 0.2, 0)``): the 80% is the pool the strategies draw
from, the 20% is never labelled and measures the reward model's held-out accuracy.

The reward model is the one the annotation app refreshes: a Bradley-Terry head (L2 by CV) on
cached frozen all-MiniLM-L6-v2 features (``reward_models.active``). Every strategy starts from the
same ``--seed-labels`` random labels, then picks ``--batch`` pairs at a time with the head refitted
on everything labelled so far (the app's "refresh every K labels"), up to ``--budget`` labels.
Three seeds by default (``--seeds N`` for more; the seed set and tie-breaking differ); curves are averaged over seeds.

Figure of merit, per strategy: the fewest labels from which its mean held-out accuracy stays at
or above random's mean accuracy at the full budget; ``label_ratio`` = that / budget (lower is better;
``null`` when never reached within the budget). Target: at most 0.7.

Features of the 3,700-odd replies are computed once (a few minutes on 2 CPU cores) and cached in
``--cache`` (default: ``$TMPDIR/rewardlab-bench-cache``). The last line of output is one JSON
object; progress goes to stderr. ``--quick`` uses a smaller budget (under a minute once cached).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_DATA = Path(os.environ.get("REWARDLAB_SHARED", REPO.parent / "shared")) / "data/hh-rlhf/harmless_dev.jsonl"


L2_GRID = (1e-3, 1e-2, 1e-1)
"""L2 strengths tried by 3-fold CV on the labels so far (a coarser grid than reward train's, for speed)."""


def log(*parts) -> None:
    print("[active_learning]", *parts, file=sys.stderr, flush=True)


def features(records, cache: Path, backbone: str = "all-minilm-l6-v2", max_length: int = 128):
    """(chosen feats, rejected feats) for the records, cached on disk by data and backbone."""
    import torch

    key = hashlib.sha256(json.dumps([[r.prompt, r.chosen, r.rejected] for r in records], sort_keys=True)
                         .encode("utf-8") + f"{backbone}@{max_length}".encode()).hexdigest()[:16]
    path = cache / f"features-{key}.pt"
    if path.is_file():
        data = torch.load(path)
        log(f"features from cache {path}")
        return data["chosen"], data["rejected"]
    from tqdm.auto import tqdm

    from reward_models.active import Featurizer

    started = time.perf_counter()
    featurize = Featurizer(backbone, max_length=max_length)
    items = [(r.prompt, r.chosen) for r in records] + [(r.prompt, r.rejected) for r in records]
    with tqdm(total=len(items), desc="MiniLM features", unit="reply", file=sys.stderr) as bar:
        feats = featurize(items, progress=bar.update)
    n = len(records)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"chosen": feats[:n], "rejected": feats[n:]}, tmp)
    os.replace(tmp, path)
    log(f"features of {len(items)} replies in {time.perf_counter() - started:.0f} s -> {path}")
    return feats[:n], feats[n:]


def accuracy(head, chosen, rejected) -> float:
    m = head.score(chosen) - head.score(rejected)
    return float(((m > 0).float() + 0.5 * (m == 0).float()).mean())


def run_strategy(strategy: str, seed: int, pool, held, prompt_ids, seed_labels: int, batch: int, budget: int,
                 ensemble: int) -> list[tuple[int, float]]:
    """[(labels, held-out accuracy)] for one strategy and seed."""
    from reward_models.active import choose_batch, fit_heads, rank

    (pc, pr), (hc, hr) = pool, held
    rng = random.Random(seed)
    # The simulated annotator sees each pair in a random left/right order; the answer is "chosen".
    swap = [rng.random() < 0.5 for _ in range(len(pc))]
    a = pc.clone()
    b = pr.clone()
    for i, s in enumerate(swap):
        if s:
            a[i], b[i] = pr[i], pc[i]
    labelled = random.Random(1000 + seed).sample(range(len(pc)), seed_labels)  # same start for all
    curve = []
    while True:
        rows = sorted(labelled)
        heads = fit_heads(pc[rows], pr[rows], ensemble=ensemble if strategy == "disagreement" else 0, seed=seed,
                          l2_grid=L2_GRID, folds=3)
        curve.append((len(labelled), accuracy(heads.main, hc, hr)))
        if len(labelled) >= budget:
            return curve
        taken = set(labelled)
        candidates = [i for i in range(len(pc)) if i not in taken]
        per_prompt: dict = {}
        for i in labelled:
            per_prompt[prompt_ids[i]] = per_prompt.get(prompt_ids[i], 0) + 1
        priority = rank(strategy, heads, a, b, prompt_ids, per_prompt)
        labelled += choose_batch(priority, candidates, min(batch, budget - len(labelled)), rng)


def labels_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """The fewest labels from which the curve stays at or above ``target`` (a lucky dip above it,
    followed by a fall, does not count)."""
    needed = None
    for n, acc in reversed(curve):
        if acc < target - 1e-9:
            break
        needed = n
    return needed


def plot(curves: dict, budget: int, target: float, path: Path, n_seeds: int = 3) -> None:
    from reward_models.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, curve in curves.items():
        ax.plot([n for n, _ in curve], [acc for _, acc in curve], marker=".", label=name)
    ax.axhline(target, ls="--", color="grey", lw=0.8, label=f"random at {budget} labels")
    ax.set(xlabel="labels", ylabel=f"held-out accuracy (mean of {n_seeds} seeds)",
           title="HH harmless: BT head on MiniLM features, by assignment strategy")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller budget (under a minute once cached)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="HH-RLHF style JSONL (chosen/rejected)")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "rewardlab-bench-cache"))
    parser.add_argument("--png", default=str(REPO / "docs" / "active_learning_curve.png"))
    parser.add_argument("--budget", type=int, default=None, help="labels per run (default 600; quick 320)")
    parser.add_argument("--batch", type=int, default=None, help="labels between refreshes (default 40; quick 40)")
    parser.add_argument("--seed-labels", type=int, default=40, help="random labels every strategy starts from")
    parser.add_argument("--ensemble", type=int, default=5, help="bootstrap heads for 'disagreement'")
    parser.add_argument("--features-only", action="store_true", help="compute and cache the features, then stop")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per strategy, averaged (default 3)")
    args = parser.parse_args(argv)
    budget = args.budget or (320 if args.quick else 600)
    batch = args.batch or 40

    data = Path(args.data)
    if not data.is_file():
        log(f"skipped: no data at {data} (HH-RLHF harmless dev JSONL; pass --data)")
        print(json.dumps({"skipped": f"no data at {data}"}))
        return 0
    from reward_models.train import _prompt_key, load_pairs, split_held_out
    from rewardlab.workspace import STRATEGIES

    records, _counts = load_pairs(str(data))
    pool_records, held_records = split_held_out(records, 0.2, 0)
    chosen, rejected = features(pool_records + held_records, Path(args.cache))
    n = len(pool_records)
    if args.features_only:
        print(json.dumps({"pool": n, "held_out": len(held_records)}))
        return 0
    pool, held = (chosen[:n], rejected[:n]), (chosen[n:], rejected[n:])
    prompt_ids = [_prompt_key(r) for r in pool_records]
    log(f"{n} pool pairs ({len(set(prompt_ids))} prompts), {len(held_records)} held-out; budget {budget}, "
        f"batch {batch}, seed labels {args.seed_labels}")

    import torch

    torch.set_num_threads(1)  # small fits: threads cost more than they give on a shared CPU
    seeds = tuple(range(args.seeds))
    started = time.perf_counter()
    per_seed: dict = {}
    for strategy in STRATEGIES:
        per_seed[strategy] = []
        for seed in seeds:
            t = time.perf_counter()
            per_seed[strategy].append(run_strategy(strategy, seed, pool, held, prompt_ids, args.seed_labels, batch,
                                                   budget, args.ensemble))
            log(f"{strategy} seed {seed}: final {per_seed[strategy][-1][-1][1]:.3f} ({time.perf_counter() - t:.1f} s)")
    curves = {s: [(runs[0][i][0], statistics.mean(r[i][1] for r in runs)) for i in range(len(runs[0]))]
              for s, runs in per_seed.items()}
    target = curves["random"][-1][1]
    result = {"data": data.name, "pool": n, "held_out": len(held_records), "budget": budget, "batch": batch,
              "seed_labels": args.seed_labels, "seeds": list(seeds), "random_final_accuracy": round(target, 4),
              "final_accuracy": {s: round(c[-1][1], 4) for s, c in curves.items()},
              "final_accuracy_per_seed": {s: [round(r[-1][1], 4) for r in runs] for s, runs in per_seed.items()},
              "labels_to_match_random": {}, "label_ratio": {},
              "curves": {s: [[k, round(acc, 4)] for k, acc in c] for s, c in curves.items()}}
    for s, c in curves.items():
        needed = labels_to_reach(c, target)
        result["labels_to_match_random"][s] = needed
        result["label_ratio"][s] = None if needed is None else round(needed / budget, 3)
    others = [r for s, r in result["label_ratio"].items() if s != "random"]
    result["best_label_ratio"] = min((r for r in others if r is not None), default=None)
    result["target_met"] = result["best_label_ratio"] is not None and result["best_label_ratio"] <= 0.7
    result["seconds"] = round(time.perf_counter() - started, 1)
    png = Path(args.png)
    png.parent.mkdir(parents=True, exist_ok=True)
    plot(curves, budget, target, png, len(seeds))
    result["png"] = str(png)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
