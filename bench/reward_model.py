"""Reward model: the stock TRL recipe against ``rewardlab reward train``'s defaults, same data, same budget.

``python bench/reward_model.py [--quick] [--budget SECONDS] [--data PATH]``

Data: the HH-RLHF harmless development pairs in ``../shared/data/hh-rlhf/harmless_dev.jsonl``
(skipped with a message where absent), split 80/20 by prompt with seed 0 (the same held-out pairs
for both sides). Each side runs in its own child process, one after the other, under the same
wall-clock training budget (``--budget``, default 1200 s, the issue's 20 minutes; ``--quick``: 60 s
and 200 training pairs):

* **stock**: TRL's documented recipe: ``RewardTrainer`` with ``RewardConfig`` defaults (learning rate
  1e-4, three epochs, linear decay, gradient checkpointing), SmolLM2-135M-Instruct as a one-output
  sequence classifier, LoRA r=16 on q/v, max_length 512, batch 8, fed the HH transcripts as
  published (implicit prompt: the whole ``chosen`` and ``rejected`` conversations). Only what CPU
  requires is changed (``bf16=False``), plus a callback that stops it at the budget.
* **rewardlab**: ``rewardlab reward train`` with its default config (``time_budget_s`` = the same
  budget) and ``--eval-data`` = the held-out pairs.

Both are scored on the held-out pairs by the same rule (reward of chosen > reward of rejected).
Measured per side: held-out accuracy, training pairs per second (pairs seen / training seconds),
and the child's peak RSS (``os.wait4``'s ``ru_maxrss``, model loading included). The last line of
output is one JSON object with ``stock_accuracy``, ``rewardlab_accuracy``, ``stock_pairs_per_s``,
``rewardlab_pairs_per_s``, ``stock_peak_rss_mb``, ``rewardlab_peak_rss_mb`` (plus the length
baseline on the same held-out pairs, and the 1-minute load average around each child, since other
programs on the machine slow both sides down). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless_dev.jsonl"


def log(*parts) -> None:
    print("[reward_model]", *parts, file=sys.stderr, flush=True)


def split_data(data: Path, work: Path, train_pairs: int | None) -> dict:
    """Write train/held-out files for both sides; return their paths and the length baseline."""
    from reward_models.evaluate import _win
    from reward_models.train import _prompt_key, split_held_out
    from rewardlab.formats import split_hh_pair

    raw, records = [], []
    for line in data.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        try:
            prompt, chosen, rejected = split_hh_pair(row["chosen"], row["rejected"])
        except Exception:  # unparseable or identical transcripts: neither side trains on them
            continue
        if not chosen.strip() or not rejected.strip() or chosen.strip() == rejected.strip():
            continue
        raw.append(row)
        records.append((prompt, chosen, rejected))

    class _R:  # split_held_out keys on .prompt only
        def __init__(self, i):
            self.i, self.prompt = i, records[i][0]

    train, held = split_held_out([_R(i) for i in range(len(records))], 0.2, 0)
    train_idx = [r.i for r in train][: train_pairs or None]
    held_idx = [r.i for r in held]
    paths = {}
    for name, idx in (("train", train_idx), ("held_out", held_idx)):
        path = work / f"{name}.jsonl"
        path.write_text("".join(json.dumps(raw[i]) + "\n" for i in idx), encoding="utf-8")
        paths[name] = str(path)
    assert not {_prompt_key(r) for r in train} & {_prompt_key(r) for r in held}
    longer = sum(_win(len(records[i][1]) - len(records[i][2])) for i in held_idx) / len(held_idx)
    baseline = max(longer, 1 - longer)  # the better of "longer wins" and "shorter wins", as reward eval reports
    return {**paths, "n_train": len(train_idx), "n_held_out": len(held_idx), "length_baseline_accuracy": baseline}


# ---------------------------------------------------------------------------------------------
# The children
# ---------------------------------------------------------------------------------------------


def child_stock(train: str, held_out: str, out: Path, budget: float) -> dict:
    """TRL's recipe as its docs give it, stopped at ``budget`` seconds of training."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from rewardlab.models import resolve_model

    path = resolve_model("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    ds = datasets.load_dataset("json", data_files=train, split="train")

    class Budget(TrainerCallback):
        started, pairs = 0.0, 0

        def on_train_begin(self, args, state, control, **kw):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if time.perf_counter() - self.started >= budget:
                control.should_training_stop = True

    cb = Budget()
    args = RewardConfig(output_dir=str(out / "stock"), max_length=512, per_device_train_batch_size=8,
                        bf16=False, report_to="none", save_strategy="no", logging_steps=5, disable_tqdm=True)
    peft = LoraConfig(task_type="SEQ_CLS", r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"])
    trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer,
                            peft_config=peft, callbacks=[cb])
    trainer.train()
    seconds = time.perf_counter() - cb.started
    pairs = trainer.state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps
    pairs = min(pairs, int(len(ds) * (trainer.state.epoch or 0) + 0.5)) or pairs

    model = trainer.model.eval()
    wins, n = 0, 0
    with torch.no_grad():
        for line in Path(held_out).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            scores = []
            for text in (row["chosen"], row["rejected"]):
                ids = tokenizer(text, truncation=True, max_length=512, return_tensors="pt")
                scores.append(model(**ids).logits[0, 0].item())
            wins += scores[0] > scores[1]
            n += 1
    return {"accuracy": wins / n, "n": n, "pairs_per_s": pairs / seconds, "train_seconds": seconds,
            "steps": trainer.state.global_step}


def child_rewardlab(train: str, held_out: str, out: Path, budget: float) -> dict:
    """``rewardlab reward train`` with its defaults, the same budget and the same held-out pairs."""
    from reward_models.config import load_config
    from reward_models.train import train_reward_model

    config = load_config(None, {"time_budget_s": budget})
    summary = train_reward_model(config, train, out / "rewardlab", eval_data=held_out)
    return {"accuracy": summary["eval"]["accuracy"], "n": summary["eval"]["n"],
            "pairs_per_s": summary["pairs_per_s"], "train_seconds": summary["train_seconds"],
            "steps": summary["steps"], "epochs_done": summary["epochs_done"],
            "length_reward_correlation": summary["eval"]["length_reward_correlation"]}


def run_child(side: str, split: dict, out: Path, budget: float) -> dict:
    """Run one side in a child process; add its peak RSS and the load average around it."""
    result_file = out / f"{side}.json"
    cmd = [sys.executable, __file__, "--child", side, "--train", split["train"], "--held-out",
           split["held_out"], "--out", str(out), "--budget", str(budget)]
    load_before = os.getloadavg()[0]
    log(f"{side}: training for up to {budget:.0f} s")
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench/reward_model.py: the {side} child failed (exit {os.waitstatus_to_exitcode(status)})")
    result = json.loads(result_file.read_text())
    result.update(peak_rss_mb=round(usage.ru_maxrss / 1024, 1), wall_s=round(time.perf_counter() - started, 1),
                  load_before=round(load_before, 2), load_after=round(os.getloadavg()[0], 2))
    log(side, json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="60 s budget and 200 training pairs")
    p.add_argument("--budget", type=float, default=None, help="training seconds per side (default 1200)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="HH-RLHF JSONL (chosen/rejected transcripts)")
    p.add_argument("--sides", default="stock,rewardlab", help="which sides to run, comma-separated")
    p.add_argument("--child", choices=["stock", "rewardlab"], help=argparse.SUPPRESS)
    p.add_argument("--train", help=argparse.SUPPRESS)
    p.add_argument("--held-out", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        fn = child_stock if args.child == "stock" else child_rewardlab
        result = fn(args.train, args.held_out, args.out, args.budget)
        (args.out / f"{args.child}.json").write_text(json.dumps(result))
        return 0

    if not args.data.is_file():
        print(f"skipped: {args.data} is absent (the HH-RLHF development data lives in ../shared/data/)")
        return 0
    budget = args.budget or (60.0 if args.quick else 1200.0)
    with tempfile.TemporaryDirectory(prefix="rewardlab-bench-rm-") as tmp:
        work = Path(tmp)
        split = split_data(args.data, work, 200 if args.quick else None)
        log(f"{split['n_train']} training pairs, {split['n_held_out']} held out; "
            f"length baseline {split['length_baseline_accuracy']:.3f}")
        results = {side: run_child(side, split, work, budget) for side in args.sides.split(",")}
    final = {"budget_s": budget, "n_train": split["n_train"], "n_held_out": split["n_held_out"],
             "length_baseline_accuracy": round(split["length_baseline_accuracy"], 4)}
    for side, r in results.items():
        final.update({f"{side}_accuracy": round(r["accuracy"], 4), f"{side}_pairs_per_s": round(r["pairs_per_s"], 3),
                      f"{side}_peak_rss_mb": r["peak_rss_mb"], f"{side}_train_seconds": round(r["train_seconds"], 1),
                      f"{side}_load": [r["load_before"], r["load_after"]]})
    if "stock" in results and "rewardlab" in results:
        final["rewardlab_wins"] = results["rewardlab"]["accuracy"] > results["stock"]["accuracy"]
    print(json.dumps(final))
    return 0


if __name__ == "__main__":
    sys.exit(main())
