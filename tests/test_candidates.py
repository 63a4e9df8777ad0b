"""Candidate generation: prompts -> responses -> comparisons, with tiny real models."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from annotate.candidates import decode, generate
from annotate.store import Comparison, Response, Store
from rewardlab.errors import RewardlabError
from rewardlab.formats import PromptRecord

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "What is the capital of France?",
    "Hi",
    "Please write a short poem about the sea, the waves and the blue sky at the end of the day.",
    "How do I make a cup of tea?",
    "Explain why the sky is blue in one sentence.",
]


@pytest.fixture(scope="module")
def lively_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with larger random weights: varied replies, and some end early at EOS.

    (The fixture's model repeats one token forever, which would make every check pass trivially.)
    """
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("lively") / "lively-lm"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    model.save_pretrained(out)
    for file in tiny_model_dir.iterdir():
        if file.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(file, out / file.name)
    return out


@pytest.fixture
def prompts(store):
    store.add_prompts([PromptRecord(messages=[{"role": "user", "content": q}]) for q in QUESTIONS])
    return store


def rows(store: Store, model=Response):
    with store.read() as s:
        return list(s.scalars(select(model).order_by(model.id)))


def texts_by_prompt(store: Store) -> dict:
    out: dict = {}
    for r in rows(store):
        out.setdefault((r.prompt_id, r.model), []).append(r.text)
    return out


def run(store, models, **kw):
    kw = {"max_new_tokens": 12, "progress": False, **kw}
    return generate(store, models, **kw)


def test_responses_stored_with_settings_and_pairs_of_distinct_texts(prompts, lively_model):
    summary = run(prompts, [str(lively_model)], per_prompt=3, pairs_per_prompt=2, temperature=1.0,
                  top_p=0.9, seed=7, overlap=2)
    assert summary["prompts"] == len(QUESTIONS)
    assert summary["skipped_prompts"] == 0
    responses = rows(prompts)
    assert len(responses) == summary["new_responses"] > len(QUESTIONS)
    for r in responses:
        assert r.model == "lively-lm" and r.text == r.text.strip() and r.text
        assert json.loads(r.settings) == {"temperature": 1.0, "top_p": 0.9, "max_new_tokens": 12,
                                          "seed": 7, "do_sample": True}
    comparisons = rows(prompts, Comparison)
    assert len(comparisons) == summary["comparisons"] > 0
    by_id = {r.id: r for r in responses}
    for c in comparisons:
        a, b = by_id[c.response_a_id], by_id[c.response_b_id]
        assert a.prompt_id == b.prompt_id == c.prompt_id and a.text != b.text
        assert (c.overlap, c.tag) == (2, "generate")
    per_prompt = {}
    for c in comparisons:
        per_prompt[c.prompt_id] = per_prompt.get(c.prompt_id, 0) + 1
    assert max(per_prompt.values()) <= 2
    assert summary["tokens"] > 0 and summary["tokens_per_s"] > 0


def test_greedy_identical_samples_give_one_response_and_no_pair(prompts, lively_model):
    summary = run(prompts, [str(lively_model)], per_prompt=2, temperature=0)
    assert summary["new_responses"] == len(QUESTIONS)  # one reply per prompt: the copies are equal
    assert summary["comparisons"] == 0  # a pair needs two distinct texts
    assert rows(prompts, Comparison) == []


def test_rerun_generates_nothing_new(prompts, lively_model):
    first = run(prompts, [str(lively_model)], per_prompt=2, temperature=1.0)
    assert first["new_responses"] > 0 and first["comparisons"] > 0
    again = run(prompts, [str(lively_model)], per_prompt=2, temperature=1.0)
    complete = sum(len(t) >= 2 for t in texts_by_prompt(prompts).values())
    assert again["skipped_prompts"] == complete
    assert again["comparisons"] == 0
    if complete == len(QUESTIONS):
        assert again["new_responses"] == again["tokens"] == 0


def test_limit_takes_prompts_without_responses_first(prompts, lively_model):
    run(prompts, [str(lively_model)], per_prompt=1, temperature=1.0, limit=2)
    first = {pid for pid, _ in texts_by_prompt(prompts)}
    assert len(first) == 2
    run(prompts, [str(lively_model)], per_prompt=1, temperature=1.0, limit=2)
    second = {pid for pid, _ in texts_by_prompt(prompts)} - first
    assert len(second) == 2


def test_two_models_give_cross_model_pairs(prompts, lively_model, tmp_path):
    a, b = tmp_path / "model-a", tmp_path / "model-b"
    shutil.copytree(lively_model, a)
    shutil.copytree(lively_model, b)
    summary = run(prompts, [str(a), str(b)], per_prompt=2, temperature=[1.0, 0.7], top_p=0.95)
    assert set(summary["models"]) == {"model-a", "model-b"}
    by_id = {r.id: r for r in rows(prompts)}
    assert {json.loads(r.settings)["temperature"] for r in by_id.values() if r.model == "model-b"} == {0.7}
    comparisons = rows(prompts, Comparison)
    assert len(comparisons) == len(QUESTIONS)  # pairs_per_prompt=1
    for c in comparisons:
        assert by_id[c.response_a_id].model != by_id[c.response_b_id].model


def test_batching_does_not_change_greedy_output(lively_model, tmp_path):
    from rewardlab.models import format_prompt, load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(str(lively_model))
    model = load_causal_lm(str(lively_model), tokenizer=tokenizer).eval()
    ids = [tokenizer(format_prompt(tokenizer, [{"role": "user", "content": q}]), add_special_tokens=False)["input_ids"]
           for q in QUESTIONS]
    assert len({len(i) for i in ids}) > 1  # the batch really is padded
    eos = model.generation_config.eos_token_id
    kw = {"pad_id": tokenizer.pad_token_id, "eos_ids": {eos}, "max_new_tokens": 20}
    batched = decode(model, ids, [1] * len(ids), **kw)
    assert any(len(g) < 20 and g[-1] == eos for g in batched)  # some finish early and leave the batch
    for prompt, together in zip(ids, batched):
        assert decode(model, [prompt], [1], **kw)[0] == together
        stock = model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False)
        assert stock[0, len(prompt):].tolist()[: len(together)] == together

    # and through generate(): batch_size 1 and 16 store the same texts
    stores = []
    for batch_size in (1, 16):
        store = Store("sqlite:///" + str(tmp_path / f"b{batch_size}.db"))
        store.add_prompts([PromptRecord(messages=[{"role": "user", "content": q}]) for q in QUESTIONS])
        run(store, [str(lively_model)], temperature=0, batch_size=batch_size, max_new_tokens=20)
        stores.append(texts_by_prompt(store))
        store.close()
    assert stores[0] == stores[1]


def test_seed_reproducible_and_independent_of_batch_size(lively_model, tmp_path):
    def sampled(seed, batch_size):
        store = Store("sqlite:///" + str(tmp_path / f"s{seed}-{batch_size}.db"))
        store.add_prompts([PromptRecord(messages=[{"role": "user", "content": q}]) for q in QUESTIONS])
        run(store, [str(lively_model)], per_prompt=2, temperature=1.0, seed=seed,
            batch_size=batch_size, dtype="float32")
        out = texts_by_prompt(store)
        store.close()
        return out

    first = sampled(3, 4)
    assert sampled(3, 4) == first
    assert sampled(3, 32) == first  # each sample has its own generator
    assert sampled(4, 4) != first


def test_truncates_overlong_prompts(store, lively_model):
    store.add_prompts([PromptRecord(messages=[{"role": "user", "content": "tea " * 600}])])
    summary = run(store, [str(lively_model)], per_prompt=1, temperature=0, max_new_tokens=8)
    assert summary["truncated_prompts"] == 1 and summary["tokens"] > 0  # 512 positions: kept the last 504


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": [0.5, 0.6, 0.7]}, "3 temperature values for 2 models"),
        ({"top_p": [0.5, 0.6, 0.7]}, "3 top_p values for 2 models"),
        ({"per_prompt": 0}, "per_prompt must be at least 1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"max_new_tokens": 0}, "max_new_tokens must be between 1 and 4096"),
        ({"max_new_tokens": 5000}, "max_new_tokens must be between 1 and 4096"),
        ({"overlap": 0}, "overlap must be at least 1"),
        ({"temperature": -1.0}, "temperature must be 0"),
        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"dtype": "int8"}, "dtype must be auto, float32, bfloat16, float16"),
    ],
)
def test_bad_settings_are_refused(prompts, tiny_model_dir, tmp_path, kwargs, message):
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    with pytest.raises(RewardlabError, match=re.escape(message)):
        run(prompts, [str(tiny_model_dir), str(other)], **kwargs)
    assert rows(prompts) == []


def cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "rewardlab.cli", *map(str, args)], capture_output=True,
                          check=False, text=True, env=env, cwd=REPO, timeout=300)


def test_cli_generate_as_a_user_would(lively_model, tmp_path):
    db = tmp_path / "ws" / "rewardlab.db"
    store = Store("sqlite:///" + str(db))
    store.add_prompts([PromptRecord(messages=[{"role": "user", "content": q}]) for q in QUESTIONS])
    store.close()
    r = cli("generate", "--db", db, "--model", lively_model, "--max-new-tokens", 10, "--per-prompt", 2,
            "--temperature", 1.0, "--batch-size", 4)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["prompts"] == len(QUESTIONS) and summary["new_responses"] > len(QUESTIONS)
    assert summary["comparisons"] > 0

    r = cli("generate", "--db", db, "--model", "no-such-model-anywhere", "--max-new-tokens", 4)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rewardlab: unknown model 'no-such-model-anywhere'")
