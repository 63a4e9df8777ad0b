"""PPO quality: does aligning the default model against an HH-trained reward really raise held-out reward?

``python bench/ppo_quality.py --reward RM_DIR [--judge JUDGE_DIR] [--quick] [--out DIR] [--key value ...]``

Data: the HH-RLHF harmless development pairs in ``../shared/data/hh-rlhf/harmless_dev.jsonl``
(skipped with a message where absent), split 80/20 by prompt with seed 0 exactly as ``reward train``
and ``bench/reward_model.py`` split them. ``--reward`` must be a reward model trained on the 80%
(e.g. ``rewardlab reward train --data <the 80%> --out RM_DIR``); PPO trains on prompts of the 80%,
and the evaluation uses the held-out 20%, whose prompts neither the reward model nor PPO saw.
``--judge`` is a second reward model trained on other data (the bench in docs/benchmarks.md uses
one trained on the PandaLM and Open-Assistant preference sets), so reward hacking would show as a
reward win-rate the judge does not share.

Steps: ``rewardlab ppo`` (default policy, LoRA; the config below plus any ``--key value``), then
``rewardlab evaluate`` base vs aligned on the first ``--eval-prompts`` held-out prompts (greedy),
for the final adapter and for the checkpoints of ``--eval-checkpoints`` (KL to the base grows with
updates, and the bound is on the evaluated KL). A finished run in ``--out`` is not trained again,
and an evaluation already written is not redone, so the command can be re-run to add checkpoints.
The last line of output is one JSON object for the headline adapter (the latest one within the KL
bound, else the final one): ``updates``, ``reward_delta`` and ``reward_delta_ci`` (paired 95%),
``win_rate``, ``judge_win_rate``, ``kl`` (mean per-response KL to the base, nats), ``kl_bound`` and
``kl_within_bound``, ``interval_excludes_zero``; then ``evaluated`` (the same for every evaluated
adapter, latest first), the run's seconds and the config used.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless_dev.jsonl"
KL_BOUND = 8.0
"""The stated bound: mean KL(aligned || base) per held-out response, in nats (sum over its tokens)."""

PPO_CONFIG = {  # CPU settings: about 23 minutes on 2 cores (64 updates of 8 prompts, ~21 s each)
    "total_episodes": 512, "per_device_train_batch_size": 8, "num_mini_batches": 2,
    "local_rollout_forward_batch_size": 16, "response_length": 48, "max_prompt_length": 128,
    "learning_rate": 5e-4, "lr_scheduler_type": "constant", "kl_coef": 0.05, "temperature": 0.7,
    "num_ppo_epochs": 2, "save_every": 8, "keep_checkpoints": 10, "sample_every": 8, "cpu_threads": 2,
}
EVAL_CHECKPOINTS = (40, 48, 56)
"""Besides the final adapter, these checkpoints (updates) are evaluated too: the headline is the latest
adapter whose held-out KL is within KL_BOUND (KL grows with updates; a later one may exceed it)."""
QUICK = {"total_episodes": 32, "save_every": 4, "sample_every": 2}


def log(*parts) -> None:
    print("[ppo_quality]", *parts, file=sys.stderr, flush=True)


def write_prompts(data: Path, work: Path) -> tuple[Path, Path]:
    """The 80% (PPO) and 20% (evaluation) prompts of the HH split, one conversation per line."""
    from reward_models.train import load_pairs, split_held_out

    records, _ = load_pairs(str(data))
    train, held = split_held_out(records, 0.2, 0)
    paths = []
    for name, rows in (("ppo_prompts", train), ("heldout_prompts", held)):
        seen, lines = set(), []
        for r in rows:
            key = json.dumps(r.prompt, sort_keys=True)
            if key not in seen:
                seen.add(key)
                lines.append(json.dumps({"prompt": r.prompt}) + "\n")
        path = work / f"{name}.jsonl"
        path.write_text("".join(lines), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def run(cmd: list[str], log_path: Path) -> float:
    log(" ".join(cmd[2:]))
    started = time.perf_counter()
    with log_path.open("w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT,
                               env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    if code != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise SystemExit(f"bench/ppo_quality.py: `{' '.join(cmd[2:4])}` failed (exit {code}): {' | '.join(tail)}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reward", required=True, help="reward model folder trained on the 80%% split")
    p.add_argument("--judge", default=None, help="a second reward model, trained on other data")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=Path("runs/ppo_quality"))
    p.add_argument("--eval-prompts", type=int, default=96, help="held-out prompts evaluated (default 96)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--quick", action="store_true", help="32 episodes and 16 held-out prompts (a smoke run)")
    p.add_argument("--eval-checkpoints", default=None,
                   help="comma list of checkpoint updates evaluated besides the final adapter "
                        f"(default {','.join(map(str, EVAL_CHECKPOINTS))}; none with --quick; '' for none)")
    args, overrides = p.parse_known_args(argv)

    if not args.data.is_file():
        print(f"skipped: {args.data} is absent (the HH-RLHF development data lives in ../shared/data/)")
        return 0
    config = {**PPO_CONFIG, **(QUICK if args.quick else {})}
    it = iter(overrides)
    for key in it:
        if not key.startswith("--"):
            raise SystemExit(f"bench/ppo_quality.py: unexpected argument {key!r}")
        config[key[2:]] = next(it, None)
    eval_n = 16 if args.quick else args.eval_prompts

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ppo_prompts, held = write_prompts(args.data, out)
    cli = [sys.executable, "-m", "rewardlab.cli"]
    ppo_cmd = [*cli, "ppo", "--reward", args.reward, "--prompts", str(ppo_prompts), "--out", str(out / "run")]
    for k, v in config.items():
        ppo_cmd += [f"--{k}", str(v)]
    if (out / "run" / "checkpoints").is_dir():
        ppo_cmd.append("--resume")
    started = time.perf_counter()
    if (out / "run" / "ppo_summary.json").is_file():
        log(f"{out / 'run'} is a finished run: not trained again")
    else:
        run(ppo_cmd, out / "ppo.log")
    ppo_s = time.perf_counter() - started
    ckpts = (() if args.quick else EVAL_CHECKPOINTS) if args.eval_checkpoints is None else \
        tuple(int(x) for x in args.eval_checkpoints.split(",") if x.strip())
    summary = json.loads((out / "run" / "ppo_summary.json").read_text())
    ppo_s = ppo_s if ppo_s > 1.0 else float(summary.get("seconds") or 0.0)  # an earlier invocation's run
    adapters = [(summary["updates"], out / "run", out / "eval")]
    for u in ckpts:
        folder = out / "run" / "checkpoints" / f"update-{u:06d}" / "adapter"
        if u >= summary["updates"] or not folder.is_dir():
            log(f"no checkpoint at update {u} (kept: save_every / keep_checkpoints); skipped")
            continue
        adapters.append((u, folder, out / f"eval-update-{u}"))
    evaluated = []
    eval_s = 0.0
    for updates, folder, eval_out in sorted(adapters, key=lambda a: -a[0]):
        if not (eval_out / "report.json").is_file():
            eval_cmd = [*cli, "evaluate", "--aligned", str(folder), "--reward", args.reward, "--prompts",
                        str(held), "--n", str(eval_n), "--max-new-tokens", str(args.max_new_tokens),
                        "--out", str(eval_out)]
            if args.judge:
                eval_cmd += ["--judge", args.judge]
            eval_s += run(eval_cmd, eval_out.parent / f"{eval_out.name}.log")
        report = json.loads((eval_out / "report.json").read_text())
        evaluated.append((updates, eval_out, report))

    def row(updates, eval_out, report):
        lo, hi = report["reward_delta_ci"]
        return {
            "updates": updates, "reward_delta": report["reward_delta"], "reward_delta_ci": report["reward_delta_ci"],
            "interval_excludes_zero": lo > 0 or hi < 0,
            "win_rate": report["win_rate"], "win_rate_ci": report.get("win_rate_ci"),
            "judge_win_rate": report.get("judge_win_rate"), "judge_win_rate_ci": report.get("judge_win_rate_ci"),
            "kl": report.get("kl"), "kl_ci": report.get("kl_ci"), "kl_bound": KL_BOUND,
            "kl_within_bound": report.get("kl") is not None and report["kl"] <= KL_BOUND,
            "response_tokens_base": report.get("response_tokens_base"),
            "response_tokens_aligned": report.get("response_tokens_aligned"),
            "report": str(eval_out / "report.md"),
        }

    rows = [row(*e) for e in evaluated]  # latest first
    headline = next((r for r in rows if r["kl_within_bound"]), rows[0])
    final = {**headline, "headline": ("the latest adapter within the KL bound" if headline["kl_within_bound"]
                                      else "the final adapter (none within the KL bound)"),
             "updates_run": summary["updates"], "n_eval": eval_n, "ppo_seconds": round(ppo_s, 1),
             "eval_seconds": round(eval_s, 1), "config": config, "evaluated": rows}
    print(json.dumps(final))
    return 0


if __name__ == "__main__":
    sys.exit(main())
