"""The ``rewardlab reward`` subcommands: train, eval, score.

``rewardlab/cli.py`` calls ``register(subparsers)``; each command is a ``cmd_*`` function that
parses nothing itself and calls one function of this stage.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rewardlab.errors import RewardlabError


class _CommandParser(argparse.ArgumentParser):
    """An ArgumentParser that, when ``collect_overrides`` is set, keeps unknown ``--key value``
    arguments in ``args.overrides`` (checked against the config later) instead of failing on them."""

    collect_overrides = False

    def parse_known_args(self, args=None, namespace=None):
        namespace, rest = super().parse_known_args(args, namespace)
        if self.collect_overrides:
            namespace.overrides = list(getattr(namespace, "overrides", None) or []) + list(rest)
            rest = []
        return namespace, rest


# --- commands ------------------------------------------------------------------------------------


def cmd_reward_train(args) -> int:
    from reward_models.config import load_config
    from reward_models.train import train_reward_model

    overrides = list(getattr(args, "overrides", None) or [])
    if args.model:
        overrides += ["--model", args.model]
    config = load_config(args.config, overrides)
    s = train_reward_model(config, args.data, args.out, eval_data=args.eval_data, resume=args.resume)
    skipped = s["skipped_identical"] + s["skipped_empty"]
    print(f"trained {s['model']} ({'LoRA' if s['lora'] else 'full'}, {s['style']}) on {s['pairs_train']} pairs: "
          f"{s['steps']} steps in {s['train_seconds']} s ({s['pairs_per_s']} pairs/s, {s['stopped']}); "
          f"{skipped} pairs skipped ({s['skipped_identical']} identical, {s['skipped_empty']} empty); "
          f"{s['truncated_train']} cut to max_length")
    if "eval" in s:
        e = s["eval"]
        lo, hi = e["accuracy_ci"]
        print(f"held-out: accuracy {e['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] on {e['n']} pairs; "
              f"length baseline {e['length_baseline_accuracy']:.3f}; plots in {Path(s['out']) / 'eval'}")
    print(f"saved to {s['out']}")
    print(json.dumps(s))
    return 0


def cmd_reward_eval(args) -> int:
    from reward_models.evaluate import evaluate_reward_model

    r = evaluate_reward_model(args.model, args.data, out_dir=args.out, batch_size=args.batch_size)
    lo, hi = r["accuracy_ci"]
    print(f"accuracy {r['accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f}, n={r['n']}); mean margin {r['mean_margin']:.3f}; "
          f"ECE {r['ece']:.3f}")
    print(f"length baseline {r['length_baseline_accuracy']:.3f} (longer wins {r['longer_wins_accuracy']:.3f}); "
          f"reward-length correlation {r['length_reward_correlation'] if r['length_reward_correlation'] is None else round(r['length_reward_correlation'], 3)}"
          + ("" if r["beats_length_baseline"] else "  <- NOT above the length baseline"))
    for who, a in sorted((r["per_annotator"] or {}).items()):
        print(f"  annotator {who}: agreement {a['agreement']:.3f} on {a['n']} pairs")
    if args.out:
        print(f"report and plots in {args.out}")
    if args.json:
        print(json.dumps(r))
    return 0


def cmd_reward_score(args) -> int:
    from tqdm import tqdm

    from reward_models.scorer import RewardModelScorer, as_messages
    from rewardlab.formats import read_jsonl, write_jsonl

    rows = read_jsonl(args.input)
    if not rows:
        raise RewardlabError(f"{args.input}: no rows; give one JSON object per line with prompt and response")
    prompts, responses = [], []
    for n, row in enumerate(rows, 1):
        prompt = row.get("prompt", row.get("messages"))
        if prompt is None or "response" not in row:
            missing = " and ".join(k for k, ok in (("prompt", prompt is not None), ("response", "response" in row)) if not ok)
            raise RewardlabError(f"{args.input}:row {n}: missing {missing}; each row needs prompt (text or messages) and response")
        if not isinstance(row["response"], str):
            raise RewardlabError(f"{args.input}:row {n}: response must be text")
        try:
            prompts.append(as_messages(prompt))
        except RewardlabError as e:
            raise RewardlabError(f"{args.input}:row {n}: {e}") from None
        responses.append(row["response"])
    scorer = RewardModelScorer(args.model, batch_size=args.batch_size)
    chunk = max(args.batch_size * 8, 64)
    rewards: list[float] = []
    for lo in tqdm(range(0, len(rows), chunk), desc="scoring", unit="chunk", disable=len(rows) <= chunk):
        rewards += scorer.score(prompts[lo: lo + chunk], responses[lo: lo + chunk])
    mean, std = float(scorer.stats.get("mean", 0.0)), float(scorer.stats.get("std", 1.0)) or 1.0
    for row, reward in zip(rows, rewards):
        row["reward"] = reward
        if args.normalized:
            row["reward_normalized"] = (reward - mean) / std
    write_jsonl(args.out, rows)
    print(f"scored {len(rows)} responses with {args.model}; wrote {args.out}")
    return 0


# --- parser --------------------------------------------------------------------------------------


def register(subparsers) -> None:
    """Add ``reward train|eval|score`` to the CLI's subparsers."""
    from reward_models.config import help_epilog

    p = subparsers.add_parser("reward", help="train, evaluate and use reward models")
    rsub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_CommandParser)
    rsub.required = True

    q = rsub.add_parser(
        "train", help="train a reward model (TRL RewardTrainer) on preference pairs",
        description="Train a reward model. Config: defaults < --config YAML < --key value overrides.",
        epilog=help_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
    )
    q.collect_overrides = True
    q.add_argument("--data", required=True,
                   help="preference pairs: `rewardlab export` folder, JSONL/JSON/CSV, TRL dataset folder or hub name, HH-RLHF JSONL")
    q.add_argument("--out", required=True, type=Path, help="output folder (a from_pretrained model folder)")
    q.add_argument("--model", default=None, help="backbone (overrides the config's model)")
    q.add_argument("--eval-data", default=None, help="held-out pairs (default: eval_fraction of the prompts is held out)")
    q.add_argument("--config", default=None, type=Path, help="YAML file of config keys (see below)")
    q.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out from its last checkpoint (same data and config)")
    q.set_defaults(func=cmd_reward_train)

    q = rsub.add_parser("eval", help="report card of a reward model on labelled pairs", allow_abbrev=False)
    q.add_argument("--model", required=True, help="a `reward train` output folder")
    q.add_argument("--data", required=True, help="labelled pairs (any format `reward train` reads)")
    q.add_argument("--out", default=None, type=Path, help="folder for eval.json, pair_scores.jsonl and PNG plots")
    q.add_argument("--batch-size", type=int, default=16, help="sequences scored together")
    q.add_argument("--json", action="store_true", help="print the whole report as one JSON object (last line)")
    q.set_defaults(func=cmd_reward_eval)

    q = rsub.add_parser("score", help="score a JSONL of (prompt, response) rows", allow_abbrev=False)
    q.add_argument("--model", required=True, help="a `reward train` output folder")
    q.add_argument("--input", required=True, type=Path, help="JSONL rows with prompt (text or messages) and response")
    q.add_argument("--out", required=True, type=Path, help="JSONL written: the input rows plus reward")
    q.add_argument("--batch-size", type=int, default=16, help="sequences scored together")
    q.add_argument("--normalized", action="store_true", help="also write reward_normalized = (reward - mean) / std")
    q.set_defaults(func=cmd_reward_score)
