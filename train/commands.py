"""The ``rewardlab ppo`` subcommand.

``rewardlab/cli.py`` calls ``register(subparsers)``; ``cmd_ppo`` parses nothing itself and calls
``train.ppo.run_ppo``. Under several processes: ``accelerate launch ... -m rewardlab.cli ppo ...``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path



class _OverridesParser(argparse.ArgumentParser):
    """Keeps unknown ``--key value`` arguments in ``args.overrides`` (checked against the config
    later, where an unknown key is an error listing the valid ones) instead of failing on them."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, rest = super().parse_known_args(args, namespace)
        namespace.overrides = list(getattr(namespace, "overrides", None) or []) + list(rest)
        return namespace, []


def cmd_ppo(args) -> int:
    from train.ppo import run_ppo
    from train.ppo_config import load_config

    overrides = list(getattr(args, "overrides", None) or [])
    if args.policy:
        overrides += ["--policy", args.policy]
    config = load_config(args.config, overrides)
    s = run_ppo(config, reward=args.reward, prompts=args.prompts, out=args.out, resume=args.resume)
    if s:  # the main process
        p = s["prompts"]
        print(f"PPO on {s['policy']}: {s['updates']} updates ({s['episodes']} episodes) in {s['seconds']} s "
              f"({s['seconds_per_update']} s/update); mean reward {s['reward_first_quarter']} -> "
              f"{s['reward_last_quarter']} (first -> last quarter), KL {s['kl_last_quarter']}")
        print(f"prompts: {p['prompts']} ({p['duplicates']} duplicates dropped, {p['truncated']} cut to "
              f"{p['max_prompt_length']} tokens); adapter saved to {s['adapter']}"
              + (f"; merged model in {s['merged']}" if s["merged"] else ""))
        print(json.dumps(s))
    return 0


def register(subparsers) -> None:
    """Add ``ppo`` to the CLI's subparsers."""
    from train.ppo_config import help_epilog

    q = subparsers.add_parser(
        "ppo", help="align a policy with a reward: TRL PPO with LoRA adapters",
        description="Train LoRA adapters on the policy with PPO against a composed reward. "
                    "Config: defaults < --config YAML < --key value overrides.",
        epilog=help_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
    )
    q.__class__ = _OverridesParser
    q.add_argument("--reward", required=True,
                   help="composed-reward YAML, or a `rewardlab reward train` folder (normalized with its saved stats)")
    q.add_argument("--prompts", required=True,
                   help="prompt file (JSONL/JSON/CSV), datasets folder or hub name (preference sets give their "
                        "prompts, HH-RLHF included), or the annotation store (sqlite:///path.db or any SQLAlchemy URL)")
    q.add_argument("--out", required=True, type=Path, help="run folder: adapter, checkpoints, metrics, plots, samples")
    q.add_argument("--policy", default=None, help="policy base model (overrides the config's policy)")
    q.add_argument("--config", default=None, type=Path, help="YAML file of config keys (see below)")
    q.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    q.set_defaults(func=cmd_ppo)
