"""Benchmark: candidate generation, rewardlab's batched path against one-prompt-at-a-time generate.

Both sides run in this process on the same prompts with the same settings: model, chat template,
max_new_tokens, samples per prompt, and sampling (temperature/top_p with a fixed seed, or greedy
with --greedy). Generated tokens are counted alike: up to and including the first end-of-turn
token. Model loading is not timed.

- rewardlab: ``annotate.candidates.generate`` into a temporary SQLite store, i.e. what
  ``rewardlab generate`` runs (dtype "auto": bf16 for sampling on an AMX CPU).
- stock: ``AutoModelForCausalLM.from_pretrained(path, dtype=float32)`` and, per prompt,
  ``model.generate(..., num_return_sequences=per_prompt)`` (stock's default sampler: full sort).

Order: rewardlab, stock, rewardlab again; ``tokens_per_s`` is the mean of the two rewardlab runs,
which bracket the stock run in time (on a shared machine the load moves 2x within minutes).
OMP_WAIT_POLICY defaults to PASSIVE here, for both sides: with spinning OpenMP threads on an
oversubscribed 2-core machine both sides ran up to 10x slower and the ratio meant nothing.

Progress goes to stderr; the last line of stdout is one JSON object.

    python bench/generation.py --quick        # 16 prompts x 2 samples x 32 tokens, about a minute
    python bench/generation.py                # 24 prompts x 2 samples x 128 tokens, ~6 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads OpenMP

SHARED_PROMPTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompts"
BUILTIN_PROMPTS = [
    "How can I improve my time management skills?",
    "Explain in two sentences why the sky is blue.",
    "Write a haiku about a cat watching rain.",
    "What is the difference between a list and a tuple in Python?",
    "Give me three tips for getting better sleep.",
    "Summarize the plot of Romeo and Juliet in three sentences.",
    "What are the main causes of inflation?",
    "Write a short, polite email asking a colleague to review my report by Friday.",
]


def log(*parts) -> None:
    print("[bench/generation]", *parts, file=sys.stderr, flush=True)


def load_prompt_records(n: int):
    """The first ``n`` prompts of the Vicuna or MT-Bench set beside the repo, else data/prompts.jsonl,
    else a few built-in ones."""
    from rewardlab.formats import PromptRecord, load_prompts

    for path in (SHARED_PROMPTS / "vicuna_bench.jsonl", SHARED_PROMPTS / "mt_bench.jsonl",
                 REPO / "data" / "prompts.jsonl"):
        if path.is_file():
            return load_prompts(str(path)).records[:n], str(path)
    records = [PromptRecord(messages=[{"role": "user", "content": p}]) for p in BUILTIN_PROMPTS]
    return records[:n], "built-in"


def run_rewardlab(records, args) -> dict:
    from annotate.candidates import generate
    from annotate.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        store = Store("sqlite:///" + str(Path(tmp) / "bench.db"))
        store.add_prompts(records)
        summary = generate(
            store, [args.model], per_prompt=args.per_prompt, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature, top_p=args.top_p, batch_size=args.batch_size, seed=args.seed,
            pairs_per_prompt=1, progress=True, dtype=args.dtype,
        )
        store.close()
    return summary


def run_stock(records, args) -> dict:
    """One prompt at a time through ``model.generate``, the way a script without rewardlab does it."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rewardlab.models import resolve_model

    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    sampling = {"do_sample": False} if args.temperature == 0 else {
        "do_sample": True, "temperature": args.temperature, "top_p": args.top_p}
    n_return = 1 if args.temperature == 0 else args.per_prompt
    tokens = 0
    started = time.perf_counter()
    with torch.inference_mode():
        for rec in tqdm(records, desc="stock generate", unit="prompt", file=sys.stderr):
            enc = tokenizer.apply_chat_template(rec.messages, add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)
            torch.manual_seed(args.seed)
            out = model.generate(**enc, max_new_tokens=args.max_new_tokens, num_return_sequences=n_return,
                                 pad_token_id=tokenizer.pad_token_id, **sampling)
            for row in out[:, enc["input_ids"].shape[1]:].tolist():
                end = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
                tokens += end
    seconds = time.perf_counter() - started
    return {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="16 prompts x 2 samples x 32 tokens (about a minute)")
    p.add_argument("--model", default=None, help="model (default: rewardlab's default, smollm2-135m)")
    p.add_argument("--prompts", type=int, default=None, help="number of prompts (default 24; quick 16)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 128; quick 32")
    p.add_argument("--per-prompt", type=int, default=2, help="samples per prompt (both sides)")
    p.add_argument("--batch-size", type=int, default=64, help="rewardlab's sequences per batch")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--greedy", action="store_true", help="greedy decoding on both sides (temperature 0)")
    p.add_argument("--dtype", default="auto", help="rewardlab's dtype: auto, float32 or bfloat16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-stock", action="store_true", help="only time rewardlab (no ratio)")
    args = p.parse_args(argv)
    if args.greedy:
        args.temperature = 0.0
    n = args.prompts or (16 if args.quick else 24)
    args.max_new_tokens = args.max_new_tokens or (32 if args.quick else 128)

    import torch

    from rewardlab.models import DEFAULT_MODEL, model_label

    args.model = args.model or DEFAULT_MODEL
    records, source = load_prompt_records(n)
    log(f"{len(records)} prompts from {source}; model {args.model}; {args.per_prompt} samples x "
        f"{args.max_new_tokens} new tokens; torch threads {torch.get_num_threads()}")
    load_before = os.getloadavg()[0]
    runs = [run_rewardlab(records, args)]
    log(f"rewardlab: {runs[0]['tokens']} tokens, {runs[0]['tokens_per_s']} tokens/s")
    stock = None
    if not args.skip_stock:
        stock = run_stock(records, args)
        log(f"stock: {stock['tokens']} tokens, {stock['tokens_per_s']} tokens/s")
        # rewardlab again, so its two runs bracket the stock run in time: on a machine shared with
        # other work, the load during one run can differ from the next by 2x either way.
        runs.append(run_rewardlab(records, args))
        log(f"rewardlab (again): {runs[1]['tokens']} tokens, {runs[1]['tokens_per_s']} tokens/s")
    ours = runs[0]
    tokens_per_s = round(sum(r["tokens_per_s"] for r in runs) / len(runs), 2)
    result = {
        "bench": "generation",
        "model": model_label(args.model),
        "prompts": len(records),
        "prompt_source": Path(source).name,
        "per_prompt": args.per_prompt,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "temperature": args.temperature,
        "top_p": args.top_p if args.temperature > 0 else None,
        "seed": args.seed,
        "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "tokens": ours["tokens"],
        "seconds": ours["models"][model_label(args.model)]["generation_seconds"],
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_runs": [r["tokens_per_s"] for r in runs],
        "stock_tokens": stock["tokens"] if stock else None,
        "stock_seconds": stock["seconds"] if stock else None,
        "stock_tokens_per_s": stock["tokens_per_s"] if stock else None,
        "ratio": round(tokens_per_s / stock["tokens_per_s"], 2) if stock else None,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "quick": args.quick,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
