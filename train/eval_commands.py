"""The ``rewardlab evaluate`` command: base vs aligned, and the human win-rate.

``rewardlab/cli.py`` calls ``register(subparsers)``. Two modes::

    rewardlab evaluate --base M --aligned DIR --reward R --prompts P --out DIR [--judge J] [--queue DB] ...
    rewardlab evaluate --human DB [--tag T]

Both print a few readable lines and, as the last line, one JSON object.
"""

from __future__ import annotations

import json

from rewardlab.errors import RewardlabError

_GENERATION_ARGS = ("aligned", "reward", "prompts", "out")


def _ci(ci) -> str:
    return "n/a" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def cmd_evaluate(args) -> int:
    if args.human:
        return _human(args)
    missing = [f"--{a}" for a in _GENERATION_ARGS if getattr(args, a) is None]
    if missing:
        raise RewardlabError(f"evaluate needs {', '.join(missing)} (or --human DB to report a human win-rate)")
    from train.evaluate import EvalConfig, evaluate

    cfg = EvalConfig(aligned=args.aligned, reward=args.reward, prompts=args.prompts, out=str(args.out), base=args.base,
                     judge=args.judge, n=args.n, field=args.field, max_new_tokens=args.max_new_tokens,
                     temperature=args.temperature, top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
                     device=args.device, queue=args.queue, tag=args.tag, overlap=args.overlap)
    r = evaluate(cfg)
    print(f"reward: base {r['reward_base_mean']:.3f}, aligned {r['reward_aligned_mean']:.3f}; "
          f"delta {r['reward_delta']:+.3f} {_ci(r['reward_delta_ci'])}; win rate {r['win_rate']:.3f} "
          f"{_ci(r['win_rate_ci'])} over {r['n']} prompts")
    if r["judge_win_rate"] is not None:
        print(f"judge: delta {r['judge_delta']:+.3f} {_ci(r['judge_delta_ci'])}; win rate {r['judge_win_rate']:.3f} "
              f"{_ci(r['judge_win_rate_ci'])}")
    kl = "n/a" if r["kl"] is None else f"{r['kl']:.4f} nats (token log-ratio {r['kl_sampled']:.4f})"
    print(f"KL(aligned || base) per reply: {kl}; reply tokens base {r['response_tokens_base']:.1f}, "
          f"aligned {r['response_tokens_aligned']:.1f}")
    if "queue" in r:
        q = r["queue"]
        print(f"queued {q['queued']} blind pairs as {q['tag']} in {q['db']} ({q['already_queued']} already there, "
              f"{q['identical_skipped']} identical replies skipped)")
    print(f"report: {r['files']['report_md']}")
    keys = ("n", "reward_base_mean", "reward_aligned_mean", "reward_delta", "reward_delta_ci", "win_rate",
            "win_rate_ci", "judge_win_rate", "judge_win_rate_ci", "kl", "kl_sampled", "response_tokens_base",
            "response_tokens_aligned")
    summary = {k: r[k] for k in keys}
    summary.update(out=str(args.out), **({"queue": r["queue"]} if "queue" in r else {}))
    print(json.dumps(summary))
    return 0


def _human(args) -> int:
    used = [f"--{a}" for a in (*_GENERATION_ARGS, "queue", "judge") if getattr(args, a) is not None]
    if used:
        raise RewardlabError(f"--human reports labels already in the store; drop {', '.join(used)}")
    from train.human_eval import human_win_rate

    r = human_win_rate(args.human, args.tag)
    if r["n"]:
        print(f"human win rate of aligned over base ({r['tag']}): {r['win_rate']:.3f} {_ci(r['win_rate_ci'])} "
              f"from {r['n']} labels: {r['aligned_wins']} aligned, {r['base_wins']} base, {r['ties']} ties; "
              f"{r['both_bad']} both bad")
    else:
        print(f"no labels yet on the {r['comparisons']} pairs tagged {r['tag']}; annotate them with `rewardlab annotate`")
    print(json.dumps(r))
    return 0


def register(subparsers) -> None:
    """Add ``evaluate`` to the CLI's subparsers."""
    q = subparsers.add_parser(
        "evaluate", help="compare base and aligned policies (reward, judge, KL, samples); human win-rate",
        description="Compare base and aligned on held-out prompts, or (--human DB) report the human win-rate "
                    "of pairs queued with --queue.", allow_abbrev=False)
    q.add_argument("--base", default=None, help="base model (default: the adapter's base, else smollm2-135m)")
    q.add_argument("--aligned", default=None, help="LoRA adapter folder or full model folder of the aligned policy")
    q.add_argument("--reward", default=None, help="composed-reward YAML or `reward train` folder")
    q.add_argument("--judge", default=None, help="a second reward (YAML or folder) to catch reward hacking")
    q.add_argument("--prompts", default=None, help="held-out prompts (file, datasets folder or hub name)")
    q.add_argument("--field", default=None, help="column holding the prompt (default: detected)")
    q.add_argument("--out", default=None, help="output folder for report.json, report.md, samples.jsonl, plots")
    q.add_argument("--n", type=int, default=None, help="use the first N prompts (default: all)")
    q.add_argument("--max-new-tokens", type=int, default=128, help="longest reply, in tokens")
    q.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    q.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold when sampling")
    q.add_argument("--seed", type=int, default=0, help="seed of each generation batch, the same for both models")
    q.add_argument("--batch-size", type=int, default=8, help="prompts generated and scored together")
    q.add_argument("--device", default="auto", help="cpu, cuda or auto")
    q.add_argument("--queue", default=None, metavar="DB",
                   help="also put the base-vs-aligned pairs into this annotation store (SQLite file or URL), blind")
    q.add_argument("--tag", default=None,
                   help="name of this evaluation in the store (comparisons tagged eval:TAG; default: aligned folder name)")
    q.add_argument("--overlap", type=int, default=1, help="labels each queued pair collects")
    q.add_argument("--human", default=None, metavar="DB", help="report the human win-rate from this store's labels")
    q.set_defaults(func=cmd_evaluate)
