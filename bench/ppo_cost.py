"""PPO cost: rewardlab's layout against the stock TRL layout, same prompts, same PPO config.

``python bench/ppo_cost.py [--quick] [--model smollm2-135m] [--value-model shared|separate]``

Two layouts of trl 1.12's ``trl.experimental.ppo.PPOTrainer``, each in its own child process (run
one after the other), on the same prompts (the first ``--prompts-count`` of ``data/prompts.jsonl``)
and the same PPO config (batch 4 per update, response_length 32, one PPO epoch, one mini-batch):

* **stock**: the layout of TRL's PPO example: full-parameter policy, a separate reference copy, a
  full-parameter value model (sequence classifier of the same base), and the reward model fed the
  policy's token ids directly;
* **rewardlab**: ``train.ppo.run_ppo``: LoRA policy, reference = the policy with adapters off, the
  configured value model, the reward model behind ``ComposedRewardForPPO`` (re-tokenizes the text).

The reward model is the same in both: a sequence classifier of the same base (random score head,
seed 0) written once as a ``rewardlab reward train`` style folder. Measured per layout: peak RSS of
the child (``os.wait4``'s ``ru_maxrss``: the whole process, model loading included) and seconds per
update: the median over the updates after the first (which warms caches up), and beside it the
fastest update and the process CPU seconds per update, which move less when other programs share
the machine (the 1-minute load average before and after each child is reported). ``--quick`` runs 3 updates
per layout (about 2-4 minutes on 2 CPU cores); the default runs 8 (16 prompts, two epochs).

The last line of output is one JSON object with ``rss_ratio`` and ``seconds_per_update_ratio``
(rewardlab / stock: lower is better; also ``seconds_per_update_min_ratio`` and
``cpu_seconds_per_update_ratio``); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def log(*parts) -> None:
    print("[ppo_cost]", *parts, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Shared inputs
# ---------------------------------------------------------------------------------------------


def write_inputs(work: Path, model: str, count: int) -> tuple[Path, Path]:
    """(prompt file with ``count`` prompts, reward-model folder) in ``work``."""
    import torch

    from rewardlab.models import load_sequence_classifier, load_tokenizer
    from reward_models.scorer import RewardFormat

    rows = [json.loads(line) for line in (REPO / "data" / "prompts.jsonl").read_text().splitlines() if line.strip()]
    if len(rows) < count:
        raise SystemExit(f"data/prompts.jsonl has {len(rows)} prompts, fewer than --prompts-count {count}")
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows[:count]))
    rm = work / "reward_model"
    tokenizer = load_tokenizer(model, padding_side="right")
    torch.manual_seed(0)
    classifier = load_sequence_classifier(model, tokenizer=tokenizer)
    classifier.save_pretrained(rm)
    tokenizer.save_pretrained(rm)
    RewardFormat(style="conversational", max_length=512).save(rm)
    (rm / "reward_stats.json").write_text(json.dumps({"mean": 0.0, "std": 1.0}) + "\n")
    return prompts, rm


# ---------------------------------------------------------------------------------------------
# Children
# ---------------------------------------------------------------------------------------------


def child_stock(spec: dict) -> dict:
    """The stock TRL layout; returns seconds per update."""
    import torch
    from transformers import AutoModelForSequenceClassification, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from rewardlab.models import load_causal_lm, load_sequence_classifier, load_tokenizer
    from train.ppo_data import build_prompt_dataset

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    tokenizer = load_tokenizer(spec["model"], padding_side="left")  # pad != eos, or TRL's masks break
    dataset, _ = build_prompt_dataset(spec["prompts"], tokenizer, 256)
    policy = load_causal_lm(spec["model"], tokenizer=tokenizer)
    ref = load_causal_lm(spec["model"], tokenizer=tokenizer)
    value = load_sequence_classifier(spec["model"], tokenizer=tokenizer)
    reward = AutoModelForSequenceClassification.from_pretrained(spec["reward"], num_labels=1)
    reward.config.pad_token_id = tokenizer.pad_token_id
    stamps = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            stamps.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, *a, **k):
            stamps.append((time.perf_counter(), time.process_time()))
            log(f"stock: update {len(stamps) - 1} took {stamps[-1][0] - stamps[-2][0]:.1f} s")

    args = PPOConfig(
        output_dir=spec["out"], report_to=[], use_cpu=not torch.cuda.is_available(), bf16=False, fp16=False,
        per_device_train_batch_size=spec["batch"], gradient_accumulation_steps=1, num_mini_batches=1,
        local_rollout_forward_batch_size=spec["batch"], num_ppo_epochs=1, total_episodes=spec["episodes"],
        response_length=spec["response_length"], temperature=0.7, kl_coef=0.05, learning_rate=3e-6,
        stop_token="eos", num_sample_generations=0, save_strategy="no", logging_steps=1, seed=42,
    )
    trainer = PPOTrainer(
        args=args, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=reward,
        train_dataset=dataset, value_model=value, eval_dataset=dataset.select(range(spec["batch"])),
        callbacks=[Clock()],
    )
    trainer.train()
    pairs = list(zip(stamps, stamps[1:]))
    return {"seconds": [b[0] - a[0] for a, b in pairs], "cpu_seconds": [b[1] - a[1] for a, b in pairs]}


def child_rewardlab(spec: dict) -> dict:
    """rewardlab's layout through run_ppo; returns seconds per update."""
    from train.ppo import METRICS_FILE, run_ppo
    from train.ppo_config import load_config

    config = load_config(None, {
        "policy": spec["model"], "per_device_train_batch_size": spec["batch"], "gradient_accumulation_steps": 1,
        "num_mini_batches": 1, "local_rollout_forward_batch_size": spec["batch"], "num_ppo_epochs": 1,
        "total_episodes": spec["episodes"], "response_length": spec["response_length"], "temperature": 0.7,
        "kl_coef": 0.05, "save_every": 0, "sample_every": 0, "value_model": spec["value_model"], "seed": 42,
        "cpu_threads": spec["threads"],
    })
    run_ppo(config, reward=spec["reward"], prompts=spec["prompts"], out=spec["out"])
    rows = [json.loads(line) for line in (Path(spec["out"]) / METRICS_FILE).read_text().splitlines() if line]
    for row in rows:
        log(f"rewardlab: update {row['update']} took {row['seconds']:.1f} s")
    return {"seconds": [row["seconds"] for row in rows], "cpu_seconds": [row["cpu_seconds"] for row in rows]}


def run_child(layout: str, spec: dict) -> dict:
    """Run one layout in a fresh process; add its peak RSS (MB) and mean seconds per update."""
    result_file = Path(spec["out"] + ".json")
    cmd = [sys.executable, __file__, "--child", layout, "--spec", json.dumps({**spec, "result": str(result_file)})]
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    proc = subprocess.Popen(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{layout} child failed with status {os.waitstatus_to_exitcode(status)}")
    result = json.loads(result_file.read_text())
    wall, cpu = result["seconds"], result["cpu_seconds"]
    skip = 1 if len(wall) > 1 else 0  # the first update warms caches up
    return {
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "seconds_per_update": round(statistics.median(wall[skip:]), 2),
        "seconds_per_update_min": round(min(wall[skip:]), 2),
        "cpu_seconds_per_update": round(statistics.median(cpu[skip:]), 2),
        "seconds_per_update_all": [round(s, 2) for s in wall],
        "wall_seconds": round(time.perf_counter() - started, 1),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 updates per layout instead of 8")
    parser.add_argument("--model", default="smollm2-135m", help="policy base model (and reward / value base)")
    parser.add_argument("--prompts-count", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4, help="prompts per update")
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--value-model", default="shared", choices=["shared", "separate"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads in both layouts (0: all cores)")
    parser.add_argument("--only", choices=["stock", "rewardlab"], default=None, help="run one layout")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

    if args.child:
        spec = json.loads(args.spec)
        result = (child_stock if args.child == "stock" else child_rewardlab)(spec)
        Path(spec["result"]).write_text(json.dumps(result))
        return

    updates = 3 if args.quick else 8
    with tempfile.TemporaryDirectory(prefix="ppo_cost_") as tmp:
        work = Path(tmp)
        log(f"writing {args.prompts_count} prompts and a reward model of {args.model} into {work}")
        prompts, rm = write_inputs(work, args.model, args.prompts_count)
        spec = {
            "model": args.model, "prompts": str(prompts), "reward": str(rm), "batch": args.batch,
            "episodes": updates * args.batch, "response_length": args.response_length,
            "value_model": args.value_model, "threads": args.threads,
        }
        results = {}
        for layout in ("stock", "rewardlab"):
            if args.only and layout != args.only:
                continue
            log(f"{layout}: {updates} updates ...")
            results[layout] = run_child(layout, {**spec, "out": str(work / layout)})
            log(f"{layout}: {json.dumps(results[layout])}")
    out = {
        "bench": "ppo_cost",
        "model": args.model,
        "prompts": args.prompts_count,
        "batch": args.batch,
        "response_length": args.response_length,
        "num_ppo_epochs": 1,
        "updates": updates,
        "value_model": args.value_model,
        "cpus": os.cpu_count(),
        "threads": args.threads or os.cpu_count(),
        **results,
    }
    if "stock" in results and "rewardlab" in results:
        out["rss_ratio"] = round(results["rewardlab"]["peak_rss_mb"] / results["stock"]["peak_rss_mb"], 3)
        for key in ("seconds_per_update", "seconds_per_update_min", "cpu_seconds_per_update"):
            out[f"{key}_ratio"] = round(results["rewardlab"][key] / results["stock"][key], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
