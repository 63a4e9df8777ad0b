"""Prompts -> generated candidate responses -> comparisons to label.

``generate`` runs each model over the stored prompts that still lack responses from it, stores
the distinct replies, then pairs distinct replies of each prompt into comparisons (across models
first). Re-running it only fills what is missing.

Generation is one batched decoding loop (``decode``), written out here rather than calling
``model.generate``, because what makes it fast on a CPU is not reachable through ``generate``
(figures from bench/generation.py and the notes in its docstring):

* the nucleus (top-p) is found with ``topk``, not a sort of the whole vocabulary: the sort and
  full-vocabulary noise cost as much as the model at batch 32;
* the KV cache is one buffer per layer, written in place, not concatenated at every step;
* each prompt is prefilled once and its cache copied for its ``per_prompt`` samples;
* prompts are sorted by token length before batching, so a batch carries little left padding;
* sequences that reach EOS leave the batch (once they are an eighth of it);
* sampling runs in bfloat16 where the CPU multiplies it natively (AMX), greedy in float32.

Sampling draws every sequence's tokens from its own generator, seeded from (seed, prompt, model,
sample number): a reply does not depend on the batch size, the bucketing or the other prompts in
the run (exactly so in float32; bfloat16 rounding can differ with the batch shape). Temperature 0
is greedy decoding, in float32: a greedy reply is the same batched or alone.
"""

from __future__ import annotations

import gc
import hashlib
import json
import random
import sys
import time
from dataclasses import dataclass

import torch
from sqlalchemy import and_, func, select

from annotate.store import Comparison, Prompt, Response, Store, text_hash
from rewardlab.errors import RewardlabError
from rewardlab.models import (
    format_prompt,
    load_causal_lm,
    load_tokenizer,
    model_label,
    resolve_model,
)

MAX_NEW_TOKENS_LIMIT = 4096
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PAIR_CHUNK = 200  # prompts per transaction when building comparisons
BATCH_POSITIONS = 32768  # at most this many cache positions (sequences x (prompt + new)) per batch
PRUNE_FRACTION = 8  # ended rows leave the batch once they are 1/8 of it
TOPK_START = 64  # first nucleus size tried when sampling; grown 16x while it holds < top_p


@dataclass
class Job:
    """One prompt to generate for: its stored id, key, token ids, and how many samples it needs."""

    prompt_id: int
    key: str
    ids: list[int]
    first_sample: int  # samples already stored (numbering continues from here)
    count: int


# ---------------------------------------------------------------------------------------------
# The decoding loop
# ---------------------------------------------------------------------------------------------


def _make_cache(model, capacity: int):
    """A DynamicCache whose full-attention layers write into one buffer of ``capacity`` positions.

    transformers' DynamicLayer concatenates the whole cache at every step (a quarter of the decode
    time at batch 64 in bf16 in a CPU profile; +6% tokens/s without it). Layers of other kinds
    (sliding window, linear attention) stay stock.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                shape = (*key_states.shape[:2], capacity)
                self.key_buffer = key_states.new_empty((*shape, key_states.shape[-1]))
                self.value_buffer = value_states.new_empty((*shape, value_states.shape[-1]))
                self.length = 0
            end = self.length + key_states.shape[-2]
            self.key_buffer[:, :, self.length:end] = key_states
            self.value_buffer[:, :, self.length:end] = value_states
            self.length = end
            self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
            return self.keys, self.values

        def batch_select_indices(self, indices):
            if self.is_initialized:
                self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
                self.keys = self.key_buffer[:, :, : self.length]
                self.values = self.value_buffer[:, :, : self.length]

    cache = DynamicCache(config=model.config)
    cache.layers = [PreallocatedLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generators: list) -> torch.Tensor:
    """Next token per row: argmax when temperature is 0, else a top-p sample from each row's generator.

    The nucleus (smallest set of most likely tokens holding ``top_p`` of the probability) is found
    with ``topk`` of a growing size instead of sorting the whole vocabulary: it usually holds a few
    dozen tokens, and a full sort plus full-vocabulary noise cost as much as the model's forward
    pass at batch 32 on a CPU. A token is drawn by the exponential race (argmax of p / E with
    E ~ Exp(1)), which samples exactly from ``p`` and lets every row use its own generator.
    """
    if temperature == 0:
        return logits.argmax(-1)
    probs = (logits.float() / temperature).softmax(-1)
    vocab = probs.shape[-1]
    tokens = torch.empty(len(probs), dtype=torch.long, device=probs.device)
    rows = torch.arange(len(probs), device=probs.device)
    k = vocab if top_p >= 1.0 else min(TOPK_START, vocab)
    while len(rows):
        top, index = probs[rows].topk(k, dim=-1)  # sorted, most likely first
        before = top.cumsum(-1) - top  # probability mass ranked above each token
        done = before[:, -1] + top[:, -1] >= top_p if k < vocab else torch.ones_like(rows, dtype=torch.bool)
        weights = top.masked_fill(before >= top_p, 0.0)
        for r in done.nonzero().squeeze(1).tolist():
            row = int(rows[r])
            noise = torch.empty(k, device=probs.device).exponential_(generator=generators[row])
            tokens[row] = index[r, int((weights[r] / noise).argmax())]
        rows = rows[~done]
        k = min(k * 16, vocab)
    return tokens


@torch.inference_mode()
def decode(
    model,
    prompts: list[list[int]],
    counts: list[int],
    *,
    pad_id: int,
    eos_ids: set[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seeds: list[int] | None = None,
) -> list[list[int]]:
    """Generate ``counts[i]`` continuations of each token list ``prompts[i]``, all in one batch.

    Returns the generated ids of every sequence (prompt 0's samples first), each ending at its
    first EOS (included) or after ``max_new_tokens``. ``seeds`` (one per sequence) seed sampling.
    """
    device = model.device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding: every prompt ends at the last column
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    cache = _make_cache(model, width + max_new_tokens)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                cache=cache, use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1]
    # Prefilled once per prompt; now one row per sample.
    rows = torch.repeat_interleave(torch.arange(len(prompts)), torch.tensor(counts)).to(device)
    if len(rows) != len(prompts):
        cache.batch_select_indices(rows)
        logits, mask = logits[rows], mask[rows]
    next_position = positions[rows, -1] + 1

    n = len(rows)
    generators = []
    if temperature > 0:
        for seed in seeds if seeds is not None else range(n):
            generators.append(torch.Generator(device=device).manual_seed(int(seed)))
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
    live = torch.arange(n, device=device)  # sequence number of each row of the batch
    ended = torch.zeros(n, dtype=torch.bool, device=device)  # rows that produced EOS (ignored since)
    steps: list[tuple[torch.Tensor, torch.Tensor]] = []
    for step in range(max_new_tokens):
        tokens = _pick(logits, temperature, top_p, [generators[i] for i in live.tolist()] if generators else [])
        steps.append((live[~ended], tokens[~ended]))
        ended |= torch.isin(tokens, eos)
        if step == max_new_tokens - 1 or bool(ended.all()):
            break
        if int(ended.sum()) * PRUNE_FRACTION >= len(live):  # drop ended rows (copies the cache)
            keep = (~ended).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            live, tokens, mask, next_position = live[keep], tokens[keep], mask[keep], next_position[keep]
            ended = ended[keep]
        mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
        logits = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_position[:, None],
                       cache=cache, use_cache=True).logits[:, -1]
        next_position = next_position + 1

    generated: list[list[int]] = [[] for _ in range(n)]
    for live_rows, tokens in steps:
        for seq, token in zip(live_rows.tolist(), tokens.tolist()):
            generated[seq].append(token)
    return generated


# ---------------------------------------------------------------------------------------------
# generate: the stage
# ---------------------------------------------------------------------------------------------


def _per_model(value, n_models: int, name: str) -> list[float]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) == 1:
        values = values * n_models
    if len(values) != n_models:
        raise RewardlabError(
            f"got {len(values)} {name} values for {n_models} models: give one value for all "
            f"models or one per --model, in the same order"
        )
    return [float(v) for v in values]


def _sample_seed(seed: int, prompt_key: str, label: str, sample: int) -> int:
    blob = f"{seed}\0{prompt_key}\0{label}\0{sample}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") >> 1


def _eos_ids(model, tokenizer) -> set[int]:
    value = model.generation_config.eos_token_id
    ids = set(value if isinstance(value, (list, tuple)) else [value] if value is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids - {tokenizer.pad_token_id}


def inference_dtype(dtype: str, temperature: float) -> torch.dtype:
    """The dtype to run a model in. "auto": float32 for greedy decoding (a reply is then exactly the
    same whatever it is batched with), bfloat16 for sampling where the hardware multiplies bf16
    natively (a CUDA GPU with bf16, a CPU with AMX), float32 elsewhere."""
    if dtype in DTYPES:
        return DTYPES[dtype]
    if dtype != "auto":
        raise RewardlabError(f"dtype must be auto, {', '.join(DTYPES)}; got {dtype!r}")
    if temperature == 0:
        return torch.float32
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return torch.bfloat16 if amx else torch.float32


def _pending(store: Store, label: str, target: int, prompt_ids, limit) -> tuple[list, int]:
    """Prompts that have fewer than ``target`` responses from ``label``: fewest first, then oldest."""
    with store.read() as s:
        query = (
            select(Prompt.id, Prompt.key, Prompt.messages, func.count(Response.id))
            .outerjoin(Response, and_(Response.prompt_id == Prompt.id, Response.model == label))
            .group_by(Prompt.id)
        )
        rows = s.execute(query).all()
    if prompt_ids is not None:
        wanted = set(prompt_ids)
        rows = [r for r in rows if r[0] in wanted]
    todo = sorted((r for r in rows if r[3] < target), key=lambda r: (r[3], r[0]))
    skipped = len(rows) - len(todo)
    if limit is not None:
        todo = todo[:limit]
    return todo, skipped


def _batches(jobs: list[Job], batch_size: int, max_new_tokens: int) -> list[list[Job]]:
    """Consecutive jobs (sorted by length) grouped to at most ``batch_size`` sequences and
    ``BATCH_POSITIONS`` cache positions, so a batch of long prompts cannot exhaust memory."""
    batches, current, size = [], [], 0
    for job in jobs:
        width = len(job.ids) + max_new_tokens  # the longest so far: jobs are sorted by length
        if current and (size + job.count > batch_size or (size + job.count) * width > BATCH_POSITIONS):
            batches.append(current)
            current, size = [], 0
        current.append(job)
        size += job.count
    if current:
        batches.append(current)
    return batches


def _generate_model(store, name, label, *, target, max_new_tokens, temperature, top_p, batch_size,
                    seed, limit, prompt_ids, progress, dtype) -> dict:
    todo, skipped = _pending(store, label, target, prompt_ids, limit)
    result = {"prompts": len(todo), "skipped_prompts": skipped, "new_responses": 0, "tokens": 0,
              "truncated_prompts": 0, "generation_seconds": 0.0, "dtype": None}
    if not todo:
        return result
    tokenizer = load_tokenizer(name, padding_side="left")
    torch_dtype = inference_dtype(dtype, temperature)
    model = load_causal_lm(name, dtype=torch_dtype, tokenizer=tokenizer).eval()
    if torch.cuda.is_available():
        model.to("cuda")
    if getattr(model.config, "is_encoder_decoder", False):
        raise RewardlabError(f"model '{name}' is an encoder-decoder model; generation needs a causal LM")
    max_positions = getattr(model.config, "max_position_embeddings", None) or 1_000_000
    max_prompt = max_positions - max_new_tokens
    if max_prompt < 1:
        raise RewardlabError(
            f"--max-new-tokens {max_new_tokens} leaves no room for a prompt: model '{label}' has "
            f"{max_positions} positions"
        )
    result["dtype"] = str(torch_dtype).removeprefix("torch.")
    do_sample = temperature > 0
    settings = {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
                "seed": seed, "do_sample": do_sample}
    eos_ids = _eos_ids(model, tokenizer)

    jobs = []
    for prompt_id, key, messages, have in todo:
        text = format_prompt(tokenizer, json.loads(messages))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_prompt:  # keep the end: the last turn and the assistant header
            ids = ids[-max_prompt:]
            result["truncated_prompts"] += 1
        jobs.append(Job(prompt_id, key, ids, have, target - have))
    jobs.sort(key=lambda j: len(j.ids))  # length bucketing: neighbours pad little

    bar = _progress(sum(j.count for j in jobs), label, progress)
    started = time.perf_counter()
    for batch in _batches(jobs, batch_size, max_new_tokens):
        seeds = [_sample_seed(seed, j.key, label, j.first_sample + k) for j in batch for k in range(j.count)]
        generated = decode(model, [j.ids for j in batch], [j.count for j in batch],
                           pad_id=tokenizer.pad_token_id, eos_ids=eos_ids, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_p=top_p, seeds=seeds)
        texts = [t.strip() for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]
        owners = [j.prompt_id for j in batch for _ in range(j.count)]
        result["new_responses"] += _store_responses(store, label, settings, owners, texts)
        tokens = sum(len(g) for g in generated)
        result["tokens"] += tokens
        bar.update(len(generated))
        elapsed = time.perf_counter() - started
        bar.set_postfix(tok_s=f"{result['tokens'] / elapsed:.1f}")
    bar.close()
    result["generation_seconds"] = time.perf_counter() - started
    del model
    gc.collect()
    return result


def _progress(total: int, label: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"generate {label}", unit="seq", disable=not enabled, file=sys.stderr)


def _store_responses(store: Store, label: str, settings: dict, owners: list[int], texts: list[str]) -> int:
    """Store one batch's replies in one transaction; returns how many were new (not stored before)."""
    new = 0
    with store.write() as s:
        seen = set(
            s.execute(
                select(Response.prompt_id, Response.text_hash).where(
                    Response.model == label, Response.prompt_id.in_(set(owners))
                )
            ).all()
        )
        for prompt_id, text in zip(owners, texts):
            if not text:  # an immediate end of turn: nothing to compare
                continue
            key = (prompt_id, text_hash(text))
            if key in seen:
                continue
            seen.add(key)
            store.response_id_for(s, prompt_id, label, text, settings)
            new += 1
    return new


# ---------------------------------------------------------------------------------------------
# Comparisons
# ---------------------------------------------------------------------------------------------


def _choose_pairs(responses: list[tuple[int, str, str]], existing: set, want: int, rng) -> list:
    """Up to ``want`` new pairs of distinct texts: across models first, then within a model."""
    across, within = [], []
    for i, (rid1, model1, hash1) in enumerate(responses):
        for rid2, model2, hash2 in responses[i + 1:]:
            if hash1 == hash2 or tuple(sorted((rid1, rid2))) in existing:
                continue
            (across if model1 != model2 else within).append((rid1, rid2))
    rng.shuffle(across)
    rng.shuffle(within)
    return (across + within)[:want]


def build_comparisons(store: Store, labels: list[str], *, pairs_per_prompt: int, overlap: int,
                      tag: str, seed: int, prompt_ids=None) -> int:
    """Give every prompt up to ``pairs_per_prompt`` comparisons between replies of ``labels``."""
    with store.read() as s:
        query = select(Response.id, Response.prompt_id, Response.model, Response.text_hash).where(
            Response.model.in_(labels)
        )
        by_prompt: dict[int, list] = {}
        for rid, pid, model, h in s.execute(query.order_by(Response.id)):
            by_prompt.setdefault(pid, []).append((rid, model, h))
    if prompt_ids is not None:
        wanted = set(prompt_ids)
        by_prompt = {p: r for p, r in by_prompt.items() if p in wanted}
    created = 0
    pids = sorted(p for p, r in by_prompt.items() if len(r) >= 2)
    for start in range(0, len(pids), PAIR_CHUNK):
        chunk = pids[start:start + PAIR_CHUNK]
        with store.write() as s:
            existing: dict[int, set] = {}
            rows = s.execute(
                select(Comparison.prompt_id, Comparison.response_a_id, Comparison.response_b_id).where(
                    Comparison.prompt_id.in_(chunk)
                )
            )
            for pid, a, b in rows:
                existing.setdefault(pid, set()).add((a, b))
            for pid in chunk:
                responses = by_prompt[pid]
                ours = {r[0] for r in responses}
                have = existing.get(pid, set())
                counted = sum(1 for a, b in have if a in ours and b in ours)
                want = pairs_per_prompt - counted
                if want <= 0:
                    continue
                rng = random.Random(f"{seed}:{pid}")
                for rid1, rid2 in _choose_pairs(responses, have, want, rng):
                    _, new, _ = store.comparison_for(s, pid, rid1, rid2, overlap=overlap, tag=tag)
                    created += int(new)
    return created


def generate(
    store: Store,
    models: list[str | None],
    *,
    per_prompt: int = 2,
    max_new_tokens: int = 128,
    temperature: list[float] | float = 0.8,
    top_p: list[float] | float = 0.95,
    batch_size: int = 32,
    seed: int = 0,
    limit: int | None = None,
    pairs_per_prompt: int = 1,
    overlap: int | None = None,
    tag: str = "generate",
    prompt_ids: list[int] | None = None,
    progress: bool = True,
    dtype: str = "auto",
) -> dict:
    """Generate missing candidate responses for stored prompts with each model, then pair them.

    ``models``: aliases, folders or hub ids (None = the default model). ``temperature`` and
    ``top_p``: one value, or one per model. A prompt is done for a model when it has
    ``per_prompt`` responses from it (one when greedy, temperature 0: samples would be identical).
    ``batch_size`` counts sequences (a prompt's samples share one prefill). ``dtype``: "auto"
    (see ``inference_dtype``), "float32", "bfloat16" or "float16".

    Returns a summary: prompts (prompt x model runs generated), new_responses, comparisons (new),
    tokens (generated, EOS included), seconds (all, loading included), tokens_per_s (generation
    only), truncated_prompts, skipped_prompts (prompt x model already complete), and ``models``:
    the same figures per model label, with the dtype used.
    """
    started = time.perf_counter()
    models = list(models) or [None]
    if per_prompt < 1:
        raise RewardlabError(f"per_prompt must be at least 1, got {per_prompt}")
    if batch_size < 1:
        raise RewardlabError(f"batch_size must be at least 1, got {batch_size}")
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        raise RewardlabError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}, got {max_new_tokens}")
    if pairs_per_prompt < 0:
        raise RewardlabError(f"pairs_per_prompt must be 0 or more, got {pairs_per_prompt}")
    if limit is not None and limit < 0:
        raise RewardlabError(f"limit must be 0 or more, got {limit}")
    overlap = 1 if overlap is None else overlap
    if overlap < 1:
        raise RewardlabError(f"overlap must be at least 1, got {overlap}")
    inference_dtype(dtype, 0.0)  # a bad dtype fails now
    temperatures = _per_model(temperature, len(models), "temperature")
    top_ps = _per_model(top_p, len(models), "top_p")
    for t, p in zip(temperatures, top_ps):
        if t < 0:
            raise RewardlabError(f"temperature must be 0 (greedy) or more, got {t}")
        if not 0 < p <= 1:
            raise RewardlabError(f"top_p must be in (0, 1], got {p}")
    labels = [model_label(m) for m in models]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise RewardlabError(f"model '{label}' is listed twice; give each model once")
    for m in models:
        resolve_model(m)  # an unknown model fails now, before any other model runs
    if prompt_ids is not None:
        with store.read() as s:
            known = set(s.scalars(select(Prompt.id)))
        missing = sorted(set(prompt_ids) - known)
        if missing:
            raise RewardlabError(f"unknown prompt ids: {missing[:10]}{' ...' if len(missing) > 10 else ''}")

    per_model = {}
    for name, label, t, p in zip(models, labels, temperatures, top_ps):
        per_model[label] = _generate_model(
            store, name, label, target=per_prompt if t > 0 else 1, max_new_tokens=max_new_tokens,
            temperature=t, top_p=p, batch_size=batch_size, seed=seed, limit=limit,
            prompt_ids=prompt_ids, progress=progress, dtype=dtype,
        )
    comparisons = 0
    if pairs_per_prompt:
        comparisons = build_comparisons(store, labels, pairs_per_prompt=pairs_per_prompt, overlap=overlap,
                                        tag=tag, seed=seed, prompt_ids=prompt_ids)
    tokens = sum(r["tokens"] for r in per_model.values())
    gen_seconds = sum(r["generation_seconds"] for r in per_model.values())
    for r in per_model.values():
        r["tokens_per_s"] = round(r["tokens"] / r["generation_seconds"], 2) if r["generation_seconds"] else 0.0
        r["generation_seconds"] = round(r["generation_seconds"], 2)
    return {
        "prompts": sum(r["prompts"] for r in per_model.values()),
        "new_responses": sum(r["new_responses"] for r in per_model.values()),
        "comparisons": comparisons,
        "tokens": tokens,
        "seconds": round(time.perf_counter() - started, 2),
        "tokens_per_s": round(tokens / gen_seconds, 2) if gen_seconds else 0.0,
        "truncated_prompts": sum(r["truncated_prompts"] for r in per_model.values()),
        "skipped_prompts": sum(r["skipped_prompts"] for r in per_model.values()),
        "models": per_model,
    }
